"""Samplers: stateless functions with one signature, k-diffusion style.

``sample_x(model, x, sigmas, *, generator=None, callback=None) -> x`` where ``model(x, sigma)`` returns
the denoised estimate D(x; σ) for ``sigma`` of shape (B,), ``x`` starts as ``noise · sigmas[0]`` and
``sigmas`` is a decreasing schedule ending in 0 (see :mod:`diffengine.schedules`). Samplers only ever see
D, so each works with every formulation. ``callback`` gets a dict (i, x, sigma, sigma_next, denoised)
after every step. The update arithmetic lives in :mod:`diffengine.kernels` (fused on GPUs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Protocol

import torch

from diffengine import kernels


class DenoiseFn(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


Callback = Callable[[dict[str, Any]], None]


def _denoise(model: DenoiseFn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return model(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)).to(x.dtype)


def _report(
    callback: Callback | None, i: int, x: torch.Tensor, s: float, s_next: float, d: torch.Tensor
) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": d})


def _pairs(sigmas: torch.Tensor) -> list[tuple[float, float]]:
    values = [float(s) for s in sigmas]
    if len(values) < 2:
        raise ValueError("sigmas needs at least two values (one step)")
    if any(b >= a for a, b in itertools.pairwise(values)) or values[-1] < 0:
        raise ValueError(f"sigmas must decrease strictly to a value >= 0, got {values[:3]}…{values[-2:]}")
    return list(itertools.pairwise(values))


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
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        d = _denoise(model, x, s)
        x = kernels.euler_step(x, d, s, s_next)
        _report(callback, i, x, s, s_next, d)
    return x


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
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        d = _denoise(model, x, s)
        x_next = kernels.euler_step(x, d, s, s_next)
        if s_next > 0:
            x_next = kernels.heun_correct(x, x_next, d, _denoise(model, x_next, s_next), s, s_next)
        x = x_next
        _report(callback, i, x, s, s_next, d)
    return x


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
    old_d: torch.Tensor | None = None
    s_prev: float | None = None
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        d = _denoise(model, x, s)
        x = kernels.dpmpp2m_step(x, d, old_d, s, s_next, s_prev)
        _report(callback, i, x, s, s_next, d)
        old_d, s_prev = d, s
    return x


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
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        d = _denoise(model, x, s)
        down, up = _ancestral_split(s, s_next, eta)
        x = kernels.euler_step(x, d, s, down)
        if up > 0:
            gen_device = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=gen_device).to(x.device, x.dtype)
            x = x + up * noise
        _report(callback, i, x, s, s_next, d)
    return x


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
