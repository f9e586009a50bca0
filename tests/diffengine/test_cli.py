"""CLI smoke: train 2 steps, resume, sample 4 images, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from diffengine.cli import main
from diffengine.config import DEFAULT_SAMPLE_STEPS, DEFAULT_SAMPLER, PRESETS


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_train_resume_sample(
    faces: Path, tmp_path: Path, tiny_cli_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", str(faces), "--out", str(run), *tiny_cli_args]
    result = runner.invoke(main, [*args, "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert (
        "step 2:" in result.output and (run / "checkpoints" / "step_00000002" / "ema.safetensors").is_file()
    )
    assert (run / "samples" / "latest.png").is_file()
    # Same folder again without --resume: refused; with --resume: continues to step 3.
    result = runner.invoke(main, [*args, "--max-steps", "3"])
    assert result.exit_code == 1 and "--resume" in result.output
    result = runner.invoke(main, [*args, "--max-steps", "3", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and (run / "checkpoints" / "step_00000003").is_dir()

    grid = tmp_path / "out" / "grid.png"
    result = runner.invoke(
        main, ["sample", str(run), "--n", "4", "--steps", "3", "--sampler", "euler", "--out", str(grid)]
    )
    assert result.exit_code == 0, result.output
    singles = sorted((tmp_path / "out" / "grid").glob("*.png"))
    assert [p.name for p in singles] == [f"sample_{i:05d}.png" for i in range(4)]
    assert all(Image.open(p).size == (16, 16) for p in singles)
    assert Image.open(grid).size == (2 * 96 + 3 * 2,) * 2  # 2x2 grid, 16 px zoomed 6x, 2 px padding

    # Without --sampler/--steps: the run's preset settings (one default for sample, eval, KID, previews).
    from diffengine import generate

    seen: dict[str, object] = {}
    real = generate.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(*args, **{**kwargs, "steps": 2})

    monkeypatch.setattr(generate, "generate", spy)
    result = runner.invoke(main, ["sample", str(run), "--n", "1", "--out", str(tmp_path / "d.png")])
    assert result.exit_code == 0, result.output
    assert (seen["sampler"], seen["steps"]) == (DEFAULT_SAMPLER, DEFAULT_SAMPLE_STEPS) == ("ipndm", 20)
    assert all((p.sampler, p.sample_steps) == ("ipndm", 20) for p in PRESETS.values())


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nowhere"
    result = runner.invoke(main, ["train", str(missing), "--out", str(tmp_path / "r"), "--preset", "faces32"])
    assert result.exit_code == 1 and f"{missing}: no such file" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["train", str(empty), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "no images found" in result.output
    result = runner.invoke(main, ["train", str(empty), "--preset", "faces1024"])
    assert result.exit_code == 2 and "faces1024" in result.output
    result = runner.invoke(main, ["train", str(empty), "--max-steps", "0"])
    assert result.exit_code == 2 and "--max-steps" in result.output
    result = runner.invoke(main, ["train", str(empty), "--unet", "model_channels=17"])
    assert result.exit_code == 2 and "divisible" in result.output
    result = runner.invoke(main, ["train", str(empty), "--unet", "nonsense"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = runner.invoke(main, ["sample", str(empty), "--n", "1"])
    assert result.exit_code == 1 and "no checkpoint" in result.output
    result = runner.invoke(main, ["sample", str(missing)])
    assert result.exit_code == 2 and "not a run folder" in result.output
    result = runner.invoke(main, ["doctor", str(missing)])
    assert result.exit_code == 1 and "no such file" in result.output


def test_kid_hook_embeds_the_reference_with_the_training_device_extractor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Inception per process: the reference statistics use the extractor the KID evaluations will
    use (cached per device), not a second one loaded on the CPU."""
    import types

    from diffengine import cli as cli_module
    from diffengine import evaluate
    from diffengine.metrics import refstats

    loaded: list[str] = []
    seen: dict[str, object] = {}

    def fake_extractor(device: str = "cpu") -> str:
        loaded.append(device)
        return f"inception@{device}"

    def fake_refstats(data: str, resolution: int, **kwargs: Any) -> str:
        seen.update(kwargs, data=data, resolution=resolution)
        return "ref"

    monkeypatch.setattr(evaluate, "default_extractor", fake_extractor)
    monkeypatch.setattr(refstats, "reference_statistics", fake_refstats)
    settings: dict[str, Any] = {}

    def fake_make_kid_eval(ref: str, **kwargs: Any) -> Any:
        settings.update(kwargs, ref=ref)
        return lambda denoiser, step: {}

    monkeypatch.setattr(evaluate, "make_kid_eval", fake_make_kid_eval)
    cfg = types.SimpleNamespace(data="faces/", holdout=0.05, device="cpu")
    preset = dataclasses.replace(PRESETS["faces32"], sampler="dpmpp3m", sample_steps=12)
    eval_fn = cli_module._kid_hook(cfg, preset, 16)
    assert callable(eval_fn)
    assert seen["extractor"] == "inception@cpu" and loaded == ["cpu"]
    assert seen["split"] == "heldout" and seen["heldout_fraction"] == 0.05 and seen["resolution"] == 32
    # The in-training KID samples the way the preset says (as sample, eval and the previews do).
    assert settings == {"ref": "ref", "n": 16, "sampler": "dpmpp3m", "steps": 12, "schedule": "karras"}
