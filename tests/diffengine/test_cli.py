"""CLI smoke: train 2 steps, resume, sample 4 images, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from diffengine.cli import main
from diffengine.doctor import TINY_UNET

TINY = [
    "--unet",
    f"resolution={TINY_UNET.resolution}",
    "--unet",
    f"model_channels={TINY_UNET.model_channels}",
    "--unet",
    f"channel_mult={TINY_UNET.channel_mult}",
    "--unet",
    "num_res_blocks=1",
    "--unet",
    "attn_resolutions=()",
    "--unet",
    f"num_groups={TINY_UNET.num_groups}",
    "--unet",
    f"head_dim={TINY_UNET.head_dim}",
]


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_train_resume_sample(faces: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    args = [
        "train",
        str(faces),
        "--preset",
        "faces32",
        "--out",
        str(run),
        "--batch-size",
        "4",
        "--log-every",
        "1",
        *TINY,
    ]
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
    assert Image.open(grid).size == (2 * 16 + 3 * 2,) * 2  # 2x2 grid with 2 px padding


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


def test_kid_hook_embeds_the_reference_with_the_training_device_extractor(monkeypatch) -> None:  # type: ignore[no-untyped-def]
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

    def fake_refstats(data, resolution, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs, data=data, resolution=resolution)
        return "ref"

    monkeypatch.setattr(evaluate, "default_extractor", fake_extractor)
    monkeypatch.setattr(refstats, "reference_statistics", fake_refstats)
    cfg = types.SimpleNamespace(data="faces/", holdout=0.05, device="cpu")
    eval_fn = cli_module._kid_hook(cfg, 32, 16)
    assert callable(eval_fn)
    assert seen["extractor"] == "inception@cpu" and loaded == ["cpu"]
    assert seen["split"] == "heldout" and seen["heldout_fraction"] == 0.05 and seen["resolution"] == 32
