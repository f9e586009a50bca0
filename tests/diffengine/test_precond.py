"""Preconditioning and loss against the equations, computed independently in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffengine.loss import diffusion_loss
from diffengine.precond import (
    EDM,
    FORMULATIONS,
    Denoiser,
    VPEpsilon,
    VPVelocity,
    as_sigma_batch,
    make_formulation,
)


class RecordingNet(nn.Module):
    """A small random conv net that remembers its last inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self.inputs = (x.detach().clone(), c_noise.detach().clone())
        return self.conv(x) * (1 + 0.1 * c_noise.view(-1, 1, 1, 1))


def _images(seed: int, batch: int = 6) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_edm_coefficients_match_table_1() -> None:
    edm = EDM()
    sigma = torch.exp(torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2)
    c_skip, c_out, c_in, c_noise = edm.coefficients(sigma)
    for s, cs, co, ci, cn, lam in zip(
        sigma.tolist(), c_skip, c_out, c_in, c_noise, edm.loss_weight(sigma), strict=True
    ):
        assert cs.item() == pytest.approx(0.25 / (s * s + 0.25), rel=1e-12)
        assert co.item() == pytest.approx(s * 0.5 / math.sqrt(0.25 + s * s), rel=1e-12)
        assert ci.item() == pytest.approx(1 / math.sqrt(s * s + 0.25), rel=1e-12)
        assert cn.item() == pytest.approx(0.25 * math.log(s), rel=1e-12, abs=1e-15)
        assert lam.item() == pytest.approx((s * s + 0.25) / (s * 0.5) ** 2, rel=1e-12)


def test_edm_effective_target_has_unit_variance() -> None:
    """EDM's design criterion: λ(σ)·c_out(σ)² = 1, so the network's effective loss weight is uniform."""
    edm = EDM(sigma_data=0.7)
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    _, c_out, _, _ = edm.coefficients(sigma)
    torch.testing.assert_close(edm.loss_weight(sigma) * c_out**2, torch.ones_like(sigma))


def test_denoiser_applies_preconditioning() -> None:
    torch.manual_seed(0)
    net = RecordingNet()
    den = Denoiser(net, EDM())
    x = torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.01, 0.5, 3.0, 70.0])
    out = den(x, sigma)
    s = sigma.double().view(-1, 1, 1, 1)
    c_in = 1 / (s**2 + 0.25).sqrt()
    assert net.inputs is not None
    torch.testing.assert_close(net.inputs[0].double(), c_in * x.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(net.inputs[1].double(), sigma.double().log() / 4, rtol=1e-6, atol=1e-7)
    f = net(net.inputs[0], net.inputs[1]).double()
    expected = 0.25 / (s**2 + 0.25) * x.double() + s * 0.5 / (s**2 + 0.25).sqrt() * f
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    # A scalar σ means the same σ for every sample.
    torch.testing.assert_close(den(x, 0.5), den(x, torch.full((4,), 0.5)))


def test_edm_loss_matches_equation_2() -> None:
    """diffusion_loss = λ(σ)·mean((D(y + σn; σ) − y)²) per sample, with D through the Denoiser."""
    torch.manual_seed(1)
    den = Denoiser(RecordingNet(), EDM())
    y, noise = _images(2), torch.randn(6, 3, 8, 8)
    sigma = torch.exp(torch.randn(6) * 1.2 - 1.2)
    out = diffusion_loss(den, y, sigma=sigma, noise=noise)
    d = den(y + sigma.view(-1, 1, 1, 1) * noise, sigma).double()
    lam = (sigma.double() ** 2 + 0.25) / (sigma.double() * 0.5) ** 2
    expected = lam * (d - y.double()).square().mean((1, 2, 3))
    torch.testing.assert_close(out.per_sample.double(), expected, rtol=1e-4, atol=1e-6)
    assert out.loss.shape == () and out.loss.item() == pytest.approx(expected.mean().item(), rel=1e-4)
    torch.testing.assert_close(out.sigma, sigma)
    out.loss.backward()  # the loss trains the network
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in den.net.parameters())


def test_loss_is_reproducible_with_a_generator() -> None:
    torch.manual_seed(2)
    den = Denoiser(RecordingNet(), EDM())
    y = _images(3)
    a = diffusion_loss(den, y, generator=torch.Generator().manual_seed(5))
    b = diffusion_loss(den, y, generator=torch.Generator().manual_seed(5))
    c = diffusion_loss(den, y, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.per_sample, b.per_sample) and torch.equal(a.sigma, b.sigma)
    assert not torch.equal(a.sigma, c.sigma)
    with pytest.raises(ValueError, match="noise shape"):
        diffusion_loss(den, y, noise=torch.randn(1, 3, 8, 8))


def test_edm_training_sigma_is_log_normal() -> None:
    edm = EDM(p_mean=-0.4, p_std=0.9)
    log_sigma = edm.sample_sigma(50_000, torch.Generator().manual_seed(0)).log()
    assert log_sigma.mean().item() == pytest.approx(-0.4, abs=0.02)  # SE 0.004
    assert log_sigma.std().item() == pytest.approx(0.9, abs=0.02)


def _vp_tables(form: VPEpsilon | VPVelocity) -> torch.Tensor:
    betas = torch.linspace(form.beta_start, form.beta_end, form.num_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)  # ᾱ_t


@pytest.mark.parametrize("cls", [VPEpsilon, VPVelocity])
def test_vp_loss_equals_ddpm_mse(cls: type[VPEpsilon] | type[VPVelocity]) -> None:
    """At a DDPM timestep t the network sees exactly x_t = √ᾱ·y + √(1−ᾱ)·n and c_noise = t, and the
    loss equals mean((F − ε)²) for ε-prediction and mean((F − v)²), v = √ᾱ·n − √(1−ᾱ)·y, for v."""
    torch.manual_seed(3)
    form = cls()
    abar = _vp_tables(form)
    net = RecordingNet()
    den = Denoiser(net, form)
    t = torch.tensor([0, 10, 250, 500, 900, 999])
    sigma = ((1 - abar[t]) / abar[t]).sqrt().float()
    y, n = _images(4), torch.randn(6, 3, 8, 8)
    out = diffusion_loss(den, y, sigma=sigma, noise=n)

    a, s = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
    x_t = a * y.double() + s * n.double()
    assert net.inputs is not None
    torch.testing.assert_close(net.inputs[0].double(), x_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.inputs[1].double(), t.double(), rtol=0, atol=1e-3)
    f = net(x_t.float(), t.float()).double()
    target = n.double() if cls is VPEpsilon else a * n.double() - s * y.double()
    torch.testing.assert_close(
        out.per_sample.double(), (f - target).square().mean((1, 2, 3)), rtol=2e-4, atol=1e-6
    )


def test_vp_sigma_to_t_interpolates_and_inverts() -> None:
    form = VPEpsilon()
    t = torch.tensor([0.0, 0.5, 17.25, 500.0, 998.9, 999.0])
    torch.testing.assert_close(form.sigma_to_t(form.t_to_sigma(t)), t, rtol=0, atol=2e-3)
    # Integer timesteps map to the table exactly.
    torch.testing.assert_close(form.t_to_sigma(torch.arange(1000.0)), form.sigmas.float())


def test_vp_training_sigma_is_uniform_over_timesteps() -> None:
    form = VPVelocity()
    sigma = form.sample_sigma(20_000, torch.Generator().manual_seed(0))
    t = form.sigma_to_t(sigma)
    torch.testing.assert_close(t, t.round(), rtol=0, atol=2e-3)  # only table values
    assert t.min() >= 0 and t.max() <= 999
    assert t.mean().item() == pytest.approx(499.5, abs=8)  # SE 2


def test_registry_and_errors() -> None:
    assert set(FORMULATIONS) == {"edm", "vp-eps", "vp-v"}
    assert make_formulation("edm", sigma_data=0.3) == EDM(sigma_data=0.3)
    assert isinstance(make_formulation("vp-v"), VPVelocity)
    with pytest.raises(KeyError, match=r"unknown formulation 'eps'.*vp-eps"):
        make_formulation("eps")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        as_sigma_batch(torch.ones(3), 4, torch.device("cpu"))
