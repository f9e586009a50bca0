"""Samplers: stateless functions with one signature, k-diffusion style.

``sample_x(model, x, sigmas, *, generator=None, callback=None) -> x`` where ``model`` is a
:class:`~diffengine.precond.DenoiseFn` (``model(x, sigma)`` returns D(x; σ) for ``sigma`` of shape
(B,)), ``x`` starts as ``noise · sigmas[0]`` and ``sigmas`` is a decreasing schedule ending in 0 (see
:mod:`diffengine.schedules`). Samplers only ever see D, so each works with every formulation.
``callback`` gets a dict (i, x, sigma, sigma_next, denoised) after every step.

Each ``sample_*`` spells out its update as its paper writes it, in the σ parametrisation of EDM
(x = y + σ·n, probability-flow ODE dx/dσ = (x − D(x; σ))/σ), over the fused step ops of
:mod:`diffengine.kernels` (``euler_step``, ``heun_correct``, ``dpmpp2m_step``, ``weighted_sum``). σ are
host floats throughout (read from ``sigmas`` once), so a deterministic sampler has no data-dependent
control flow and ``kernels.cuda_graph.capture`` can record its whole loop as one CUDA graph.

Network evaluations (:func:`nfe`): Heun and the EDM stochastic sampler 2·steps − 1 (no correction on
the last step, to σ = 0), every other sampler one per step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffengine import kernels as K
from diffengine.precond import DenoiseFn

Callback = Callable[[dict[str, Any]], None]
SamplerFn = Callable[..., torch.Tensor]

__all__ = [
    "DETERMINISTIC",
    "SAMPLERS",
    "Callback",
    "DenoiseFn",
    "SamplerFn",
    "adams_bashforth",
    "denoise",
    "get_sampler",
    "nfe",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_edm_stochastic",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_ipndm",
    "sample_ipndm_v",
    "schedule",
]


# --- the pieces every sampler shares -------------------------------------------------------------


def schedule(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """The σ schedule as host floats (one device transfer), after checking it decreases strictly to a
    value >= 0."""
    values = sigmas.tolist() if isinstance(sigmas, torch.Tensor) else [float(s) for s in sigmas]
    if len(values) < 2:
        raise ValueError("sigmas needs at least two values (one step)")
    if any(b >= a for a, b in itertools.pairwise(values)) or values[-1] < 0:
        raise ValueError(f"sigmas must decrease strictly to a value >= 0, got {values[:3]}…{values[-2:]}")
    return values


def denoise(model: DenoiseFn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """D(x; σ), σ broadcast to the batch here and nowhere else: a (B,) tensor on x's device (float32,
    float64 for float64 x); the result in x's dtype."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return model(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=dtype)).to(x.dtype)


def _report(
    callback: Callback | None,
    i: int,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    denoised: torch.Tensor,
) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (reproducible across x's)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device).to(x.device, x.dtype)


def adams_bashforth(nodes: Sequence[float], h: float) -> list[float]:
    """Adams–Bashforth weights: ∫₀ʰ p(u) du = h·Σⱼ cⱼ·p(uⱼ) for every polynomial p of degree < len(nodes).

    ``nodes`` are the past points relative to the current one (u₀ = 0, then u₁ < 0 …), h the step.
    Equally spaced nodes (uⱼ = −j·h) give the classic weights, e.g. (55, −59, 37, −9)/24 for four.
    """
    weights = []
    for j, uj in enumerate(nodes):
        poly = [1.0]  # the Lagrange basis polynomial L_j, lowest degree first
        for m, um in enumerate(nodes):
            if m != j:  # poly ← poly · (u − u_m)/(u_j − u_m)
                shifted = [0.0, *poly]
                scaled = [-um * a for a in poly] + [0.0]
                poly = [(a + b) / (uj - um) for a, b in zip(shifted, scaled, strict=True)]
        weights.append(sum(a * h ** (k + 1) / (k + 1) for k, a in enumerate(poly)) / h)
    return weights


# --- deterministic ODE solvers -------------------------------------------------------------------


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
    s = schedule(sigmas)
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(s)):
        denoised = denoise(model, x, sigma)
        x = K.euler_step(x, denoised, sigma, sigma_next)  # x + (σ_next − σ)·(x − D)/σ
        _report(callback, i, x, sigma, sigma_next, denoised)
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
    s = schedule(sigmas)
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(s)):
        denoised = denoise(model, x, sigma)
        x_next = K.euler_step(x, denoised, sigma, sigma_next)  # Euler predictor
        if sigma_next > 0:  # trapezoidal corrector: x + (σ_next − σ)·(d + d_next)/2
            denoised_next = denoise(model, x_next, sigma_next)
            x_next = K.heun_correct(x, x_next, denoised, denoised_next, sigma, sigma_next)
        x = x_next
        _report(callback, i, x, sigma, sigma_next, denoised)
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
    """DPM-Solver++(2M) (Lu et al. 2022): multistep second order from the previous denoised, one NFE per
    step; first order on the first step and on the last (to σ = 0)."""
    s = schedule(sigmas)
    old: torch.Tensor | None = None
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(s)):
        denoised = denoise(model, x, sigma)
        x = K.dpmpp2m_step(x, denoised, old, sigma, sigma_next, s[i - 1] if i > 0 else None)
        old = denoised
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_3m(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, multistep, data prediction), one NFE per step.

    In log-σ time λ = −log σ the exact solution from σ to σ_next (h = λ_next − λ) is
    x_next = e^{−h}·x + ∫₀ʰ e^{u−h} D(λ + u) du. Expanding D to second order,
    x_next = e^{−h}·x + φ₁·D + φ₂·D′ + φ₃·D″ with φ₁ = 1 − e^{−h}, φ₂ = h − φ₁, φ₃ = h²/2 − φ₂,
    and D′, D″ from the quadratic through the last three denoised values (divided differences in λ).
    Warm start: first order on step 1, second order on step 2. The last step (σ_next = 0, h = ∞) is
    x = D, as for every exponential integrator.
    """
    s = schedule(sigmas)
    history: list[tuple[float, torch.Tensor]] = []  # (λ, D) of the previous steps, newest first
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(s)):
        denoised = denoise(model, x, sigma)
        lam = -math.log(sigma)

        if sigma_next == 0:
            x = denoised
        else:
            h = -math.log(sigma_next) - lam
            phi1 = -math.expm1(-h)
            phi2 = h - phi1
            phi3 = h * h / 2 - phi2
            weights, terms = [math.exp(-h), phi1], [x, denoised]
            if len(history) == 1:  # D′ ≈ δ₁ = (D − D₁)/h₁
                lam1, d1 = history[0]
                h1 = lam - lam1
                weights += [phi2 / h1, -phi2 / h1]
                terms += [denoised, d1]
            elif len(history) == 2:  # D′ ≈ δ₁ + h₁·δ₂, D″ ≈ 2δ₂, δ₂ = (δ₁ − (D₁ − D₂)/h₂)/(h₁ + h₂)
                (lam1, d1), (lam2, d2) = history
                h1, h2 = lam - lam1, lam1 - lam2
                q = (phi2 * h1 + 2 * phi3) / (h1 + h2)  # the weight of δ₂
                weights += [(phi2 + q) / h1, -(phi2 + q) / h1 - q / h2, q / h2]
                terms += [denoised, d1, d2]
            x = K.weighted_sum(weights, terms)
        history = [(lam, denoised), *history][:2]
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def _ipndm(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None,
    max_order: int,
    variable: bool,
) -> torch.Tensor:
    if not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be 1 to 4, got {max_order}")
    s = schedule(sigmas)
    derivatives: list[torch.Tensor] = []  # d = (x − D)/σ at the previous points, newest first
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(s)):
        denoised = denoise(model, x, sigma)
        d = K.weighted_sum((1 / sigma, -1 / sigma), (x, denoised))
        derivatives = [d, *derivatives][:max_order]

        h = sigma_next - sigma
        # Past points relative to σ: their true offsets (variable step) or j·(−h) (classic iPNDM).
        nodes = [s[i - j] - sigma if variable else -j * h for j in range(len(derivatives))]
        c = adams_bashforth(nodes, h)
        x = K.weighted_sum((1.0, *(h * cj for cj in c)), (x, *derivatives))  # x + h·Σ cⱼ·dⱼ
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_ipndm(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    max_order: int = 4,
) -> torch.Tensor:
    """iPNDM (Zhang & Chen 2023, DEIS; EDM's σ parametrisation), one NFE per step: Adams–Bashforth on
    the ODE derivative d = (x − D)/σ, x_next = x + (σ_next − σ)·(55d − 59d₁ + 37d₂ − 9d₃)/24, with the
    classic (equal-step) weights; the first steps warm up at orders 1, 2, 3 instead of PNDM's
    Runge–Kutta start."""
    return _ipndm(model, x, sigmas, callback, max_order, variable=False)


@torch.no_grad()
def sample_ipndm_v(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    max_order: int = 4,
) -> torch.Tensor:
    """iPNDM with variable-step Adams–Bashforth weights: the integral over [σ, σ_next] of the polynomial
    through the last ``max_order`` derivatives at their actual σ (a true order-4 method on any grid)."""
    return _ipndm(model, x, sigmas, callback, max_order, variable=True)


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


# --- stochastic samplers -------------------------------------------------------------------------


@torch.no_grad()
def sample_edm_stochastic(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    s_churn: float = 40.0,
    s_tmin: float = 0.05,
    s_tmax: float = 50.0,
    s_noise: float = 1.003,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), 2n − 1 NFE.

    Each step with S_tmin ≤ σ ≤ S_tmax first raises the noise level to σ̂ = σ(1 + γ),
    γ = min(S_churn/n, √2 − 1), adding fresh noise of std S_noise·√(σ̂² − σ²) ("churn"), then takes
    the Heun step from σ̂ to σ_next. The defaults are the paper's ImageNet-64 settings; S_churn = 0 is
    Algorithm 1 (``sample_heun``).
    """
    s = schedule(sigmas)
    n = len(s) - 1
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(s)):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # x̂ = x + √(σ̂² − σ²)·ε, ε ~ N(0, S_noise² I)
            eps = _randn_like(x, generator)
            x = K.weighted_sum((1.0, s_noise * math.sqrt(sigma_hat**2 - sigma**2)), (x, eps))
        denoised = denoise(model, x, sigma_hat)
        x_next = K.euler_step(x, denoised, sigma_hat, sigma_next)
        if sigma_next > 0:
            denoised_next = denoise(model, x_next, sigma_next)
            x_next = K.heun_correct(x, x_next, denoised, denoised_next, sigma_hat, sigma_next)
        x = x_next
        _report(callback, i, x, sigma, sigma_next, denoised)
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
    s = schedule(sigmas)
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(s)):
        denoised = denoise(model, x, sigma)
        down, up = _ancestral_split(sigma, sigma_next, eta)
        x = K.euler_step(x, denoised, sigma, down)
        if up > 0:
            x = K.weighted_sum((1.0, up), (x, _randn_like(x, generator)))
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


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


# --- the registry --------------------------------------------------------------------------------

SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp2m": sample_dpmpp_2m,
    "dpmpp3m": sample_dpmpp_3m,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "ddim": sample_ddim,
    "edm_stochastic": sample_edm_stochastic,
    "euler_ancestral": sample_euler_ancestral,
    "ddpm": sample_ddpm,
}
# Samplers that draw no noise: the same input gives the same output, and ``cuda_graph.capture`` can
# record them.
DETERMINISTIC: frozenset[str] = frozenset({"euler", "heun", "dpmpp2m", "dpmpp3m", "ipndm", "ipndm_v", "ddim"})
_TWO_NFE_PER_STEP = frozenset({"heun", "edm_stochastic"})  # Heun-type: a corrector on all but the last step


def get_sampler(name: str) -> SamplerFn:
    """Sampler function by name; ``KeyError`` listing the known names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise KeyError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def nfe(sampler_name: str, steps: int) -> int:
    """Network evaluations for ``steps`` steps (Heun, EDM stochastic: 2·steps − 1; the rest: steps)."""
    get_sampler(sampler_name)
    return 2 * steps - 1 if sampler_name in _TWO_NFE_PER_STEP else steps
