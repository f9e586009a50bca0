"""EMA against a hand computation of EDM's half-life schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffengine.ema import EMA


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_update_matches_hand_computation() -> None:
    model = _model()
    ema = EMA(model, half_life_kimg=0.1, batch_size=10, rampup_ratio=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            bn = model.get_submodule("1")
            assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None
            bn.running_mean.add_(1.0)  # a buffer: copied, not averaged
        ema.update(model)
        nimg = 10 * step
        half_life = min(100.0, 0.5 * nimg)  # 0.1 kimg, ramped up as 0.5·images seen
        beta = 0.5 ** (10 / half_life)
        assert ema.beta() == pytest.approx(beta)
        for name, p in model.named_parameters():
            expected[name] = beta * expected[name] + (1 - beta) * p.detach()
    state = ema.module.state_dict()
    for name, _ in model.named_parameters():
        torch.testing.assert_close(state[name], expected[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state["1.running_mean"], model.get_submodule("1").running_mean)
    assert ema.nimg == 300
    assert beta == pytest.approx(0.5 ** (10 / 100))  # past the ramp-up: the configured half-life


def test_half_life_means_half_weight_after_that_many_images() -> None:
    model = _model()
    ema = EMA(model, half_life_kimg=0.64, batch_size=8, rampup_ratio=None)
    start = next(ema.module.parameters()).detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # jump once, then stay
    for _ in range(80):  # 640 images = one half-life
        ema.update(model)
    moved = next(ema.module.parameters()) - start
    torch.testing.assert_close(moved, torch.full_like(moved, 0.5))


def test_module_is_a_frozen_copy_and_state_round_trips() -> None:
    model = _model()
    ema = EMA(model, half_life_kimg=1.0, batch_size=4)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    with torch.no_grad():
        next(model.parameters()).add_(3.0)
    assert not torch.equal(next(model.parameters()), next(ema.module.parameters()))  # a copy
    for _ in range(5):
        ema.update(model)
    other = EMA(_model(), half_life_kimg=1.0, batch_size=4)
    other.load_state_dict(ema.state_dict())
    assert other.nimg == 20
    for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    target = _model()
    ema.copy_to(target)
    for a, b in zip(target.state_dict().values(), ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_compiled_model_is_unwrapped() -> None:
    model = _model()
    wrapper = nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule holds
    ema = EMA(wrapper, half_life_kimg=1.0, batch_size=4)
    assert set(ema.module.state_dict()) == set(model.state_dict())
    with pytest.raises(ValueError, match="positive"):
        EMA(model, half_life_kimg=0.0, batch_size=4)


def test_warm_up_forgets_the_initialisation_and_the_log_sees_the_half_life() -> None:
    """EDM's ramp: after a jump in the weights the ramped EMA follows within a few steps, while the
    configured half-life alone (here 50 kimg, faces32's) would leave it at the initial weights."""
    model = _model()
    ramped = EMA(model, half_life_kimg=50.0, batch_size=4, rampup_ratio=0.05)
    plain = EMA(model, half_life_kimg=50.0, batch_size=4, rampup_ratio=None)
    start = next(model.parameters()).detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for _ in range(40):  # 160 images
        ramped.update(model)
        plain.update(model)
    moved_ramped = (next(ramped.module.parameters()) - start).mean()
    moved_plain = (next(plain.module.parameters()) - start).mean()
    assert float(moved_ramped) > 0.99 and float(moved_plain) < 0.01
    assert ramped.half_life() == pytest.approx(0.05 * 160) and plain.half_life() == 50_000
    assert ramped.describe() == {"ema_half_life_img": 8.0, "ema_half_life_steps": 2.0}
