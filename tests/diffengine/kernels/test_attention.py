"""Flash attention: Triton (interpreted) vs SDPA, forward and dq/dk/dv, masked tails, dispatch policy."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import pytest
import torch

from diffengine.kernels import BackendUnavailableError, attention, set_backend
from diffengine.kernels.attention import attention_reference, attention_triton

if TYPE_CHECKING:  # conftest is not importable at run time (--import-mode=importlib)
    from tests.diffengine.kernels.conftest import Close

attn_mod = importlib.import_module("diffengine.kernels.attention")  # the module (the package exports the op)

CASES = [  # (B, heads, N, D, dtype, block_m, block_n): prime N, N < block, multi-block tails
    (1, 2, 37, 32, torch.float32, 16, 16),
    (2, 1, 19, 64, torch.bfloat16, None, None),
    (1, 1, 5, 24, torch.float32, None, None),
    (1, 1, 70, 128, torch.float32, None, None),
    (1, 3, 23, 32, torch.bfloat16, 16, 16),
]


@pytest.mark.parametrize(("b", "h", "n", "d", "dtype", "bm", "bn"), CASES)
def test_matches_sdpa(
    triton_cpu: None,
    close: Close,
    b: int,
    h: int,
    n: int,
    d: int,
    dtype: torch.dtype,
    bm: int | None,
    bn: int | None,
) -> None:
    g = torch.Generator().manual_seed(n * d + b)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3))
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = attention_triton(ours[0], ours[1], ours[2], block_m=bm, block_n=bn)
    out_ref = attention_reference(*ref)
    close(out, out_ref, dtype, "forward")
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)
    out_ref.backward(grad.double())
    for name, a, r in zip("qkv", ours, ref, strict=True):
        assert a.grad is not None and r.grad is not None, f"grad {name} missing"
        close(a.grad, r.grad, dtype, f"grad {name}")


def test_public_op_runs_kernel_when_forced(triton_cpu: None, close: Close) -> None:
    q, k, v = (torch.randn(1, 2, 9, 16) for _ in range(3))
    close(attention(q, k, v), attention_reference(q.double(), k.double(), v.double()), torch.float32, "out")
    assert attn_mod._attn_fwd_kernel.last_launch is not None


def test_nan_propagates(triton_cpu: None) -> None:
    q, k, v = (torch.randn(1, 1, 17, 32) for _ in range(3))
    q[0, 0, 3, 0] = float("nan")
    out = attention_triton(q, k, v, block_m=16, block_n=16)
    assert torch.isnan(out[0, 0, 3]).all()
    assert torch.isfinite(out[0, 0, :3]).all() and torch.isfinite(out[0, 0, 4:]).all()
    v[0, 0, 16, 5] = float("nan")  # a key in the masked tail block still reaches every row
    assert torch.isnan(attention_triton(q, k, v, block_m=16, block_n=16)[0, 0, :, 5]).all()


def test_forced_rejects_large_head_dim(triton_cpu: None) -> None:
    q = torch.randn(1, 1, 8, 256)
    with pytest.raises(BackendUnavailableError, match="head dim 256"):
        attention(q, q, q)


@pytest.mark.parametrize("grad", [False, True])
def test_auto_uses_sdpa_even_on_a_capable_gpu(
    capable_gpu: None, monkeypatch: pytest.MonkeyPatch, grad: bool
) -> None:
    """``backend.AUTO["attention"]`` is "never": the kernel measured 0.37-0.59x SDPA on an H200."""
    q = torch.randn(1, 1, 8, 32, requires_grad=grad)
    monkeypatch.setattr(attn_mod, "attention_triton", lambda *a, **k: pytest.fail("kernel used under auto"))
    set_backend("auto")
    try:
        torch.testing.assert_close(attention(q, q, q), attention_reference(q, q, q))
    finally:
        set_backend(None)
