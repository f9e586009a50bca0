"""PyTorch reference ops (the fallback). The kernels helper replaces these re-exports with
dispatching versions from one-file-per-op modules; signatures here are the contract."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    eps: float = 1e-5,
    silu: bool = True,
) -> torch.Tensor:
    """SiLU(GroupNorm(x) * (1 + scale) + shift). x: (B, C, H, W); scale, shift: (B, C) or None."""
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if scale is not None:
        y = y * (1 + scale[:, :, None, None])
    if shift is not None:
        y = y + shift[:, :, None, None]
    return F.silu(y) if silu else y


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax(q kᵀ / sqrt(d)) v. q, k, v: (B, heads, N, D)."""
    return F.scaled_dot_product_attention(q, k, v)


def precond_loss(
    net_out: torch.Tensor,
    x_noisy: torch.Tensor,
    x_clean: torch.Tensor,
    c_skip: torch.Tensor,
    c_out: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """Per-sample weight · mean((c_skip·x_noisy + c_out·F − x)²). Coefficients: (B,). Returns (B,)."""
    shape = (-1,) + (1,) * (x_clean.ndim - 1)
    denoised = c_skip.view(shape) * x_noisy + c_out.view(shape) * net_out
    return weight * (denoised - x_clean).square().flatten(1).mean(1)


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x + (sigma_next − sigma) · (x − denoised) / sigma (EDM eq. 5 Euler step)."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def heun_correct(
    x: torch.Tensor,
    x_next: torch.Tensor,
    denoised: torch.Tensor,
    denoised_next: torch.Tensor,
    sigma: float,
    sigma_next: float,
) -> torch.Tensor:
    """Heun's second-order correction (EDM Algorithm 1, lines 9–11), from x at sigma."""
    d = (x - denoised) / sigma
    d_next = (x_next - denoised_next) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (d + d_next)


def dpmpp2m_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    old_denoised: torch.Tensor | None,
    sigma: float,
    sigma_next: float,
    sigma_prev: float | None,
) -> torch.Tensor:
    """One DPM-Solver++(2M) step in the σ parametrisation (Lu et al. 2022, k-diffusion form)."""
    t, t_next = -torch.log(torch.tensor(sigma)), -torch.log(torch.tensor(sigma_next))
    h = float(t_next - t)
    if old_denoised is None or sigma_prev is None or sigma_next == 0:
        d = denoised
    else:
        h_last = float(t - (-torch.log(torch.tensor(sigma_prev))))
        r = h_last / h
        d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    return (sigma_next / sigma) * x - torch.expm1(torch.tensor(-h)).item() * d
