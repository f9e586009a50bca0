"""Training plots from ``log.jsonl`` (loss and loss per σ bucket over steps) and labelled image sheets.

Loss curves are drawn twice: the logged values thin and light, an exponential moving average
(:func:`smooth`) on top, so the trend is readable through the step-to-step noise. Drawn with
matplotlib's object API (``Figure``, no pyplot): importing or plotting never switches the caller's
matplotlib backend. Image sheets (preview grids with raw | EMA panels, the doctor's denoising picture
with σ row labels) are composed with PIL.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont


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


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing): the first point is
    the first value, later points weigh the past by ``weight``. ``None``: a window of about 1/20 of the
    points (capped at 0.9), so a short log is not drawn lagging behind its own values."""
    if weight is None:
        weight = min(0.9, max(0.0, 1.0 - 20.0 / max(len(values), 1)))
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _curve(ax: Any, xs: list[float], ys: list[float], color: Any, label: str) -> None:
    """Raw points thin and light behind, the smoothed curve on top (only the smoothed one in the legend)."""
    ax.plot(xs, ys, lw=0.8, color=color, alpha=0.25)
    ax.plot(xs, smooth(ys) if len(ys) > 2 else ys, lw=1.8, color=color, label=label)


def plot_losses(records: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """Two panels: loss (and KID, when logged) against step; loss per σ bucket against step."""
    out = Path(out)
    train = [r for r in records if "loss" in r]
    fig = Figure(figsize=(13, 4.8))
    ax_loss, ax_bucket = fig.subplots(1, 2)
    handles: list[Any] = []
    if train:
        steps = [r["step"] for r in train]
        _curve(ax_loss, steps, [r["loss"] for r in train], "tab:blue", "loss (EDM-weighted), smoothed")
        ax_loss.set_yscale("log")
        edges = train[-1].get("sigma_edges")
        if edges:
            cmap = matplotlib.colormaps["viridis"]
            n = len(edges) - 1
            for b in range(n):
                pts = [(r["step"], r["sigma_loss"][b]) for r in train if r["sigma_loss"][b] is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    lo = "0" if b == 0 else f"{edges[b]:.2g}"  # outer buckets are open-ended
                    hi = "∞" if b == n - 1 else f"{edges[b + 1]:.2g}"
                    _curve(ax_bucket, list(xs), list(ys), cmap(b / max(1, n - 1)), f"σ ∈ [{lo}, {hi})")
            ax_bucket.set_yscale("log")
            ax_bucket.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5), title="noise level")
    kid = [r for r in records if "kid" in r and r["kid"] is not None and math.isfinite(r["kid"])]
    if kid:
        ax_kid = ax_loss.twinx()
        ax_kid.plot([r["step"] for r in kid], [r["kid"] for r in kid], "o-", color="tab:red", label="KID")
        ax_kid.set_ylabel("KID", color="tab:red")
        handles = ax_kid.get_legend_handles_labels()[0]
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss (light: logged values)")
    ax_loss.grid(True, which="both", alpha=0.3)
    if train or kid:
        ax_loss.legend(
            handles=ax_loss.get_legend_handles_labels()[0] + handles, fontsize=9, loc="upper right"
        )
    ax_bucket.set_xlabel("step")
    ax_bucket.set_ylabel("loss")
    ax_bucket.set_title("loss by noise level σ (smoothed)")
    ax_bucket.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


# ---------------------------------------------------------------------------------------------------
# Labelled image sheets


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib; it has σ), else PIL's default font."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except OSError:
        return ImageFont.load_default(size=size)


def side_by_side(panels: dict[str, Image.Image], gap: int = 16, title_size: int = 18) -> Image.Image:
    """Images in one row, each under its title, on white."""
    font = _font(title_size)
    band = title_size + 10
    width = sum(p.width for p in panels.values()) + gap * (len(panels) - 1)
    height = band + max(p.height for p in panels.values())
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    x = 0
    for title, panel in panels.items():
        sheet.paste(panel, (x, band))
        draw.text((x + panel.width // 2, band // 2), title, fill="black", font=font, anchor="mm")
        x += panel.width + gap
    return sheet


def with_row_labels(
    grid: Image.Image, labels: list[str], row_height: int, pad: int, size: int = 14
) -> Image.Image:
    """``grid`` with a white column on the left naming each row (rows of ``row_height`` px after
    ``pad`` px of padding, as :func:`diffengine.generate.make_grid` lays them out)."""
    font = _font(size)
    probe = ImageDraw.Draw(grid)
    margin = 8 + max(int(probe.textlength(label, font=font)) for label in labels)
    sheet = Image.new("RGB", (grid.width + margin, grid.height), "white")
    sheet.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(labels):
        y = pad + i * (row_height + pad) + row_height // 2
        draw.text((margin - 6, y), label, fill="black", font=font, anchor="rm")
    return sheet
