"""Fused preconditioned weighted loss: Triton (interpreted) vs reference, value and dF; auto never runs it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffengine.kernels import BackendUnavailableError, precond_loss, set_backend
from diffengine.kernels.precond_loss import precond_loss_reference

if TYPE_CHECKING:  # conftest is not importable at run time (--import-mode=importlib)
    from tests.diffengine.kernels.conftest import Close

loss_mod = importlib.import_module("diffengine.kernels.precond_loss")  # the package exports the op


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    tensors = [torch.randn(shape, generator=g).to(dtype) for _ in range(3)]  # net_out, x_noisy, x_clean
    coeffs = [torch.rand(b, generator=g) + 0.1 for _ in range(3)]  # c_skip, c_out, weight (fp32)
    return tensors + coeffs


def _compare(inputs: list[torch.Tensor], close: Close) -> None:
    dtype = inputs[0].dtype
    f = inputs[0].clone().requires_grad_()
    f_ref = inputs[0].detach().double().requires_grad_()
    loss = precond_loss(f, *inputs[1:])
    loss_ref = precond_loss_reference(f_ref, *(t.double() for t in inputs[1:]))
    assert loss.shape == (inputs[0].shape[0],)
    close(loss, loss_ref, dtype, "loss")
    g = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    loss.backward(g.to(loss.dtype))
    loss_ref.backward(g.double())
    scale = inputs[0][0].numel()  # dF is O(1/M): compare it at O(1)
    assert f.grad is not None and f_ref.grad is not None, "grad net_out missing"
    close(f.grad * scale, f_ref.grad * scale, dtype, "grad net_out")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 4), c=st.sampled_from([1, 3]), h=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_loss_matches_reference(triton_cpu: None, close: Close, b: int, c: int, h: int, seed: int) -> None:
    _compare(_inputs((b, c, h, 5), torch.float32, seed), close)


def test_loss_bf16_multi_chunk_channels_last(
    triton_cpu: None, close: Close, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_mod, "BLOCK", 64)  # 3·7·11 = 231 values: 4 chunks
    inputs = _inputs((2, 3, 7, 11), torch.bfloat16, 4)
    _compare(inputs, close)
    inputs[0] = inputs[0].contiguous(memory_format=torch.channels_last)
    _compare(inputs, close)


def test_loss_nan_propagates_per_sample(triton_cpu: None) -> None:
    inputs = _inputs((3, 2, 4, 4), torch.float32, 2)
    inputs[2][1, 0, 2, 2] = float("nan")
    loss = precond_loss(*inputs)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()


def test_forced_triton_rejects_grad_on_data(triton_cpu: None) -> None:
    inputs = _inputs((2, 1, 3, 3), torch.float32, 0)
    inputs[2].requires_grad_()
    with pytest.raises(BackendUnavailableError, match="differentiates net_out only"):
        precond_loss(*inputs)


def test_auto_keeps_the_loss_on_pytorch(capable_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """``backend.AUTO["precond_loss"]`` is "never" (0.98x eager on an H200): training stays on PyTorch."""
    monkeypatch.setattr(loss_mod._PrecondLoss, "apply", lambda *a: pytest.fail("kernel used under auto"))
    inputs = _inputs((2, 1, 3, 3), torch.float32, 0)
    set_backend("auto")
    try:
        torch.testing.assert_close(precond_loss(*inputs), precond_loss_reference(*inputs))
    finally:
        set_backend(None)
