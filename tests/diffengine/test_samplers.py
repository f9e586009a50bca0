"""Sampler correctness without any training: Gaussian data N(μ, Σ) has a closed-form ideal denoiser

    D(x; σ) = μ + Σ (Σ + σ²I)⁻¹ (x − μ),

and, in the eigenbasis Σ = Q diag(λ) Qᵀ, the probability-flow ODE dx/dσ = (x − D)/σ has the exact
solution y_i(σ) = y_i(σ₀)·√((λ_i + σ²)/(λ_i + σ₀²)) for y = Qᵀ(x − μ). Every sampler driven by D must
reproduce μ and Σ, and the deterministic ones must converge to the exact ODE solution as steps grow.

Tolerances: N = 20 000 samples; the largest eigenvalue is 0.8, so the Monte-Carlo standard error is
≤ 0.0064 for a mean component and ≤ 0.8·√(2/N) ≈ 0.008 for a covariance entry. We allow 0.03 on the
mean and 0.04 on every covariance entry (≥ 4 standard errors plus the 1/σ_max start-up bias ≈ 0.005).
"""

from __future__ import annotations

import inspect
import itertools
import math
from typing import cast

import pytest
import torch

from diffengine.precond import EDM, Denoiser, Formulation, VPBase, VPEpsilon, VPVelocity, make_formulation
from diffengine.samplers import (
    DETERMINISTIC,
    SAMPLERS,
    adams_bashforth,
    get_sampler,
    nfe,
    sample_ddim,
    sample_ddpm,
    sample_edm_stochastic,
    sample_heun,
)
from diffengine.schedules import exponential_sigmas, karras_sigmas, vp_discrete_sigmas

N = 20_000
MEAN_TOL = 0.03
COV_TOL = 0.04
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


class Gaussian:
    """N(μ, Σ) in 3-D with a non-diagonal Σ (eigenvalues 0.8, 0.25, 0.04)."""

    def __init__(self) -> None:
        q, _ = torch.linalg.qr(torch.tensor([[1.0, 0.4, -0.3], [0.2, 1.0, 0.5], [-0.6, 0.1, 1.0]]).double())
        self.q = q
        self.lam = torch.tensor([0.8, 0.25, 0.04], dtype=torch.float64)
        self.mu = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
        self.cov = q @ torch.diag(self.lam) @ q.T

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        y = (x.double() - self.mu) @ self.q  # (B, 3) in the eigenbasis
        y = y * self.lam / (self.lam + sigma.double()[:, None] ** 2)
        return (self.mu + y @ self.q.T).to(x.dtype)

    def exact_ode(self, x0: torch.Tensor, sigma0: float, sigma: float = 0.0) -> torch.Tensor:
        y = (x0.double() - self.mu) @ self.q
        y = y * ((self.lam + sigma**2) / (self.lam + sigma0**2)).sqrt()
        return self.mu + y @ self.q.T


@pytest.fixture(scope="module")
def gauss() -> Gaussian:
    return Gaussian()


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# (sampler, schedule with its number of steps). DDPM runs the original 1000 VP steps (σ_max ≈ 157).
DISTRIBUTION_CASES = {
    "euler": karras_sigmas(100, SIGMA_MIN, SIGMA_MAX),
    "heun": karras_sigmas(40, SIGMA_MIN, SIGMA_MAX),
    "dpmpp2m": karras_sigmas(40, SIGMA_MIN, SIGMA_MAX),
    "dpmpp3m": karras_sigmas(40, SIGMA_MIN, SIGMA_MAX),
    "ipndm": karras_sigmas(40, SIGMA_MIN, SIGMA_MAX),
    "ipndm_v": karras_sigmas(40, SIGMA_MIN, SIGMA_MAX),
    "ddim": vp_discrete_sigmas(100),
    # Churn adds S_noise = 1.003 noise and a Heun step from the raised σ̂: measured 0.044 at 40 steps.
    "edm_stochastic": karras_sigmas(100, SIGMA_MIN, SIGMA_MAX),
    # Ancestral Euler loses λ(σ² − σ_next²)²/(σ²(λ + σ²)) of variance per step (tested below), a
    # first-order bias: it needs many steps (measured max covariance error 0.06 at 100, 0.018 at 300).
    "euler_ancestral": karras_sigmas(400, SIGMA_MIN, SIGMA_MAX),
    "ddpm": vp_discrete_sigmas(1000),
}


def test_every_sampler_has_a_distribution_case() -> None:
    assert set(DISTRIBUTION_CASES) == set(SAMPLERS)


@pytest.mark.parametrize("name", sorted(DISTRIBUTION_CASES))
def test_sampler_reproduces_gaussian(name: str, gauss: Gaussian) -> None:
    sigmas = DISTRIBUTION_CASES[name]
    x = _noise(N) * sigmas[0]
    out = get_sampler(name)(gauss.denoise, x, sigmas, generator=torch.Generator().manual_seed(1))
    assert out.shape == (N, 3) and torch.isfinite(out).all()
    mean_err = (out.mean(0) - gauss.mu).abs().max().item()
    cov_err = (out.T.cov() - gauss.cov).abs().max().item()
    assert mean_err < MEAN_TOL, f"{name}: mean off by {mean_err:.4f}"
    assert cov_err < COV_TOL, f"{name}: covariance off by {cov_err:.4f}"


def _ode_error(name: str, steps: int, gauss: Gaussian, n: int = 2000) -> float:
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    x0 = _noise(n, seed=2) * SIGMA_MAX
    out = get_sampler(name)(gauss.denoise, x0, sigmas)
    return (out - gauss.exact_ode(x0, SIGMA_MAX)).square().mean().sqrt().item()


# (minimum error ratio from 40 to 80 steps, ≈ 2^order asymptotically; RMS error bound at 80 steps).
# Measured: Euler/DDIM ratio 1.99, error 0.020; Heun 4.2, 0.0013; DPM++(2M) 4.4, 0.0013;
# DPM++(3M) 8.6, 1.5e-4; iPNDM 4.4, 4.1e-4 (equal-step weights on a non-uniform grid: second order);
# variable-step iPNDM 12.2, 1.6e-4.
CONVERGENCE = {
    "euler": (1.7, 0.03),
    "ddim": (1.7, 0.03),
    "heun": (3.5, 0.003),
    "dpmpp2m": (3.5, 0.003),
    "dpmpp3m": (6.0, 3e-4),
    "ipndm": (3.5, 1e-3),
    "ipndm_v": (10.0, 3e-4),
}


def test_every_deterministic_sampler_has_a_convergence_case() -> None:
    assert set(CONVERGENCE) == DETERMINISTIC


@pytest.mark.parametrize("name", sorted(CONVERGENCE))
def test_deterministic_samplers_converge_to_exact_ode(name: str, gauss: Gaussian) -> None:
    min_ratio, bound = CONVERGENCE[name]
    errors = [_ode_error(name, steps, gauss) for steps in (10, 20, 40, 80)]
    assert all(b < a for a, b in itertools.pairwise(errors)), f"{name}: errors {errors}"
    assert errors[2] / errors[3] > min_ratio, f"{name}: 40→80 steps ratio {errors[2] / errors[3]:.2f}"
    assert errors[3] < bound, f"{name}: error {errors[3]:.4f} at 80 steps"


@pytest.mark.parametrize("name", ["euler_ancestral", "ddpm"])
def test_stochastic_samplers_converge_in_distribution(name: str, gauss: Gaussian) -> None:
    def cov_error(steps: int) -> float:
        sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
        x = _noise(N, seed=3) * SIGMA_MAX
        out = get_sampler(name)(gauss.denoise, x, sigmas, generator=torch.Generator().manual_seed(4))
        return (out.T.cov() - gauss.cov).abs().max().item()

    errors = [cov_error(steps) for steps in (10, 40, 300)]  # measured ≈ 0.36, 0.15, 0.018
    assert errors[0] > errors[1] > errors[2], f"{name}: covariance errors {errors}"
    assert errors[2] < COV_TOL


def test_ancestral_step_variance_matches_closed_form(gauss: Gaussian) -> None:
    """From the exact marginal N(μ, Σ + σ²I), one η = 1 step to σ_next gives, per eigen-direction, the
    target variance λ + σ_next² minus exactly λ(σ² − σ_next²)² / (σ²(λ + σ²))."""
    sigma, sigma_next = 1.0, 0.6
    y = _noise(200_000, seed=11) * (gauss.lam + sigma**2).sqrt()
    x = gauss.mu + y @ gauss.q.T
    out = get_sampler("euler_ancestral")(
        gauss.denoise, x, torch.tensor([sigma, sigma_next]), generator=torch.Generator().manual_seed(12)
    )
    var = ((out - gauss.mu) @ gauss.q).var(0)
    lam = gauss.lam
    expected = lam + sigma_next**2 - lam * (sigma**2 - sigma_next**2) ** 2 / (sigma**2 * (lam + sigma**2))
    torch.testing.assert_close(var, expected, rtol=0.01, atol=0)  # SE of a variance: √(2/200k) ≈ 0.3 %


def test_heun_is_second_order_at_intermediate_sigma(gauss: Gaussian) -> None:
    """Stopping at σ = 0.5 (no final Euler step), Heun's error to the exact ODE state falls ≈ 4× per
    doubling of steps (measured RMS 4.2e-3, 9.8e-4 at 30, 60 steps)."""
    x0 = _noise(500, seed=5) * SIGMA_MAX

    def rms(steps: int) -> float:
        sigmas = karras_sigmas(steps, 0.5, SIGMA_MAX)[:-1]  # ends at σ = 0.5, not 0
        out = get_sampler("heun")(gauss.denoise, x0, sigmas)
        return (out - gauss.exact_ode(x0, SIGMA_MAX, 0.5)).square().mean().sqrt().item()

    coarse, fine = rms(30), rms(60)
    assert coarse / fine > 3.5 and fine < 2e-3, (coarse, fine)


def test_samplers_work_through_every_formulation(gauss: Gaussian) -> None:
    """A network that outputs the ideal F for each formulation's preconditioning, recovering σ from
    c_noise, gives the ideal denoiser back through ``Denoiser``; DPM++(2M) over that formulation's own
    σ range then reproduces the Gaussian."""
    for name in ("edm", "vp-eps", "vp-v"):
        form = make_formulation(name)

        def net(x_in: torch.Tensor, c_noise: torch.Tensor, form: Formulation = form) -> torch.Tensor:
            assert isinstance(form, EDM | VPBase)
            sigma = (4 * c_noise).exp() if isinstance(form, EDM) else form.t_to_sigma(c_noise).double()
            c_skip, c_out, c_in, _ = form.coefficients(sigma.double())
            x = x_in / c_in[:, None]
            return (gauss.denoise(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

        # A plain function stands in for the network: Denoiser only calls it.
        denoiser = Denoiser(cast(torch.nn.Module, net), form)
        probe = _noise(64, seed=6)
        for sigma in (form.sigma_min * 1.5, 0.7, form.sigma_max / 2):
            d = denoiser(probe * sigma, sigma)
            torch.testing.assert_close(
                d.double(), gauss.denoise(probe * sigma, torch.full((64,), sigma)), atol=2e-4, rtol=1e-4
            )
        sigmas = karras_sigmas(25, form.sigma_min, form.sigma_max)
        out = get_sampler("dpmpp2m")(denoiser, _noise(N, seed=7).float() * float(sigmas[0]), sigmas)
        assert (out.double().mean(0) - gauss.mu).abs().max() < MEAN_TOL, name
        assert (out.double().T.cov() - gauss.cov).abs().max() < COV_TOL, name


def test_ddpm_step_is_the_ddpm_posterior() -> None:
    """One σ-space DDPM step equals Ho et al.'s posterior step x_{t−1} = μ̃(x_t, x̂₀) + √β̃_t·z in VP space."""
    vp = VPEpsilon()
    betas = torch.linspace(vp.beta_start, vp.beta_end, vp.num_timesteps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    t = 500
    x0_hat = torch.randn(8, 3, dtype=torch.float64)
    x_vp = torch.randn(8, 3, dtype=torch.float64)
    sigmas = torch.stack([vp.sigmas[t], vp.sigmas[t - 1]])
    out_ve = sample_ddpm(
        lambda x, s: x0_hat, x_vp / abar[t].sqrt(), sigmas, generator=torch.Generator().manual_seed(0)
    )
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)).double()
    mean = (abar[t - 1].sqrt() * betas[t] / (1 - abar[t])) * x0_hat + (
        (1 - betas[t]).sqrt() * (1 - abar[t - 1]) / (1 - abar[t])
    ) * x_vp
    var = (1 - abar[t - 1]) / (1 - abar[t]) * betas[t]
    torch.testing.assert_close(out_ve * abar[t - 1].sqrt(), mean + var.sqrt() * z, atol=1e-10, rtol=1e-8)


def test_ddim_step_is_the_ddim_update() -> None:
    """Deterministic DDIM (Song et al. eq. 12, η = 0) over a 20-timestep jump equals our σ-space step."""
    vp = VPEpsilon()
    abar = 1 / (1 + vp.sigmas**2)
    t, s = 700, 680
    x_vp = torch.randn(8, 3, dtype=torch.float64)
    x0_hat = torch.randn(8, 3, dtype=torch.float64)
    eps_hat = (x_vp - abar[t].sqrt() * x0_hat) / (1 - abar[t]).sqrt()
    expected = abar[s].sqrt() * x0_hat + (1 - abar[s]).sqrt() * eps_hat
    out_ve = sample_ddim(
        lambda x, sig: x0_hat, x_vp / abar[t].sqrt(), torch.stack([vp.sigmas[t], vp.sigmas[s]])
    )
    torch.testing.assert_close(out_ve * abar[s].sqrt(), expected, atol=1e-10, rtol=1e-8)


def test_samplers_are_reproducible_with_a_generator(gauss: Gaussian) -> None:
    sigmas = karras_sigmas(8, SIGMA_MIN, SIGMA_MAX)
    x = _noise(100) * SIGMA_MAX
    runs = [
        sample_ddpm(gauss.denoise, x, sigmas, generator=torch.Generator().manual_seed(9)) for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    other = sample_ddpm(gauss.denoise, x, sigmas, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(runs[0], other)


def test_callback_sees_every_step(gauss: Gaussian) -> None:
    seen: list[tuple[int, float, float]] = []
    sigmas = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    get_sampler("heun")(
        gauss.denoise,
        _noise(4) * SIGMA_MAX,
        sigmas,
        callback=lambda info: seen.append((info["i"], info["sigma"], info["sigma_next"])),
    )
    assert [i for i, _, _ in seen] == list(range(6))
    assert [s for _, s, _ in seen] == pytest.approx(sigmas[:-1].tolist())
    assert seen[-1][2] == 0.0


def test_bad_inputs_give_clear_errors(gauss: Gaussian) -> None:
    with pytest.raises(KeyError, match=r"unknown sampler 'dpm'.*heun"):
        get_sampler("dpm")
    with pytest.raises(ValueError, match="decrease"):
        get_sampler("euler")(gauss.denoise, _noise(4), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least two"):
        get_sampler("euler")(gauss.denoise, _noise(4), torch.tensor([1.0]))


def test_nfe_counts_network_calls(gauss: Gaussian) -> None:
    for name in SAMPLERS:
        calls = 0

        def counting(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            return gauss.denoise(x, sigma)

        get_sampler(name)(
            counting,
            _noise(4) * SIGMA_MAX,
            karras_sigmas(7, SIGMA_MIN, SIGMA_MAX),
            generator=torch.Generator().manual_seed(0),
        )
        assert calls == nfe(name, 7), name
    with pytest.raises(KeyError):
        nfe("nope", 3)


def test_vp_formulations_share_the_ddpm_sigma_table() -> None:
    for cls in (VPEpsilon, VPVelocity):
        form: VPBase = cls()
        assert math.isclose(form.sigma_min, math.sqrt(1e-4 / (1 - 1e-4)), rel_tol=1e-9)
        assert 150 < form.sigma_max < 160


# --- the few-step solvers on a Gaussian mixture (no closed-form ODE solution: a fine reference) -------


class Mixture:
    """8 modes N(μ_k, 0.15² I) on the unit circle with unequal weights; D is closed form:
    D(x; σ) = Σ_k w_k (s²x + σ²μ_k)/(s² + σ²), w_k the responsibilities under N(μ_k, (s² + σ²) I)."""

    def __init__(self, s: float = 0.15) -> None:
        angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        self.mu = torch.stack([angle.cos(), angle.sin()], 1)
        self.s2 = s**2
        self.log_w = (torch.linspace(1, 2, 8, dtype=torch.float64) / 12).log()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        total = self.s2 + sigma.double()[:, None] ** 2  # (B, 1)
        w = (self.log_w - 0.5 * torch.cdist(x.double(), self.mu).square() / total).softmax(1)
        return (self.s2 * x.double() + (total - self.s2) * (w @ self.mu)) / total


@pytest.fixture(scope="module")
def mixture() -> tuple[Mixture, torch.Tensor, torch.Tensor]:
    """The mixture, starting points σ_max·n (n: 1000 × 2) and the ODE solution from them: Heun with
    3000 steps (measured 3e-7 from 4000 steps, far below every error asserted here)."""
    mix = Mixture()
    x0 = _noise(1000, seed=21)[:, :2] * SIGMA_MAX
    ref = sample_heun(mix.denoise, x0, karras_sigmas(3000, SIGMA_MIN, SIGMA_MAX))
    return mix, x0, ref


def _mixture_error(
    name: str, sigmas: torch.Tensor, mixture: tuple[Mixture, torch.Tensor, torch.Tensor]
) -> float:
    mix, x0, ref = mixture
    out = get_sampler(name)(mix.denoise, x0, sigmas)
    return (out - ref).square().sum(1).mean().sqrt().item()


# (minimum 40 → 80 step error ratio on the mixture, bound at 80 steps). Measured ratio, error:
# DPM++(3M) 9.7, 3.4e-4; iPNDM 4.2, 3.5e-4; variable-step iPNDM 8.6, 3.5e-4.
MIXTURE_CONVERGENCE = {"dpmpp3m": (6.0, 1e-3), "ipndm": (3.0, 1e-3), "ipndm_v": (6.0, 1e-3)}


@pytest.mark.parametrize("name", sorted(MIXTURE_CONVERGENCE))
def test_few_step_solvers_converge_on_a_gaussian_mixture(
    name: str, mixture: tuple[Mixture, torch.Tensor, torch.Tensor]
) -> None:
    min_ratio, bound = MIXTURE_CONVERGENCE[name]
    errors = [_mixture_error(name, karras_sigmas(n, SIGMA_MIN, SIGMA_MAX), mixture) for n in (20, 40, 80)]
    assert errors[0] > errors[1] > errors[2], f"{name}: errors {errors}"
    assert errors[1] / errors[2] > min_ratio, f"{name}: 40→80 steps ratio {errors[1] / errors[2]:.2f}"
    assert errors[2] < bound, f"{name}: error {errors[2]:.2e} at 80 steps"


# At 10 NFE, against Euler's 10-NFE error on the default schedule (Karras ρ = 7). Measured ratios:
# iPNDM 0.196, variable-step iPNDM 0.558, DPM++(3M) 0.244 on log-SNR-uniform σ. DPM++(3M) needs
# that schedule at so few steps (on Karras ρ = 7 it is 1.2x Euler here: its third-order
# extrapolation across the large last log-σ steps).
TEN_NFE = {"ipndm": ("karras", 0.3), "ipndm_v": ("karras", 0.75), "dpmpp3m": ("exponential", 0.4)}


@pytest.mark.parametrize("name", sorted(TEN_NFE))
def test_few_step_solvers_beat_euler_at_10_nfe(
    name: str, mixture: tuple[Mixture, torch.Tensor, torch.Tensor]
) -> None:
    kind, max_ratio = TEN_NFE[name]
    assert nfe(name, 10) == 10
    euler = _mixture_error("euler", karras_sigmas(10, SIGMA_MIN, SIGMA_MAX), mixture)
    make = karras_sigmas if kind == "karras" else exponential_sigmas
    ratio = _mixture_error(name, make(10, SIGMA_MIN, SIGMA_MAX), mixture) / euler
    assert ratio < max_ratio, f"{name}: {ratio:.3f}x Euler at 10 NFE"


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_samplers_are_deterministic(name: str, gauss: Gaussian) -> None:
    sigmas = karras_sigmas(7, SIGMA_MIN, SIGMA_MAX)
    x = _noise(50, seed=13) * SIGMA_MAX
    runs = [get_sampler(name)(gauss.denoise, x.clone(), sigmas) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_has_the_common_signature(name: str) -> None:
    params = inspect.signature(SAMPLERS[name]).parameters
    assert list(params)[:3] == ["model", "x", "sigmas"]
    assert all(params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in ("model", "x", "sigmas"))
    for keyword in ("generator", "callback"):
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY and params[keyword].default is None
    assert all(p.default is not inspect.Parameter.empty for p in list(params.values())[3:])


def test_adams_bashforth_weights() -> None:
    """Equal steps give the classic weights; any nodes integrate polynomials of degree < k exactly."""
    h = -0.3
    assert adams_bashforth([0.0], h) == pytest.approx([1.0])
    assert adams_bashforth([0.0, -h], h) == pytest.approx([1.5, -0.5])
    assert adams_bashforth([0.0, -h, -2 * h], h) == pytest.approx([23 / 12, -16 / 12, 5 / 12])
    assert adams_bashforth([0.0, -h, -2 * h, -3 * h], h) == pytest.approx(
        [55 / 24, -59 / 24, 37 / 24, -9 / 24]
    )
    nodes = [0.0, 0.7, 1.9, 2.2]
    c = adams_bashforth(nodes, h)
    for degree in range(4):
        exact = h ** (degree + 1) / (degree + 1)
        assert h * sum(cj * u**degree for cj, u in zip(c, nodes, strict=True)) == pytest.approx(exact)


def test_edm_stochastic_is_heun_without_churn_and_follows_its_generator(gauss: Gaussian) -> None:
    sigmas = karras_sigmas(8, SIGMA_MIN, SIGMA_MAX)
    x = _noise(64, seed=14) * SIGMA_MAX
    plain = sample_edm_stochastic(gauss.denoise, x, sigmas, s_churn=0.0, generator=torch.Generator())
    torch.testing.assert_close(plain, sample_heun(gauss.denoise, x, sigmas), atol=1e-12, rtol=0)
    runs = [
        sample_edm_stochastic(gauss.denoise, x, sigmas, generator=torch.Generator().manual_seed(k))
        for k in (3, 3, 4)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # Churn touches only S_tmin ≤ σ ≤ S_tmax: with an empty window it is Heun again.
    empty = sample_edm_stochastic(gauss.denoise, x, sigmas, s_tmin=1e3, s_tmax=1e4)
    torch.testing.assert_close(empty, plain, atol=1e-12, rtol=0)
