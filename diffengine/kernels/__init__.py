"""Hot-path ops behind one seam: a Triton kernel where it can run, plain PyTorch everywhere else.

The model and the samplers call only the functions exported here. Each op lives in its own module
with the Triton kernel(s), the launcher, the ``autograd.Function`` and the PyTorch reference (which is
also the fallback). ``use_triton`` is the one predicate that decides, and ``backend.AUTO`` the one
table it reads: per op, when the kernel runs under ``auto`` (measured on an H200: GroupNorm only
without gradients, attention and the fused loss never, the sampler steps without gradients).

Backend choice: ``DIFFENGINE_KERNELS`` = ``auto`` (default) | ``torch`` | ``triton``, or
``set_backend()``. A forced ``triton`` that cannot run raises ``BackendUnavailableError``; ``auto``
falls back silently. Tests run the kernels on the CPU with ``TRITON_INTERPRET=1`` and a forced
``triton`` backend. ``capture`` records a whole sampling loop as one CUDA graph.
"""

from __future__ import annotations

from diffengine.kernels.attention import attention
from diffengine.kernels.backend import (
    AUTO,
    BackendUnavailableError,
    get_backend,
    set_backend,
    triton_available,
    use_triton,
)
from diffengine.kernels.cuda_graph import capture
from diffengine.kernels.group_norm import group_norm_silu
from diffengine.kernels.precond_loss import precond_loss
from diffengine.kernels.sampler_steps import dpmpp2m_step, euler_step, heun_correct, weighted_sum

__all__ = [
    "AUTO",
    "BackendUnavailableError",
    "attention",
    "capture",
    "dpmpp2m_step",
    "euler_step",
    "get_backend",
    "group_norm_silu",
    "heun_correct",
    "precond_loss",
    "set_backend",
    "triton_available",
    "use_triton",
    "weighted_sum",
]
