"""``--init-from``: a fresh run starts from another run's weights (diffengine.finetune)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from diffengine.checkpoint import load_checkpoint
from diffengine.cli import main
from diffengine.config import UNetConfig
from diffengine.finetune import load_start_weights, widen_first_conv
from diffengine.inpaint import COND_CHANNELS
from diffengine.networks.unet import UNet
from diffengine.train import TrainConfig, train

TinyConfig = Callable[..., TrainConfig]


def _quiet_train(cfg: TrainConfig) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only 8 images" and the like
        train(cfg)


@pytest.fixture(scope="module")
def uncond_run(
    faces: Path, tmp_path_factory: pytest.TempPathFactory, tiny_train_kwargs: Callable[..., dict[str, Any]]
) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uncond"
    _quiet_train(TrainConfig(**tiny_train_kwargs(faces, out=str(out), max_steps=3)))
    return out


def test_an_inpaint_network_started_from_an_unconditional_one_is_it_at_step_0(
    uncond_run: Path, tiny_unet: UNetConfig
) -> None:
    old = UNet(tiny_unet)
    old_start = load_start_weights(uncond_run, old, tiny_unet)
    conditioned = dataclasses.replace(tiny_unet, cond_channels=COND_CHANNELS)
    new = UNet(conditioned)
    start = load_start_weights(uncond_run, new, conditioned)
    assert start == old_start and start.step == 3 and start.weights == "ema.safetensors"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)
    cond = torch.randn(2, COND_CHANNELS, 16, 16, generator=g)
    c_noise = torch.tensor([0.3, -1.2])
    with torch.no_grad():
        torch.testing.assert_close(new(x, c_noise, cond), old(x, c_noise))  # it ignores the condition
    assert new.conv_in.weight[:, 3:].abs().max() == 0
    with torch.no_grad():
        new.conv_in.weight[:, 3:] += 0.1  # and it can learn to use it
        assert not torch.allclose(new(x, c_noise, cond), old(x, c_noise))


def test_a_different_network_or_a_missing_run_is_a_clear_error(
    uncond_run: Path, tiny_unet: UNetConfig, tmp_path: Path
) -> None:
    wider = dataclasses.replace(tiny_unet, model_channels=16)
    with pytest.raises(ValueError, match=r"--init-from .*differs from this run's in model_channels"):
        load_start_weights(uncond_run, UNet(wider), wider)
    with pytest.raises(ValueError, match=r"--init-from .*nowhere.*no such run folder"):
        load_start_weights(tmp_path / "nowhere", UNet(tiny_unet), tiny_unet)
    weights = {"conv_in.weight": torch.zeros(8, 7, 3, 3)}
    with pytest.raises(ValueError, match="only conditioning inputs can be added"):
        widen_first_conv(weights, {"conv_in.weight": torch.zeros(8, 3, 3, 3)})


def test_train_init_from_records_the_source_and_resume_keeps_its_own_weights(
    faces: Path, uncond_run: Path, tmp_path: Path, tiny_config: TinyConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "inpaint"
    _quiet_train(tiny_config(faces, out, max_steps=2, task="inpaint", init_from=str(uncond_run)))
    ckpt = load_checkpoint(out / "checkpoints")
    record = {"run": str(uncond_run.resolve()), "step": 3, "weights": "ema.safetensors"}
    assert ckpt.state["init_from"] == record
    source = load_checkpoint(uncond_run / "checkpoints")
    assert source.ema is not None
    first = ckpt.model["conv_in.weight"]
    assert first.shape[1] == 3 + COND_CHANNELS
    # two steps of lr 1e-3 AdamW from the source: close to it, not equal
    assert 0 < (first[:, :3] - source.ema["conv_in.weight"]).abs().max() < 0.01

    def never(*args: object) -> None:
        raise AssertionError("a resumed run must not be re-initialised")

    monkeypatch.setattr("diffengine.train.load_start_weights", never)
    _quiet_train(tiny_config(faces, out, max_steps=3, task="inpaint", init_from=str(uncond_run), resume=True))
    again = load_checkpoint(out / "checkpoints")
    assert again.step == 3 and again.state["init_from"] == record  # the record stays; weights are the run's


def test_cli_init_from_a_missing_run_is_one_line(
    faces: Path, tmp_path: Path, tiny_cli_args: list[str]
) -> None:
    result = CliRunner().invoke(
        main,
        ["train", str(faces), "--out", str(tmp_path / "r"), "--max-steps", "1", "--task", "inpaint",
         "--init-from", str(tmp_path / "missing"), *tiny_cli_args],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--init-from" in result.output and "no such run folder" in result.output
    assert "Traceback" not in result.output
