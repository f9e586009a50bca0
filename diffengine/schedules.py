"""Noise-level schedules: each returns ``n + 1`` decreasing σ values (float64) ending in 0, so a sampler
takes ``n`` steps from ``sigmas[0]`` to a clean image."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffengine.precond import Formulation, VPBase


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0 … n−1, then 0."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """σ evenly spaced in log σ from σ_max to σ_min, then 0."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    log_hi, log_lo = math.log(sigma_max), math.log(sigma_min)
    return _append_zero((log_hi + ramp * (log_lo - log_hi)).exp())


def vp_discrete_sigmas(n: int, formulation: VPBase | None = None) -> torch.Tensor:
    """σ of ``n`` evenly spaced DDPM timesteps from T−1 down to 0 (all T for ``n = T``), then 0.

    With ``n = 1000`` and the ancestral DDPM sampler this is the original 1000-step DDPM baseline;
    with DDIM it is DDIM's uniform timestep spacing.
    """
    from diffengine.precond import VPEpsilon

    vp = formulation if formulation is not None else VPEpsilon()
    if not 1 <= n <= vp.num_timesteps:
        raise ValueError(f"number of steps must be in 1 … {vp.num_timesteps}, got {n}")
    t = torch.linspace(vp.num_timesteps - 1, 0, n, dtype=torch.float64).round().long()
    return _append_zero(vp.sigmas[t].double())


SCHEDULES: dict[str, Callable[[int, Formulation], torch.Tensor]] = {
    "karras": lambda n, f: karras_sigmas(n, f.sigma_min, f.sigma_max),
    "exponential": lambda n, f: exponential_sigmas(n, f.sigma_min, f.sigma_max),
    "vp": lambda n, f: vp_discrete_sigmas(n, f if isinstance(f, VPBase) else None),
}


def get_sigmas(name: str, n: int, formulation: Formulation, sigma_max: float | None = None) -> torch.Tensor:
    """Schedule ``name`` (``karras``, ``exponential``, ``vp``) with ``n`` steps over the formulation's
    σ range (``vp`` uses the DDPM timestep table: the formulation's own if it is a VP one).

    ``sigma_max``: start from this σ instead of the formulation's (SDEdit-style partial sampling from a
    noised image; ``karras`` and ``exponential`` only)."""
    if name not in SCHEDULES:
        raise KeyError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if sigma_max is None:
        return SCHEDULES[name](n, formulation)
    if name == "vp":
        raise ValueError("schedule 'vp' is a fixed timestep table: it cannot start from another sigma_max")
    top = min(float(sigma_max), formulation.sigma_max)
    if not top > formulation.sigma_min:
        raise ValueError(
            f"sigma_max must exceed the formulation's sigma_min {formulation.sigma_min}, got {sigma_max}"
        )
    if name == "karras":
        return karras_sigmas(n, formulation.sigma_min, top)
    return exponential_sigmas(n, formulation.sigma_min, top)
