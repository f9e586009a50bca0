"""``log.jsonl`` with a partial last line (a killed run) on resume; plotting leaves the caller's
matplotlib backend alone; ``diffengine eval`` picks the device like train and sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffengine.cli import main
from diffengine.doctor import TINY_UNET
from diffengine.plots import drop_partial_line, read_log

TINY = [
    "--preset", "faces32", "--batch-size", "4", "--log-every", "1",
    "--unet", f"resolution={TINY_UNET.resolution}",
    "--unet", f"model_channels={TINY_UNET.model_channels}",
    "--unet", f"channel_mult={TINY_UNET.channel_mult}",
    "--unet", "num_res_blocks=1",
    "--unet", "attn_resolutions=()",
    "--unet", f"num_groups={TINY_UNET.num_groups}",
    "--unet", f"head_dim={TINY_UNET.head_dim}",
]  # fmt: skip


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
def test_resume_after_a_partial_log_line(tmp_path: Path) -> None:
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
    args = ["train", str(data), "--out", str(run), *TINY]
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


def test_eval_defaults_to_the_auto_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``diffengine eval`` without --device uses CUDA when there is one (as train and sample do)."""
    from diffengine import evaluate, evaluate_cli

    seen: dict[str, Any] = {}

    def fake_inception(weights: Any, device: str = "cpu") -> str:
        seen["inception"] = device
        return "extractor"

    def fake_evaluate_run(run: Any, ref: Any, **kwargs: Any) -> None:
        seen["evaluate"] = kwargs["device"]

    monkeypatch.setattr(evaluate_cli, "load_inception", fake_inception)
    monkeypatch.setattr(evaluate, "evaluate_run", fake_evaluate_run)
    run, ref = tmp_path / "run", tmp_path / "ref"
    run.mkdir()
    ref.mkdir()
    runner = CliRunner()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(main, ["eval", str(run), "--ref", str(ref)])
    assert result.exit_code == 0, result.output
    assert seen == {"inception": "cuda:0", "evaluate": "cuda:0"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(main, ["eval", str(run), "--ref", str(ref)])
    assert result.exit_code == 0, result.output
    assert seen == {"inception": "cpu", "evaluate": "cpu"}
    result = runner.invoke(main, ["eval", str(run), "--ref", str(ref), "--device", "cpu"])
    assert result.exit_code == 0 and seen["evaluate"] == "cpu"
    result = runner.invoke(main, ["eval", "--help"])
    assert "[default: auto]" in " ".join(result.output.split())
