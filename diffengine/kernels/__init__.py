"""Hot-path ops behind one seam: a Triton kernel where it can run, plain PyTorch everywhere else.

The model, the loss and the samplers call only the functions exported here. Each op lives in its own
module with the Triton kernel(s), the launcher, the ``autograd.Function`` and the PyTorch reference
(which is also the fallback). ``use_triton(*tensors)`` is the one predicate that decides.

Backend choice: ``DIFFENGINE_KERNELS`` = ``auto`` (default) | ``torch`` | ``triton``, or
``set_backend()``. A forced ``triton`` that cannot run raises ``BackendUnavailableError``; ``auto``
falls back silently.
"""

from __future__ import annotations

from diffengine.kernels.backend import (
    BackendUnavailableError,
    get_backend,
    set_backend,
    triton_available,
    use_triton,
)
from diffengine.kernels.reference import (
    attention,
    dpmpp2m_step,
    euler_step,
    group_norm_silu,
    heun_correct,
    precond_loss,
)

__all__ = [
    "BackendUnavailableError",
    "attention",
    "dpmpp2m_step",
    "euler_step",
    "get_backend",
    "group_norm_silu",
    "heun_correct",
    "precond_loss",
    "set_backend",
    "triton_available",
    "use_triton",
]
