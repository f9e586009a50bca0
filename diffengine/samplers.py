"""Samplers: stateless functions with one signature, k-diffusion style.

``sample_x(model, x, sigmas, *, generator=None, callback=None) -> x`` where ``model(x, sigma)`` returns
the denoised estimate D(x; σ) for ``sigma`` of shape (B,), ``x`` starts as ``noise · sigmas[0]`` and
``sigmas`` is a decreasing schedule ending in 0 (see :mod:`diffengine.schedules`). Samplers only ever see
D, so each works with every formulation. ``callback`` gets a dict (i, x, sigma, sigma_next, denoised)
after every step. The Euler, Heun and DPM-Solver++(2M) update rules live in
:mod:`diffengine.kernels.cuda_graph` (which also runs them as a CUDA graph), their arithmetic in the fused
step ops of :mod:`diffengine.kernels`; this module adds σ checks and the stochastic samplers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

import torch

from diffengine import kernels
from diffengine.kernels.cuda_graph import (
    Callback,
    Denoiser,
    Step,
    denoise,
    dpmpp2m_update,
    euler_update,
    heun_update,
    run_steps,
    schedule_steps,
)


class DenoiseFn(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def _steps(sigmas: torch.Tensor) -> list[Step]:
    """The schedule's steps with σ as floats, after checking it decreases strictly to a value >= 0."""
    values = [float(s) for s in sigmas]
    if len(values) < 2:
        raise ValueError("sigmas needs at least two values (one step)")
    if any(b >= a for a, b in itertools.pairwise(values)) or values[-1] < 0:
        raise ValueError(f"sigmas must decrease strictly to a value >= 0, got {values[:3]}…{values[-2:]}")
    return schedule_steps(values, values)


@torch.no_grad()
def sample_euler(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """First-order Euler on the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (EDM eq. 4)."""
    return run_steps(euler_update, model, x, _steps(sigmas), callback)


@torch.no_grad()
def sample_heun(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun): second order except the final step to σ = 0 (2n − 1 NFE)."""
    return run_steps(heun_update, model, x, _steps(sigmas), callback)


@torch.no_grad()
def sample_dpmpp_2m(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): multistep second order, one NFE per step."""
    return run_steps(dpmpp2m_update, model, x, _steps(sigmas), callback)


def _ancestral_split(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) with σ_down² + σ_up² = σ_next² and σ_up = η·(the DDPM posterior std)."""
    if s_next == 0:
        return 0.0, 0.0
    up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
    return (s_next**2 - up**2) ** 0.5, up


@torch.no_grad()
def sample_euler_ancestral(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler: a deterministic Euler step to σ_down, then fresh noise of std σ_up.

    With η = 1 the step draws exactly from the DDPM posterior q(x_next | x, y = D(x; σ)) (mean
    D + σ_next²/σ²·(x − D), variance σ_next²(σ² − σ_next²)/σ²); η = 0 is plain Euler.
    """

    def update(
        model: Denoiser, x: torch.Tensor, step: Step, old: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = denoise(model, x, step.sigma)
        down, up = _ancestral_split(float(step.sigma), float(step.sigma_next), eta)
        x = kernels.euler_step(x, d, step.sigma, down)
        if up > 0:
            gen_device = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=gen_device).to(x.device, x.dtype)
            x = x + up * noise
        return x, d

    return run_steps(update, model, x, _steps(sigmas), callback)


@torch.no_grad()
def sample_ddim(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021). In the σ parametrisation deterministic DDIM (η = 0) *is* the Euler step
    (Karras et al. 2022, Sec. 3): x_next = D + σ_next/σ·(x − D). η > 0 adds DDIM's stochasticity, which
    is the ancestral step with that η. Pair it with the ``vp`` schedule for DDIM's timestep spacing."""
    if eta == 0:
        return sample_euler(model, x, sigmas, generator=generator, callback=callback)
    return sample_euler_ancestral(model, x, sigmas, generator=generator, callback=callback, eta=eta)


@torch.no_grad()
def sample_ddpm(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020) with the posterior variance β̃: with ``vp_discrete_sigmas(1000)``
    this is the original 1000-step sampler. A VP Markov step is a VE increment of variance
    σ_t² − σ_{t−1}², so the posterior is the η = 1 ancestral step."""
    return sample_euler_ancestral(model, x, sigmas, generator=generator, callback=callback, eta=1.0)


SamplerFn = Callable[..., torch.Tensor]

SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp2m": sample_dpmpp_2m,
    "ddim": sample_ddim,
    "euler_ancestral": sample_euler_ancestral,
    "ddpm": sample_ddpm,
}


def get_sampler(name: str) -> SamplerFn:
    """Sampler function by name; ``KeyError`` listing the known names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise KeyError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def nfe(sampler_name: str, steps: int) -> int:
    """Network evaluations for ``steps`` steps (Heun: 2·steps − 1, the rest: steps)."""
    get_sampler(sampler_name)
    return 2 * steps - 1 if sampler_name == "heun" else steps
