"""Kernel tests: Triton kernels run on the CPU through Triton's interpreter, against the PyTorch reference.

``TRITON_INTERPRET`` is read at *launch* time by ``diffengine.kernels._triton.Kernel``, so setting it
per test (the ``triton_cpu`` fixture) works whatever was imported first. Every comparison takes its
tolerance from ``TOLERANCES``, one row per dtype: fp32 tight, bf16 loose. References are computed in
float64 from the same (rounded) inputs, so the tolerance measures the kernel's error alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from diffengine.kernels import backend
from diffengine.kernels.backend import set_backend

# dtype -> (atol, rtol) for outputs and gradients (gradients of reductions are scaled to O(1) by tests).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (6e-2, 3e-2),
}

Close = Callable[[torch.Tensor, torch.Tensor, torch.dtype, str], None]


@pytest.fixture
def triton_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Force the Triton backend and run its kernels through the interpreter on the CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    set_backend("triton")
    yield
    set_backend(None)


@pytest.fixture
def capable_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dispatch as if every input sat on a card Triton supports (compiled, not interpreted): what
    ``backend.AUTO`` decides. Tests using it must replace the kernel path before calling the op."""
    monkeypatch.setattr(backend, "_why_not", lambda tensors: None)
    monkeypatch.setattr(backend, "interpreting", lambda: False)


@pytest.fixture
def close() -> Close:
    """``close(actual, expected, dtype, what)``: finite where expected is, within the dtype's tolerance."""

    def check(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
        atol, rtol = TOLERANCES[dtype]
        assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
        actual64 = actual.detach().double()
        assert torch.isfinite(actual64).all(), f"{what}: non-finite values"
        torch.testing.assert_close(actual64, expected.detach().double(), atol=atol, rtol=rtol, msg=what)

    return check
