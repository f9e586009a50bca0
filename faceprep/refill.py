"""Re-making the fill of an existing dataset's crops: ``faceprep refill DST --fill-model RUN``.

The natural workflow is crop with ``mirror-blur`` → train a diffengine model on the crops → refill: the
crops whose filled fraction is above a threshold are warped again from their recorded source photo and
quad with another fill (usually ``generated``), and each face's record says which fill made it
(``"fill": {"fill": "generated", "model": ..., "step": ..., "sampler": ..., "steps": ..., "seed": ...}``).
Only the pixels outside the photo change (the fill contract), so the faces themselves are untouched.

Crash safety (the dataset lock is held throughout): every new crop is written under a temporary name
(``.faceprep-tmp-*``) and renamed over the old one (``os.replace``), so each crop is always either the old
or the new one, never partial. After each crop a line naming it goes to ``DST/.faceprep-refill.jsonl``
(fsynced); ``metadata.jsonl`` is rewritten whole (temporary file + ``os.replace``) at the end, and a
re-run first folds that journal into it. A killed refill is finished by running it again: faces whose
record already names the same fill (same identity and seed) are skipped, the rest are rendered (the fill
is deterministic, so a face whose crop was replaced just before the kill gets the same pixels again).

Only the ``folder`` output keeps its crops as files that can be replaced; zip and WebDataset outputs are
refused (refill before packing, or re-run ``faceprep crop`` with the fill you want).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceprep import atomic

JOURNAL = ".faceprep-refill.jsonl"


class RefillError(RuntimeError):
    """The refill cannot be done as asked (nothing was changed)."""


@dataclass
class RefillSummary:
    """What a refill did: faces considered, refilled now, already refilled earlier, below the threshold."""

    faces: int = 0
    refilled: int = 0
    already: int = 0
    below: int = 0
    missing_crop: int = 0  # kept faces whose crop file is gone (deleted by hand): left alone
    identity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        ident = ", ".join(f"{k} {v}" for k, v in self.identity.items())
        return [
            f"fill        {ident}",
            f"refilled    {self.refilled} of {self.faces} faces ({self.already} already done, "
            f"{self.below} at or below the threshold, {self.missing_crop} without a crop file)",
            f"time        {self.seconds:.1f} s",
        ]


def fill_identity(fill: Any, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a fill's pixels: the fill's own ``identity()`` when it has one, else its name and
    options."""
    ident = getattr(fill, "identity", None)
    if callable(ident):
        return dict(ident())
    return {"fill": name, **{k: v for k, v in options.items()}}


def face_fill_record(fill: Any, identity: Mapping[str, Any], source: str, face_index: int) -> dict[str, Any]:
    """The ``fill`` record of one face: ``fill.record(source, face_index)`` or the identity."""
    record = getattr(fill, "record", None)
    return dict(record(source, face_index)) if callable(record) else dict(identity)


def refill(
    dst: str | os.PathLike[str],
    fill: str | Callable[..., Any] = "generated",
    *,
    fill_options: Mapping[str, Any] | None = None,
    min_filled: float = 0.1,
    src: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RefillSummary:
    """Re-make, with ``fill``, every kept crop of the dataset ``dst`` whose filled fraction is above
    ``min_filled``, from its source photo and recorded quad (see the module docstring).

    ``fill``: a fill stage name (built with ``fill_options``, e.g. ``{"model": RUN}``) or a fill object.
    ``src``: the photos folder (default: ``"src"`` recorded in faceprep.json). Raises ValueError for a
    folder that is no faceprep dataset, a non-folder output or a bad fill (before anything is touched),
    :class:`RefillError` when source photos cannot be read (nothing changed) and
    :class:`faceprep.run_lock.DatasetLockedError` while another run holds the folder.
    """
    from faceprep import plugins
    from faceprep.dataset import METADATA, TMP_PREFIX, read_jsonl
    from faceprep.review.render import CropRenderer, find_src, recorded_options
    from faceprep.run_lock import DatasetLock

    start = time.perf_counter()
    root = Path(dst)
    if not (root / METADATA).is_file():
        raise ValueError(f"{root} is not a faceprep dataset folder (no {METADATA})")
    if not 0.0 <= float(min_filled) < 1.0:
        raise ValueError(f"min_filled must be in [0, 1), got {min_filled}")
    options = recorded_options(root)
    opts = options.get("options", {}) if isinstance(options.get("options"), dict) else {}
    if opts.get("output", "folder") not in (None, "folder"):
        raise ValueError(f"{root}: refill needs the folder output (this dataset is {opts.get('output')!r})")
    fill_options = dict(fill_options or {})
    if isinstance(fill, str):
        name = fill
        fill_obj = plugins.create("fill", fill, **fill_options)  # a missing model fails here
    else:
        name, fill_obj = str(getattr(fill, "name", type(fill).__name__)), fill
    identity = fill_identity(fill_obj, name, fill_options)
    summary = RefillSummary(identity=identity)
    with DatasetLock(root):
        for litter in root.glob(f"{TMP_PREFIX}*"):  # a killed write's temporary file (only faceprep's)
            litter.unlink(missing_ok=True)
        records = _fold_journal(root, read_jsonl(root / METADATA))
        renderer = CropRenderer(find_src(root, src), options)
        todo: list[int] = []
        for i, rec in enumerate(records):
            summary.faces += 1
            if float(rec.get("filled_fraction", 0.0)) <= min_filled:
                summary.below += 1
                continue
            wanted = face_fill_record(
                fill_obj, identity, str(rec.get("source")), int(rec.get("face_index", 0))
            )
            if rec.get("fill") == wanted:
                summary.already += 1
                continue
            if not (root / str(rec.get("file_name"))).is_file():
                summary.missing_crop += 1
                continue
            todo.append(i)
        missing = [
            str(records[i].get("source"))
            for i in todo
            if renderer.source_path(str(records[i].get("source"))) is None
        ]
        if missing:
            where = renderer.src or "no SRC known (pass src=/--src, or record src in faceprep.json)"
            raise RefillError(
                f"{len(missing)} face(s) to refill have no readable source photo (SRC: {where}; first: "
                f"{missing[0]}); nothing changed"
            )
        _render_all(root, records, todo, renderer, fill_obj, identity, opts, summary, progress)
        _write_metadata(root, records)
        (root / JOURNAL).unlink(missing_ok=True)
        if todo:
            _record_refill(root, identity, min_filled, summary.refilled)
    summary.seconds = time.perf_counter() - start
    return summary


def _render_all(
    root: Path,
    records: list[dict[str, Any]],
    todo: list[int],
    renderer: Any,
    fill: Any,
    identity: Mapping[str, Any],
    opts: Mapping[str, Any],
    summary: RefillSummary,
    progress: Callable[[int, int], None] | None,
) -> None:
    from faceprep.geometry import MIN_SIZE
    from faceprep.review.apply import save_crop
    from faceprep.types import Quad
    from faceprep.warp import extract_face

    size = max(int(opts.get("size") or renderer.size), MIN_SIZE)
    fmt = (
        str(
            opts.get("format")
            or ("jpg" if str(records[todo[0]].get("file_name", "")).endswith(".jpg") else "png")
        )
        if todo
        else "png"
    )
    quality = int(opts.get("jpeg_quality") or 95)
    with open(root / JOURNAL, "a", encoding="utf-8") as journal:
        for n, i in enumerate(todo):
            rec = records[i]
            source, index = str(rec.get("source")), int(rec.get("face_index", 0))
            image = renderer.load(source)
            if image is None:
                raise RefillError(f"cannot read the source photo {source} of {rec.get('file_name')}")
            quad = Quad(np.asarray(rec["quad"], dtype=np.float64))
            pixels, _ = extract_face(image, quad, size, fill, source=source, face_index=index)
            name = str(rec["file_name"])
            save_crop(root, name, pixels, fmt, quality)  # temporary name + fsync + os.replace
            made = face_fill_record(fill, identity, source, index)
            journal.write(json.dumps({"file_name": name, "fill": made}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            rec["fill"] = made
            summary.refilled += 1
            if progress is not None:
                progress(n + 1, len(todo))


def _fold_journal(root: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with the fills a killed refill journaled (crops already replaced) applied."""
    from faceprep.dataset import read_jsonl

    done = {
        str(r["file_name"]): r["fill"] for r in read_jsonl(root / JOURNAL) if "file_name" in r and "fill" in r
    }
    if done:
        for rec in records:
            if str(rec.get("file_name")) in done:
                rec["fill"] = done[str(rec["file_name"])]
    return records


def _write_metadata(root: Path, records: list[dict[str, Any]]) -> None:
    from faceprep.dataset import METADATA, _dumps

    atomic.write_text(root / METADATA, "".join(_dumps(r) for r in records))


def _record_refill(root: Path, identity: Mapping[str, Any], min_filled: float, faces: int) -> None:
    """Append this refill to ``faceprep.json``'s ``refilled`` list (atomically)."""
    path = root / "faceprep.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("refilled", []).append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fill": dict(identity),
            "min_filled": min_filled,
            "faces": faces,
        }
    )
    atomic.write_text(path, json.dumps(data, indent=2, ensure_ascii=True) + "\n")
