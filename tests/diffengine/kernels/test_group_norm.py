"""Fused GroupNorm + scale/shift + SiLU: Triton (interpreted) vs the PyTorch reference, value and grads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from diffengine.kernels import group_norm as gn_module
from diffengine.kernels import group_norm_silu, set_backend
from diffengine.kernels.group_norm import group_norm_silu_reference

if TYPE_CHECKING:  # conftest is not importable at run time (--import-mode=importlib)
    from diffengine.kernels.backend import Backend
    from tests.diffengine.kernels.conftest import Close

SETTINGS = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _inputs(
    b: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int, modulate: bool = True
) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, h, w, generator=g) * 3 + 2).to(dtype)  # offset mean: tests the statistics
    weight = (1 + 0.5 * torch.randn(c, generator=g)).to(dtype)
    bias = torch.randn(c, generator=g).to(dtype)
    scale = (0.5 * torch.randn(b, c, generator=g)).to(dtype) if modulate else None
    shift = torch.randn(b, c, generator=g).to(dtype) if modulate else None
    return [x, weight, bias, scale, shift]


def _args(
    inputs: list[torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``inputs`` as (x, weight, bias, scale, shift): only scale and shift may be None."""
    x, weight, bias, scale, shift = inputs
    assert x is not None and weight is not None and bias is not None, "x, weight and bias are required"
    return x, weight, bias, scale, shift


def _compare(inputs: list[torch.Tensor | None], groups: int, close: Close, silu: bool = True) -> None:
    dtype = _args(inputs)[0].dtype
    ours = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    x, weight, bias, scale, shift = _args(ours)
    y = group_norm_silu(x, weight, bias, groups, scale, shift, silu=silu)
    x, weight, bias, scale, shift = _args(ref)
    y_ref = group_norm_silu_reference(x, weight, bias, groups, scale, shift, silu=silu)
    assert y.dtype == dtype
    close(y, y_ref, dtype, "forward")
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    y.backward(grad)
    y_ref.backward(grad.double())
    for name, a, r in zip(("x", "weight", "bias", "scale", "shift"), ours, ref, strict=True):
        if a is None:
            continue
        assert a.grad is not None and r is not None and r.grad is not None, name
        assert a.grad.dtype == a.dtype
        # weight/bias grads sum over B·H·W elements: compare relative to their size
        denom = max(1.0, r.grad.abs().max().item())
        close(a.grad / denom, r.grad / denom, dtype, f"grad {name}")


@SETTINGS
@given(
    b=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3, 5]),
    cpg=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.sampled_from([1, 3, 5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_fp32(
    triton_cpu: None, close: Close, b: int, groups: int, cpg: int, h: int, w: int, seed: int
) -> None:
    assume(cpg * h * w > 1)  # the reference rejects single-value groups
    _compare(_inputs(b, groups * cpg, h, w, torch.float32, seed), groups, close)


@pytest.mark.parametrize(("shape", "groups"), [((2, 6, 5, 7), 3), ((1, 10, 3, 3), 5), ((3, 4, 1, 1), 2)])
def test_matches_reference_bf16(
    triton_cpu: None, close: Close, shape: tuple[int, int, int, int], groups: int
) -> None:
    b, c, h, w = shape
    _compare(_inputs(b, c, h, w, torch.bfloat16, seed=sum(shape)), groups, close)


@pytest.mark.parametrize(("modulate", "silu"), [(False, False), (True, True)])
def test_options_and_multi_tile(
    triton_cpu: None, close: Close, monkeypatch: pytest.MonkeyPatch, modulate: bool, silu: bool
) -> None:
    monkeypatch.setattr(gn_module, "MAX_TILE", 32)  # 11·7 = 77 pixels in tiles of 8: last one partial
    _compare(_inputs(2, 6, 11, 7, torch.float32, seed=3, modulate=modulate), 2, close, silu=silu)


def test_channels_last_keeps_layout(triton_cpu: None, close: Close) -> None:
    inputs = _inputs(2, 6, 5, 3, torch.float32, seed=11)
    x, w, bias, scale, shift = _args(inputs)
    x = inputs[0] = x.contiguous(memory_format=torch.channels_last)
    _compare(inputs, 3, close)
    y = group_norm_silu(x, w, bias, 3, scale, shift)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_only_scale_or_only_shift(triton_cpu: None, close: Close) -> None:
    x, w, bias, scale, shift = _inputs(2, 4, 3, 3, torch.float32, seed=5)
    _compare([x, w, bias, scale, None], 2, close)
    _compare([x, w, bias, None, shift], 2, close)


def test_nan_propagates_to_its_group_only(triton_cpu: None) -> None:
    x, w, bias, scale, shift = _args(_inputs(2, 4, 3, 3, torch.float32, seed=1))
    x[1, 2, 1, 1] = float("nan")  # sample 1, group 1 (channels 2-3)
    y = group_norm_silu(x, w, bias, 2, scale, shift)
    assert torch.isnan(y[1, 2:]).all()
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[1, :2]).all()


def test_bad_groups_raise(triton_cpu: None) -> None:
    x, w, bias, _, _ = _args(_inputs(1, 6, 2, 2, torch.float32, seed=0))
    with pytest.raises(ValueError, match="not divisible"):
        group_norm_silu(x, w, bias, 4)


def test_bad_bias_or_shift_shape_raises(triton_cpu: None) -> None:
    x, w, bias, scale, shift = (t for t in _inputs(2, 6, 2, 2, torch.float32, seed=0) if t is not None)
    with pytest.raises(ValueError, match="bias"):
        group_norm_silu(x, w, bias[:4], 3)
    with pytest.raises(ValueError, match="shift"):
        group_norm_silu(x, w, bias, 3, scale, shift[:1])


@pytest.mark.parametrize(
    ("backend", "requires_grad", "grad_mode", "expected"),
    [
        (None, False, True, "triton"),  # auto, sampling: the kernel's 2.2x forward
        (None, True, False, "triton"),  # auto under no_grad: no backward to pay for
        (None, True, True, "torch"),  # auto, training: fwd+bwd measured 0.93x eager, keep PyTorch
        ("triton", True, True, "triton"),  # forced: everywhere
        ("torch", False, True, "torch"),
    ],
)
def test_auto_uses_the_kernel_only_where_no_gradient_is_needed(
    monkeypatch: pytest.MonkeyPatch,
    capable_gpu: None,
    backend: Backend | None,
    requires_grad: bool,
    grad_mode: bool,
    expected: str,
) -> None:
    """Dispatch as if on a capable GPU (``backend.AUTO`` decides): which path runs."""
    calls: list[str] = []
    monkeypatch.setattr(gn_module, "group_norm_silu_triton", lambda *a, **k: calls.append("triton"))
    monkeypatch.setattr(gn_module, "group_norm_silu_reference", lambda *a, **k: calls.append("torch"))
    x = torch.randn(2, 4, 3, 3, requires_grad=requires_grad)
    set_backend(backend)
    try:
        with torch.set_grad_enabled(grad_mode):
            group_norm_silu(x, torch.ones(4), torch.zeros(4), 2)
    finally:
        set_backend(None)
    assert calls == [expected]
