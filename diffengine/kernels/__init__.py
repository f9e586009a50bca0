"""Hot-path ops behind one seam: a Triton kernel where it can run, plain PyTorch everywhere else.

The model, the loss and the samplers call only the functions exported here. Each op lives in its own
module with the Triton kernel(s), the launcher, the ``autograd.Function`` and the PyTorch reference
(which is also the fallback). ``use_triton(*tensors)`` is the one predicate that decides.

Backend choice: ``DIFFENGINE_KERNELS`` = ``auto`` (default) | ``torch`` | ``triton``, or
``set_backend()``. A forced ``triton`` that cannot run raises ``BackendUnavailableError``; ``auto``
falls back silently. Attention additionally prefers SDPA under ``auto`` unless the card is known to
run the Triton kernel faster (``DIFFENGINE_ATTENTION`` = ``auto`` | ``sdpa`` | ``triton``).
Tests run the kernels on the CPU with ``TRITON_INTERPRET=1`` and a forced ``triton`` backend.
"""

from __future__ import annotations

from diffengine.kernels.attention import attention
from diffengine.kernels.backend import (
    BackendUnavailableError,
    get_backend,
    set_backend,
    triton_available,
    use_triton,
)
from diffengine.kernels.cuda_graph import make_sampler, sampling_loop
from diffengine.kernels.group_norm import group_norm_silu
from diffengine.kernels.precond_loss import noise_input, precond_loss
from diffengine.kernels.sampler_steps import dpmpp2m_step, euler_step, heun_correct

__all__ = [
    "BackendUnavailableError",
    "attention",
    "dpmpp2m_step",
    "euler_step",
    "get_backend",
    "group_norm_silu",
    "heun_correct",
    "make_sampler",
    "noise_input",
    "precond_loss",
    "sampling_loop",
    "set_backend",
    "triton_available",
    "use_triton",
]
