"""Training plots from ``log.jsonl``: total loss and loss per σ bucket over steps (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSONL log (blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_losses(records: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """Two panels: loss (and KID, when logged) against step; loss per σ bucket against step."""
    out = Path(out)
    train = [r for r in records if "loss" in r]
    fig, (ax_loss, ax_bucket) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], lw=1, label="loss (EDM-weighted)")
        ax_loss.set_yscale("log")
        edges = train[-1].get("sigma_edges")
        if edges:
            cmap = plt.get_cmap("viridis")
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
    plt.close(fig)
    return out
