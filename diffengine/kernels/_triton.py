"""Triton import guard and a kernel wrapper that picks compiled or interpreted execution per launch.

``triton.jit`` decides at *decoration* time whether a kernel is compiled or interpreted (it reads
``TRITON_INTERPRET`` once, when the module is imported). That makes the test result depend on import
order. ``kernel`` defers the choice to launch time instead, so ``TRITON_INTERPRET=1`` may be set any
time before a kernel runs. Kernels must not call other ``@triton.jit`` helpers (inline them instead),
because an interpreted kernel cannot call a compiled helper.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from diffengine.kernels.backend import interpreting

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU installs without the ``triton`` extra
    triton = None
    tl = None

__all__ = ["Kernel", "cdiv", "kernel", "next_pow2", "tl", "triton"]


class Kernel:
    """A Triton kernel launched as ``k[grid](*args)``, compiled on CUDA and interpreted on CPU."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn
        self._compiled: Any = None
        self._interpreted: Any = None
        # Arguments of the last interpreted launch, so tests can compile the same call for a GPU target.
        self.last_launch: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        if triton is None:
            raise RuntimeError(f"kernel {self.fn.__name__} needs triton, which is not installed")
        if interpreting():
            if self._interpreted is None:
                from triton.runtime.interpreter import InterpretedFunction

                self._interpreted = InterpretedFunction(self.fn)
            launch = self._interpreted[grid]

            def record_and_launch(*args: Any, **kwargs: Any) -> Any:
                self.last_launch = (args, kwargs)
                with _interpreted_stdlib():
                    return launch(*args, **kwargs)

            return record_and_launch
        if self._compiled is None:
            self._compiled = triton.jit(self.fn)
        return self._compiled[grid]

    def last_launch_signature(
        self, **overrides: Any
    ) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        """(signature, constexprs, options) of the last interpreted launch, for ``compile_for_gpu``.
        Triton dtypes among the constexprs are given by name (``"tl.dtype:bf16"``) so the result pickles."""
        if self.last_launch is None or triton is None:
            raise RuntimeError(f"{self.fn.__name__} has not been launched under the interpreter")
        args, kwargs = self.last_launch
        params = inspect.signature(self.fn).parameters
        values = dict(zip(params, args, strict=False)) | {k: v for k, v in kwargs.items() if k in params}
        values |= overrides
        options = {k: v for k, v in kwargs.items() if k not in params}
        signature: dict[str, str] = {}
        constexprs: dict[str, Any] = {}
        for name, param in params.items():
            value = values[name]
            if "constexpr" in str(param.annotation):
                signature[name] = "constexpr"
                constexprs[name] = f"tl.dtype:{value.name}" if isinstance(value, tl.dtype) else value
            elif isinstance(value, torch.Tensor):
                signature[name] = "*" + _TRITON_DTYPES[value.dtype]
            elif isinstance(value, bool):
                signature[name] = "i1"
            elif isinstance(value, int):
                signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            else:
                signature[name] = "fp32"
        return signature, constexprs, options


def compile_for_gpu(
    module: str,
    name: str,
    signature: dict[str, str],
    constexprs: dict[str, Any],
    options: dict[str, Any],
    capability: int = 90,
) -> int:
    """Compile kernel ``module.name`` to a cubin for ``sm_<capability>`` (no GPU needed: ptxas ships with
    triton); returns the cubin size. Run it in a process that never interpreted (the interpreter
    patches triton.language in place)."""
    import importlib

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = getattr(importlib.import_module(module), name).fn
    consts = {
        k: tl.dtype(v.removeprefix("tl.dtype:")) if isinstance(v, str) and v.startswith("tl.dtype:") else v
        for k, v in constexprs.items()
    }
    source = ASTSource(fn=JITFunction(fn), signature=signature, constexprs=consts)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    return len(compiled.asm["cubin"])


_TRITON_DTYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int32: "i32",
    torch.int64: "i64",
}


@contextlib.contextmanager
def _interpreted_stdlib() -> Iterator[None]:
    """Run triton.language's own ``@jit`` helpers (``tl.sum``, ``tl.sigmoid``...) interpreted.

    They are compiled-mode objects when triton was imported before ``TRITON_INTERPRET=1`` was set
    (e.g. by another test), and the interpreter cannot call those; swap them for the launch.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    swapped: list[tuple[object, str, object]] = []
    owners = [m for n, m in list(sys.modules.items()) if n.startswith("triton.language") and m is not None]
    for owner in [*owners, tl.tensor]:
        for name, value in list(vars(owner).items()):
            if isinstance(value, JITFunction):
                if id(value) not in _INTERPRETED:  # by id: hashing a JITFunction parses its source
                    _INTERPRETED[id(value)] = (value, InterpretedFunction(value.fn))
                swapped.append((owner, name, value))
                setattr(owner, name, _INTERPRETED[id(value)][1])
    try:
        yield
    finally:
        for owner, name, value in swapped:
            setattr(owner, name, value)


_INTERPRETED: dict[int, tuple[object, object]] = {}


def kernel(fn: Callable[..., None]) -> Kernel:
    """Decorator: mark ``fn`` as a Triton kernel (see the module docstring)."""
    return Kernel(fn)


def cdiv(a: int, b: int) -> int:
    """Ceiling division: the number of ``b``-sized blocks that cover ``a``."""
    return -(-a // b)


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
