"""``log.jsonl`` with a partial last line (a killed run) on resume; loss curves smoothed with the raw
values behind; labelled image sheets; plotting leaves the caller's matplotlib backend alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffengine.cli import main
from diffengine.plots import drop_partial_line, plot_losses, read_log, side_by_side, smooth, with_row_labels


def test_read_log_ignores_a_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert read_log(log) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    log.write_bytes(b'{"step": 1, "loss": 0.5}\n{"step": 2, "na\xc3')  # cut inside a UTF-8 character
    assert read_log(log) == [{"step": 1, "loss": 0.5}]
    log.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl:2: not a JSON line"):
        read_log(log)


def test_drop_partial_line(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    assert drop_partial_line(log) == 0  # no log yet
    log.write_text('{"step": 1}\n{"step": 2}\n')
    assert drop_partial_line(log) == 0 and log.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.write_text('{"step": 1}\n{"step": 2, "lo')
    assert drop_partial_line(log) == len('{"step": 2, "lo')
    assert log.read_text() == '{"step": 1}\n'
    log.write_text('{"step"')
    assert drop_partial_line(log) == 7 and log.read_bytes() == b""


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_resume_after_a_partial_log_line(tmp_path: Path, tiny_cli_args: list[str]) -> None:
    """A run killed mid-way through writing a log line: --resume drops the partial tail, appends whole
    lines and plots the loss (the old code trained, then failed on the plot with exit code 2)."""
    data = tmp_path / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), generator=g, dtype=torch.uint8).numpy()).save(
            data / f"img{i}.png"
        )
    run = tmp_path / "run"
    runner = CliRunner()
    args = ["train", str(data), "--out", str(run), *tiny_cli_args]
    result = runner.invoke(main, [*args, "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    log = run / "log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 3, "loss": 0.1')  # killed while writing
    result = runner.invoke(main, [*args, "--max-steps", "4", "--resume"])
    assert result.exit_code == 0, result.output
    assert "dropped a partial last line (23 bytes)" in result.output
    lines = log.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert (run / "loss.png").stat().st_size > 0


def test_plotting_keeps_the_matplotlib_backend(tmp_path: Path) -> None:
    """Importing the trainer and drawing both plots neither switches the backend nor loads pyplot."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import matplotlib
        matplotlib.use("svg")
        import diffengine.train, diffengine.evaluate, diffengine.cli
        from diffengine.plots import plot_losses
        from diffengine.evaluate import plot_sweep
        out = Path({str(tmp_path)!r})
        records = [
            {{"step": s, "loss": 1.0 / s, "sigma_edges": [0.1, 1.0, 10.0], "sigma_loss": [0.5 / s, None]}}
            for s in (1, 2, 3)
        ] + [{{"step": 3, "kid": 0.01}}]
        plot_losses(records, out / "loss.png")
        rows = [{{"sampler": "euler", "nfe": n, "n": 4, "fid": 10.0 / n, "kid": 0.1 / n}} for n in (10, 20)]
        plot_sweep(rows, out / "sweep.png", title="t")
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MPLBACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]
    for name in ("loss.png", "sweep.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.size[0] > 100


def test_smoothing_and_the_loss_plot(tmp_path: Path) -> None:
    assert smooth([1.0]) == [1.0]  # bias-corrected: starts at the first value, not at 0.2 of it
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    noisy = [1.0 + (-1) ** i * 0.5 for i in range(200)]
    assert max(abs(v - 1.0) for v in smooth(noisy)[50:]) < 0.06  # the ±0.5 zig-zag mostly averaged out
    falling = [1.0 / s for s in range(1, 13)]  # a short log (12 points) is not smoothed into a lagging line
    assert smooth(falling) == pytest.approx(falling)
    records = [
        {"step": s, "loss": 1.0 / s, "sigma_edges": [0.1, 1.0, 10.0], "sigma_loss": [0.5 / s, None]}
        for s in range(1, 20)
    ]
    out = plot_losses(records, tmp_path / "loss.png")
    with Image.open(out) as img:
        assert img.size == ((13 * 110), round(4.8 * 110))


def test_labelled_sheets() -> None:
    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 50), "blue")
    sheet = side_by_side({"raw": red, "EMA": blue}, gap=10, title_size=12)
    assert sheet.size == (40 + 10 + 20, 22 + 50)
    assert sheet.getpixel((5, 22 + 5)) == (255, 0, 0) and sheet.getpixel((55, 22 + 45)) == (0, 0, 255)
    title = np.asarray(sheet.crop((0, 0, 40, 22)))
    assert sheet.getpixel((1, 1)) == (255, 255, 255) and int(title.min()) < 100  # the title is drawn
    grid = Image.new("RGB", (30, 2 + 2 * (10 + 2)), "gray")
    labelled = with_row_labels(grid, ["clean", "σ = 0.5 denoised"], row_height=10, pad=2)
    margin = labelled.width - grid.width
    assert margin > 40 and labelled.getpixel((margin + 1, 1)) == (128, 128, 128)
