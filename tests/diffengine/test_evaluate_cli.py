"""``diffengine eval``: the device like train and sample; sampler and steps from the run's preset;
the sweep's default samplers include the multistep solvers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from diffengine.cli import main


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


def test_eval_sampling_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --sampler/--steps ``evaluate_run`` gets None (it then reads the run's preset); the sweep
    compares the multistep solvers too."""
    from diffengine import evaluate, evaluate_cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(evaluate_cli, "load_inception", lambda weights, device="cpu": "extractor")
    monkeypatch.setattr(evaluate, "evaluate_run", lambda run, ref, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(evaluate, "sweep", lambda run, ref, **kwargs: seen.update(kwargs))
    run, ref = tmp_path / "run", tmp_path / "ref"
    run.mkdir()
    ref.mkdir()
    runner = CliRunner()
    args = ["eval", str(run), "--ref", str(ref), "--device", "cpu"]
    assert runner.invoke(main, args).exit_code == 0
    assert seen["sampler"] is None and seen["steps"] is None
    assert runner.invoke(main, [*args, "--sampler", "ipndm_v", "--steps", "7"]).exit_code == 0
    assert (seen["sampler"], seen["steps"]) == ("ipndm_v", 7)
    assert runner.invoke(main, [*args, "--sweep"]).exit_code == 0
    assert {"dpmpp3m", "ipndm", "euler", "heun"} <= set(seen["samplers"])
    result = runner.invoke(main, [*args, "--sampler", "nope"])
    assert result.exit_code == 2 and "unknown sampler" in result.output
