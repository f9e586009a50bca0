"""The PyTorch reference ops (also the fallback), under the seam's public names.

Each lives beside its Triton kernel in its own module; this module gathers them for callers and tests
that want the reference regardless of the backend. Signatures are the contract of the public ops.
"""

from __future__ import annotations

from diffengine.kernels.attention import attention_reference as attention
from diffengine.kernels.group_norm import group_norm_silu_reference as group_norm_silu
from diffengine.kernels.precond_loss import precond_loss_reference as precond_loss
from diffengine.kernels.sampler_steps import dpmpp2m_step_reference as dpmpp2m_step
from diffengine.kernels.sampler_steps import euler_step_reference as euler_step
from diffengine.kernels.sampler_steps import heun_correct_reference as heun_correct
from diffengine.kernels.sampler_steps import weighted_sum_reference as weighted_sum

__all__ = [
    "attention",
    "dpmpp2m_step",
    "euler_step",
    "group_norm_silu",
    "heun_correct",
    "precond_loss",
    "weighted_sum",
]
