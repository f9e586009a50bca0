"""Formulations (preconditioning + training noise distribution + loss weight) in one σ parametrisation.

Everything is written in EDM's VE form: a noisy image is ``x = y + σ·n`` and the denoiser is
``D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ))`` (Karras et al. 2022, eq. 7). A
formulation only fixes the coefficients, how σ is drawn during training and the loss weight λ(σ), so
every sampler (which only ever sees D) works with every formulation.

* :class:`EDM` — Table 1 of the EDM paper (σ_data 0.5, log-normal σ).
* :class:`VPEpsilon`, :class:`VPVelocity` — DDPM's linear-β schedule with 1000 steps, ε- and
  v-prediction. A VP sample ``x_VP = √ᾱ·y + √(1−ᾱ)·n`` is ``x_VE = x_VP/√ᾱ`` with
  ``σ = √((1−ᾱ)/ᾱ)``; the network sees ``c_in·x_VE = x_VP`` and ``c_noise`` = the (fractional)
  timestep index, exactly as a DDPM network does, and λ(σ) turns the denoiser error into the usual
  ε-MSE or v-MSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DenoiseFn(Protocol):
    """The one denoiser type, ``D(x; σ)``: the denoised estimate of ``x`` at noise level ``sigma``.

    ``sigma`` is a float32 tensor of shape (B,) on x's device (the samplers broadcast σ once, in
    ``diffengine.samplers.denoise``); the result has x's shape. :class:`Denoiser` (a network inside a
    formulation) is one, a closed-form ideal denoiser (tests, ``bench/solver_error.py``) another.
    For ``kernels.cuda_graph.capture`` it must be capturable: no host sync, static shapes.
    """

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, /) -> torch.Tensor: ...


def _randn(batch: int, generator: torch.Generator | None, device: torch.device | str | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(batch, generator=generator, device=gen_device).to(device)


class Formulation:
    """Interface shared by all formulations. ``sigma`` arguments are float tensors of shape (B,)."""

    name: ClassVar[str]
    sigma_min: float
    sigma_max: float

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise), each shaped like ``sigma``."""
        raise NotImplementedError

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ) of the training loss λ(σ)·‖D(y + σn; σ) − y‖²."""
        raise NotImplementedError

    def sample_sigma(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Training noise levels, shape (batch,)."""
        raise NotImplementedError


@dataclass(frozen=True)
class EDM(Formulation):
    """EDM preconditioning (Karras et al. 2022, Table 1)."""

    name: ClassVar[str] = "edm"
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def sample_sigma(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        return (self.p_mean + self.p_std * _randn(batch, generator, device)).exp()


@dataclass(frozen=True)
class VPBase(Formulation):
    """DDPM linear-β schedule (β from ``beta_start`` to ``beta_end`` over ``num_timesteps``) in σ form."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sigmas: torch.Tensor = field(init=False, repr=False, compare=False)  # (T,) σ of timestep t = 0 … T−1
    _log_sigmas: dict[torch.device, torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        object.__setattr__(self, "sigmas", ((1 - alphas_cumprod) / alphas_cumprod).sqrt())
        object.__setattr__(self, "_log_sigmas", {})

    def _log_table(self, device: torch.device) -> torch.Tensor:
        """log σ table on ``device``, copied there once (no host transfer per call: CUDA-graph safe)."""
        cache: dict[torch.device, torch.Tensor] = self._log_sigmas
        if device not in cache:
            cache[device] = self.sigmas.log().to(device)
        return cache[device]

    @property
    def sigma_min(self) -> float:  # type: ignore[override]
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:  # type: ignore[override]
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep: linear interpolation of the index in log σ (k-diffusion's convention)."""
        log_sigmas = self._log_table(sigma.device)
        log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
        hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1)
        lo = hi - 1
        frac = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return (lo + frac).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_to_t` (log-linear interpolation of the σ table)."""
        log_sigmas = self._log_table(t.device)
        t = t.double().clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - lo
        return ((1 - frac) * log_sigmas[lo] + frac * log_sigmas[lo + 1]).exp().float()

    def sample_sigma(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Uniform discrete timesteps, as DDPM trains."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device)
        return self.sigmas.to(t.device)[t].float().to(device)

    def _c_in_noise(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 1 / (sigma**2 + 1).sqrt(), self.sigma_to_t(sigma)


@dataclass(frozen=True)
class VPEpsilon(VPBase):
    """ε-prediction: D = x − σ·F; λ = 1/σ² makes the loss ‖F − n‖² (DDPM's "simple" loss)."""

    name: ClassVar[str] = "vp-eps"

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_in, c_noise = self._c_in_noise(sigma)
        return torch.ones_like(sigma), -sigma, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 / sigma**2


@dataclass(frozen=True)
class VPVelocity(VPBase):
    """v-prediction with v = √ᾱ·n − √(1−ᾱ)·y (diffusers' convention): D = x/(σ²+1) − σ/√(σ²+1)·F;
    λ = (σ²+1)/σ² makes the loss ‖F − v‖²."""

    name: ClassVar[str] = "vp-v"

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_in, c_noise = self._c_in_noise(sigma)
        return 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1).sqrt(), c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + 1) / sigma**2


FORMULATIONS: dict[str, type[Formulation]] = {cls.name: cls for cls in (EDM, VPEpsilon, VPVelocity)}


def make_formulation(name: str, **kwargs: Any) -> Formulation:
    """Build a formulation by name (``edm``, ``vp-eps``, ``vp-v``) with optional field overrides."""
    try:
        cls = FORMULATIONS[name]
    except KeyError:
        raise KeyError(f"unknown formulation {name!r}; choose one of {', '.join(FORMULATIONS)}") from None
    return cls(**kwargs)


def as_sigma_batch(sigma: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """σ as a float32 tensor of shape (batch,) from a scalar, a 0-d tensor or a (batch,) tensor."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    if sigma.ndim == 0:
        return sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(sigma.shape)}")
    return sigma


class Denoiser(nn.Module):
    """``D(x; σ) = c_skip·x + c_out·net(c_in·x, c_noise)`` for a network and a formulation: the
    :class:`DenoiseFn` of a trained model (it also accepts a float or 0-d σ).

    The coefficients are computed in float32; the network runs in the dtype of its input (autocast
    applies as usual) and its output is promoted back to float32.
    """

    def __init__(self, net: nn.Module, formulation: Formulation):
        super().__init__()
        self.net = net
        self.formulation = formulation

    def net_output(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw network output F plus (c_skip, c_out), for losses that fuse the last step themselves.

        ``cond`` (conditioned networks only, e.g. inpainting's masked image + mask) is passed to the
        network unscaled as its third argument; without it the network is called as ``net(x, c_noise)``.
        """
        c_skip, c_out, c_in, c_noise = self.formulation.coefficients(sigma)
        c_in = c_in.view((-1,) + (1,) * (x.ndim - 1)).to(x.dtype)
        f = self.net(c_in * x, c_noise) if cond is None else self.net(c_in * x, c_noise, cond)
        return f.float(), c_skip, c_out

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = as_sigma_batch(sigma, x.shape[0], x.device)
        f, c_skip, c_out = self.net_output(x, sigma, cond)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return c_skip.view(shape) * x.float() + c_out.view(shape) * f


__all__ = [
    "EDM",
    "FORMULATIONS",
    "DenoiseFn",
    "Denoiser",
    "Formulation",
    "VPBase",
    "VPEpsilon",
    "VPVelocity",
    "as_sigma_batch",
    "make_formulation",
]
