"""Training loss: λ(σ)·‖D(y + σ·n; σ) − y‖² averaged over pixels (EDM eq. 2 with the weights of the
chosen formulation), with the last step (preconditioned output, error, weight) in
``kernels.precond_loss`` so the Triton backend can fuse it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffengine import kernels
from diffengine.precond import Denoiser, as_sigma_batch


@dataclass(frozen=True)
class LossOutput:
    """``loss``: scalar mean over the batch; ``per_sample``: (B,) weighted losses; ``sigma``: (B,)."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    sigma: torch.Tensor


def diffusion_loss(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    sigma: torch.Tensor | float | None = None,
    noise: torch.Tensor | None = None,
) -> LossOutput:
    """Loss of ``denoiser`` on clean images ``x`` (B, C, H, W) in [-1, 1].

    σ defaults to the formulation's training distribution and the noise to standard normal draws, both
    from ``generator`` when given (so a seeded run is reproducible).
    """
    batch = x.shape[0]
    if sigma is None:
        sigma = denoiser.formulation.sample_sigma(batch, generator, x.device)
    sigma = as_sigma_batch(sigma, batch, x.device)
    if noise is None:
        gen_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=gen_device).to(x.device, x.dtype)
    elif noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x shape {tuple(x.shape)}")
    x_noisy = x + sigma.view((-1,) + (1,) * (x.ndim - 1)).to(x.dtype) * noise
    net_out, c_skip, c_out = denoiser.net_output(x_noisy, sigma)
    weight = denoiser.formulation.loss_weight(sigma)
    per_sample = kernels.precond_loss(net_out, x_noisy.float(), x.float(), c_skip, c_out, weight)
    return LossOutput(loss=per_sample.mean(), per_sample=per_sample, sigma=sigma)
