"""The backend policy: may this call run a Triton kernel? One table, one predicate.

``DIFFENGINE_KERNELS`` (or ``set_backend``) picks ``torch`` (never Triton), ``triton`` (always; an input
the kernel cannot serve raises :class:`BackendUnavailableError`) or ``auto`` (the default). Under
``auto`` an op runs its kernel only where it can run (Triton installed, a CUDA card of compute
capability >= 7.0, a supported dtype, not the CPU interpreter) *and* :data:`AUTO` allows it for the
call. :data:`AUTO` is the whole policy; ops carry no vetoes or environment variables of their own.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["auto", "torch", "triton"]
# When an op's kernel runs under ``auto``: "always", "no_grad" (only for calls that need no gradient:
# sampling, evaluation) or "never" (the PyTorch path wins; the kernel runs only when forced).
Policy = Literal["always", "no_grad", "never"]

# Measured by bench/kernels.py on an H200 (torch 2.11, Triton 3.6).
AUTO: dict[str, Policy] = {
    # forward 2.17x eager, forward + backward 0.93x: the kernel serves sampling, training keeps PyTorch
    "group_norm_silu": "no_grad",
    # 0.37x / 0.48x / 0.59x SDPA at N = 256 / 1024 / 4096 (D = 64, bf16): SDPA (FlashAttention/cuDNN)
    "attention": "never",
    # 0.98x eager: training stays on PyTorch
    "precond_loss": "never",
    # one pass instead of 3-9 elementwise launches; no backward kernel
    "sampler_steps": "no_grad",
}
_override: Backend | None = None
# Triton supports NVIDIA cards from compute capability 7.0 (Volta); a GTX 1060 (6.1) takes PyTorch.
MIN_CAPABILITY = (7, 0)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class BackendUnavailableError(RuntimeError):
    """A forced ``triton`` backend cannot run for these inputs."""


def get_backend() -> Backend:
    if _override is not None:
        return _override
    value = os.environ.get("DIFFENGINE_KERNELS", "auto").lower()
    if value not in ("auto", "torch", "triton"):
        raise ValueError(f"DIFFENGINE_KERNELS must be auto, torch or triton, not {value!r}")
    return value  # type: ignore[return-value]


def set_backend(backend: Backend | None) -> None:
    """Force a backend for this process (``None`` returns to the environment's choice)."""
    global _override
    if backend not in (None, "auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton, not {backend!r}")
    _override = backend


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _cuda_capability(index: int | None) -> tuple[int, int]:
    """A card's compute capability, read once: ``use_triton`` runs on every op call (every sampler step)."""
    return torch.cuda.get_device_capability(index)


def _why_not(tensors: tuple[torch.Tensor, ...]) -> str | None:
    if not triton_available():
        return "triton is not installed"
    for t in tensors:
        if t.dtype not in SUPPORTED_DTYPES:
            return f"dtype {t.dtype} is not supported"
        if t.device.type == "cuda":
            cap = _cuda_capability(t.device.index)
            if cap < MIN_CAPABILITY:
                return f"compute capability {cap[0]}.{cap[1]} is below Triton's minimum 7.0"
        elif not (t.device.type == "cpu" and interpreting()):
            return f"tensor on {t.device.type}, not CUDA"
    return None


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Will autograd record this call (grad mode on and an input requires grad)?"""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def auto_allows(op: str, *tensors: torch.Tensor) -> bool:
    """Does :data:`AUTO` let ``op``'s kernel serve this call?"""
    policy = AUTO[op]
    return policy == "always" or (policy == "no_grad" and not needs_grad(*tensors))


def use_triton(*tensors: torch.Tensor, op: str | None = None, unsupported: str | None = None) -> bool:
    """Decide the backend for one call of ``op`` (a key of :data:`AUTO`); raise if ``triton`` is forced
    but cannot run.

    ``unsupported`` is an op's own reason why its kernel cannot serve this call (a head dim it lacks,
    a gradient it does not compute); it is treated like a device/dtype reason. ``op=None`` asks only
    whether a kernel could run (no policy).
    """
    backend = get_backend()
    if backend == "torch":
        return False
    reason = _why_not(tensors) or unsupported
    if backend == "triton" and reason is not None:
        raise BackendUnavailableError(f"DIFFENGINE_KERNELS=triton but {reason}")
    if backend == "auto" and (interpreting() or (op is not None and not auto_allows(op, *tensors))):
        # Under the interpreter kernels are correct but very slow: only an explicit request uses them.
        return False
    return reason is None
