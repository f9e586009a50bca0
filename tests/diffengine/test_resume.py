"""Checkpoints: atomic layout, optimizer/RNG round trip, and a resumed CPU run equal bit for bit."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffengine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from diffengine.doctor import TINY_UNET
from diffengine.train import TrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore:.*only 8 images")


def test_rng_and_optimizer_round_trip(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = rng_state()
    want = (torch.rand(3), random.random(), np.random.rand(2))
    set_rng_state(state)
    got = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(want[0], got[0]) and want[1] == got[1] and np.array_equal(want[2], got[2])

    path = save_checkpoint(tmp_path, 7, net.state_dict(), {"rng": state}, optimizer=opt.state_dict(), keep=2)
    save_checkpoint(tmp_path, 8, net.state_dict(), {}, keep=2)
    save_checkpoint(tmp_path, 9, net.state_dict(), {}, keep=2)
    assert not path.exists()  # pruned: only the newest two remain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000008", "step_00000009"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000009"
    path = save_checkpoint(tmp_path, 10, net.state_dict(), {}, optimizer=opt.state_dict())
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 10 and ckpt.path == path and ckpt.ema is None
    assert set(load_file(str(path / "optimizer.safetensors"))) == {
        "state.0.step",
        "state.0.exp_avg",
        "state.0.exp_avg_sq",
        "state.1.step",
        "state.1.exp_avg",
        "state.1.exp_avg_sq",
    }
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    assert ckpt.optimizer is not None
    opt2.load_state_dict(ckpt.optimizer)
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary leftovers


def _tensors(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    path = latest_checkpoint(run / "checkpoints")
    assert path is not None
    return {name: load_file(str(path / f"{name}.safetensors")) for name in ("model", "ema", "optimizer")}


def test_resume_is_bit_identical_on_cpu(
    faces: Path, tmp_path: Path, tiny_train_kwargs: Callable[..., dict[str, Any]]
) -> None:
    # Dropout on, so the global torch RNG matters too; lr high so every step changes the weights.
    unet = dataclasses.asdict(dataclasses.replace(TINY_UNET, dropout=0.1))
    common = tiny_train_kwargs(faces, batch_size=3, lr=1e-3, warmup=2, num_samples=2, unet=unet, seed=5)
    straight = tmp_path / "straight"
    train(TrainConfig(out=str(straight), max_steps=6, **common))
    split = tmp_path / "split"
    first = train(TrainConfig(out=str(split), max_steps=3, **common))
    assert first.step == 3
    second = train(TrainConfig(out=str(split), max_steps=6, resume=True, **common))
    assert second.step == 6
    a, b = _tensors(straight), _tensors(split)
    for kind in a:
        assert a[kind].keys() == b[kind].keys()
        for key in a[kind]:
            assert torch.equal(a[kind][key], b[kind][key]), f"{kind}.{key} differs after resume"
    # And the run really moved: step-3 weights differ from step-6 weights.
    mid = load_checkpoint(split / "checkpoints" / "step_00000003")
    assert not torch.equal(mid.model["conv_in.weight"], a["model"]["conv_in.weight"])
    # Resuming a run with a different network is refused.
    other = dict(common, unet=dict(unet, model_channels=16))
    with pytest.raises(ValueError, match="different network"):
        train(TrainConfig(out=str(split), max_steps=8, resume=True, **other))
