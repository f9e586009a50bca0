"""Training loss (EDM eq. 2 with the weights of the chosen formulation):

    x = y + σ·n,   D = denoiser(x, σ),   loss = λ(σ)·‖D − y‖²  (mean over pixels, then over the batch)

with σ from the formulation's training distribution and n ~ N(0, I). Plain PyTorch:
``backend.AUTO["precond_loss"]`` keeps training off the fused kernel (0.98x eager on an H200).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffengine.precond import Denoiser, as_sigma_batch


@dataclass(frozen=True)
class LossOutput:
    """``loss``: scalar mean over the batch; ``per_sample``: (B,) weighted losses; ``sigma``: (B,)."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    sigma: torch.Tensor


def diffusion_loss(
    denoiser: Denoiser,
    y: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    sigma: torch.Tensor | float | None = None,
    noise: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
) -> LossOutput:
    """Loss of ``denoiser`` on clean images ``y`` (B, C, H, W) in [-1, 1].

    σ defaults to the formulation's training distribution and the noise to standard normal draws, both
    from ``generator`` when given (so a seeded run is reproducible). ``cond``: extra network input of a
    conditioned model (inpainting: ``diffengine.inpaint.inpaint_cond(y, mask)``), passed to the
    denoiser unchanged; None (the default) calls it exactly as before.
    """
    batch = y.shape[0]
    if sigma is None:
        sigma = denoiser.formulation.sample_sigma(batch, generator, y.device)
    sigma = as_sigma_batch(sigma, batch, y.device)
    if noise is None:
        gen_device = generator.device if generator is not None else y.device
        noise = torch.randn(y.shape, generator=generator, device=gen_device).to(y.device, y.dtype)
    elif noise.shape != y.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x shape {tuple(y.shape)}")
    x = y + sigma.view((-1,) + (1,) * (y.ndim - 1)).to(y.dtype) * noise
    denoised = denoiser(x, sigma) if cond is None else denoiser(x, sigma, cond)
    weight = denoiser.formulation.loss_weight(sigma)
    per_sample = weight * (denoised - y.float()).square().flatten(1).mean(1)
    return LossOutput(loss=per_sample.mean(), per_sample=per_sample, sigma=sigma)
