"""Triton import guard and a kernel wrapper that picks compiled or interpreted execution per launch.

``triton.jit`` decides at *decoration* time whether a kernel is compiled or interpreted (it reads
``TRITON_INTERPRET`` once, when the module is imported). That makes the test result depend on import
order. ``kernel`` defers the choice to launch time instead, so ``TRITON_INTERPRET=1`` may be set any
time before a kernel runs. Kernels must not call other ``@triton.jit`` helpers (inline them instead),
because an interpreted kernel cannot call a compiled helper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffengine.kernels.backend import interpreting

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU installs without the ``triton`` extra
    triton = None
    tl = None

__all__ = ["Kernel", "kernel", "next_pow2", "tl", "triton"]


class Kernel:
    """A Triton kernel launched as ``k[grid](*args)``, compiled on CUDA and interpreted on CPU."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn
        self._compiled: Any = None
        self._interpreted: Any = None

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        if triton is None:
            raise RuntimeError(f"kernel {self.fn.__name__} needs triton, which is not installed")
        if interpreting():
            if self._interpreted is None:
                from triton.runtime.interpreter import InterpretedFunction

                self._interpreted = InterpretedFunction(self.fn)
            return self._interpreted[grid]
        if self._compiled is None:
            self._compiled = triton.jit(self.fn)
        return self._compiled[grid]


def kernel(fn: Callable[..., None]) -> Kernel:
    """Decorator: mark ``fn`` as a Triton kernel (see the module docstring)."""
    return Kernel(fn)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def dense_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` laid out in memory exactly like ``ref`` (a no-op when it already is)."""
    fmt = torch.channels_last if ref.ndim == 4 and _is_channels_last(ref) else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def _is_channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def flat_dense(ref: torch.Tensor) -> torch.Tensor:
    """``ref`` as a dense tensor whose batch is outermost (NCHW or NHWC memory), for flat kernels."""
    return dense_like(ref, ref)
