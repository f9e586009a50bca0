"""Training plots from ``log.jsonl``: total loss and loss per σ bucket over steps.

Drawn with matplotlib's object API (``Figure``, no pyplot): importing or plotting never switches the
caller's matplotlib backend.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSONL log (blank lines skipped). A partial last line (a run killed mid-write, or a
    log being appended to right now) is ignored; a damaged line elsewhere is a ValueError naming it."""
    path = Path(path)
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                break  # the partial tail of an interrupted write
            raise ValueError(f"{path}:{lineno}: not a JSON line ({exc})") from exc
        if isinstance(record, dict):
            records.append(record)
    return records


def drop_partial_line(path: str | os.PathLike[str]) -> int:
    """Cut a log back to its last complete line (ending in a newline) before appending to it, so the
    tail of an interrupted write does not merge with the next record. Returns the bytes dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep = 0
        pos = size
        while pos > 0:  # scan back for the last newline, a block at a time
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def plot_losses(records: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """Two panels: loss (and KID, when logged) against step; loss per σ bucket against step."""
    out = Path(out)
    train = [r for r in records if "loss" in r]
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_bucket = fig.subplots(1, 2)
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], lw=1, label="loss (EDM-weighted)")
        ax_loss.set_yscale("log")
        edges = train[-1].get("sigma_edges")
        if edges:
            cmap = matplotlib.colormaps["viridis"]
            n = len(edges) - 1
            for b in range(n):
                pts = [(r["step"], r["sigma_loss"][b]) for r in train if r["sigma_loss"][b] is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    label = f"σ∈[{edges[b]:.2g}, {edges[b + 1]:.2g})"
                    ax_bucket.plot(xs, ys, lw=1, color=cmap(b / max(1, n - 1)), label=label)
            ax_bucket.set_yscale("log")
            ax_bucket.legend(fontsize=6, loc="upper right")
    kid = [r for r in records if "kid" in r and r["kid"] is not None and math.isfinite(r["kid"])]
    if kid:
        ax_kid = ax_loss.twinx()
        ax_kid.plot([r["step"] for r in kid], [r["kid"] for r in kid], "o-", color="tab:red", label="KID")
        ax_kid.set_ylabel("KID", color="tab:red")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss")
    ax_loss.legend(fontsize=7, loc="upper left")
    ax_bucket.set_xlabel("step")
    ax_bucket.set_title("loss by noise level σ")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
