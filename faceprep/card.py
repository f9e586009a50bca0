"""``DST/README.md``: a Hugging Face style dataset card, rewritten from the records at the end of a run.

It says what the folder holds (kept, rejected by reason, errors, crops deleted by hand), how it was made
(the options and detector identity of ``faceprep.json``), how to load it, and shows the contact sheet.
A ``README.md`` that faceprep did not write (no :data:`MARKER` line) is never replaced.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceprep import atomic

MARKER = "<!-- written by faceprep: edits are replaced on the next run -->"
CARD = "README.md"

_LOADING = {
    "folder": 'datasets.load_dataset("imagefolder", data_dir="{dst}")',
    "zip": "EDM / EDM2 / StyleGAN: --data={dst}/dataset.zip",
    "wds": 'datasets.load_dataset("webdataset", data_files="{dst}/shards/*.tar")',
}


@dataclass(frozen=True)
class ReviewCounts:
    """The faces in the dataset after review (``records``) and what the review changed."""

    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0  # kept by faceprep, rejected by a person
    rescued: int = 0  # rejected by faceprep, kept by a person
    pending: int = 0  # rescued faces whose crop is not rendered yet


def card_is_ours(dst: Path) -> bool:
    """True when ``dst/README.md`` is absent or was written by faceprep."""
    path = dst / CARD
    if not path.exists():
        return True
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return MARKER in fh.read(4096)
    except OSError:
        return False


def write_card(
    dst: Path,
    *,
    kept: list[dict[str, Any]],
    review: ReviewCounts,
    rejected: list[dict[str, Any]],
    errors: int,
    deleted: int,
    output: str,
    contact_sheet: str | None,
) -> Path | None:
    """Write the card (temporary name, then rename); None when a README.md of someone else's is there."""
    if not card_is_ours(dst):
        return None
    made = _read_options(dst)
    options = made.get("options", {})
    reasons = Counter(r for rec in rejected for r in rec.get("rejected_by", ()))
    n = len(review.records)
    size_category = (
        "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "n>100K"
    )
    lines = [
        "---",
        "task_categories:",
        "- unconditional-image-generation",
        f"size_categories:\n- {size_category}",
        "tags:\n- faces\n- faceprep",
        "---",
        MARKER,
        "",
        f"# {dst.name}: aligned faces",
        "",
        f"{n} face crops of {options.get('size', '?')} px, aligned FFHQ-style by faceprep "
        f"{made.get('faceprep_version', '?')}, stored as `{output}`.",
        "",
        "| | count |",
        "|---|---|",
        f"| kept by faceprep | {len(kept)} |",
        f"| rejected by faceprep | {len(rejected)} |",
        *(f"| rejected by {reason} | {count} |" for reason, count in reasons.most_common()),
        f"| photos that could not be read | {errors} |",
        f"| kept crops deleted by hand | {deleted} |",
        f"| rejected in review (`review.jsonl`) | {review.rejected} |",
        f"| rescued in review | {review.rescued} ({review.pending} without a crop yet) |",
        f"| **in the dataset** | **{n}** |",
        "",
        "## How it was made",
        "",
        f"Detector: `{json.dumps(made.get('detector', {}))}`",
        "",
        "| option | value |",
        "|---|---|",
        *(f"| {key} | `{json.dumps(value)}` |" for key, value in options.items()),
        "",
        "Every face's source photo, box, 5 landmarks, crop quad and filter values are in `metadata.jsonl`"
        " (kept) and `rejected.jsonl`.",
        "",
        "## Loading",
        "",
        f"`{_LOADING[output].format(dst=dst.name)}`",
        "",
        "## Licence",
        "",
        "The crops are derived from the source photos; their licences and the rights of the people shown"
        " apply. faceprep does not know them: add them here.",
        "",
    ]
    if contact_sheet:
        lines += ["## Sample", "", f"![contact sheet]({contact_sheet})", ""]
    path = dst / CARD
    with atomic.replacing(path, errors="backslashreplace") as fh:
        fh.write("\n".join(lines))
    return path


def _read_options(dst: Path) -> dict[str, Any]:
    try:
        record = json.loads((dst / "faceprep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
