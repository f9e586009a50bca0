"""Fused sampler steps (Euler, Heun, DPM-Solver++(2M), weighted sums) vs the references, and
``capture``: its eager path on the CPU for every deterministic sampler, the CUDA graph on a GPU."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest
import torch

from diffengine.kernels import (
    capture,
    dpmpp2m_step,
    euler_step,
    heun_correct,
    set_backend,
    weighted_sum,
)
from diffengine.kernels.sampler_steps import (
    dpmpp2m_step_reference,
    euler_step_reference,
    heun_correct_reference,
    weighted_sum_reference,
)
from diffengine.samplers import DETERMINISTIC, SAMPLERS

if TYPE_CHECKING:  # conftest is not importable at run time (--import-mode=importlib)
    from diffengine.precond import DenoiseFn
    from tests.diffengine.kernels.conftest import Close

SIGMAS = [(14.6, 3.1, 20.0), (0.9, 0.0, 1.7), (2.0, 1.5, None)]  # (σ, σ_next, σ_prev): last step, first step


def _tensors(n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 5, n, generator=g).to(dtype) for _ in range(4)]


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("s", "sn", "sp"), SIGMAS)
def test_steps_match_reference(
    triton_cpu: None,
    close: Close,
    dtype: torch.dtype,
    as_tensor: bool,
    s: float,
    sn: float,
    sp: float | None,
) -> None:
    x, xn, den, denn = _tensors(7, dtype, seed=int(s * 10))
    wrap = (lambda v: torch.tensor(v)) if as_tensor else (lambda v: v)
    sig = (wrap(s), wrap(sn))
    x64, xn64, den64, denn64 = (t.double() for t in (x, xn, den, denn))
    close(euler_step(x, den, *sig), euler_step_reference(x64, den64, s, sn), dtype, "euler")
    if sn > 0:
        got = heun_correct(x, xn, den, denn, *sig)
        close(got, heun_correct_reference(x64, xn64, den64, denn64, s, sn), dtype, "heun")
    sp_arg = wrap(sp) if sp is not None else None
    got = dpmpp2m_step(x, den, denn, *sig, sp_arg)
    close(got, dpmpp2m_step_reference(x64, den64, denn64, s, sn, sp), dtype, "dpmpp2m")
    first = dpmpp2m_step_reference(x64, den64, None, s, sn, None)
    close(dpmpp2m_step(x, den, None, *sig, None), first, dtype, "dpmpp2m first order")


def test_nan_propagates(triton_cpu: None) -> None:
    x, _, den, old = _tensors(3, torch.float32, 0)
    den[1, 2, 3, 1] = float("nan")
    for out in (euler_step(x, den, 2.0, 1.0), dpmpp2m_step(x, den, old, 2.0, 1.0, 3.0)):
        assert torch.isnan(out[1, 2, 3, 1]) and torch.isfinite(out).sum() == out.numel() - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("terms", [1, 2, 3, 5])
def test_weighted_sum_matches_reference(
    triton_cpu: None, close: Close, dtype: torch.dtype, terms: int
) -> None:
    g = torch.Generator().manual_seed(terms)
    tensors = [torch.randn(2, 3, 5, 7, generator=g).to(dtype) for _ in range(terms)]
    weights = [1.0, -59 / 24, 37 / 24, 0.3, -9 / 24][:terms]
    got = weighted_sum(weights, tensors)
    close(got, weighted_sum_reference(weights, [t.double() for t in tensors]), dtype, f"{terms} terms")
    assert got.dtype == dtype


def test_weighted_sum_keeps_channels_last_and_checks_its_arguments(triton_cpu: None) -> None:
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    y = torch.randn(2, 3, 4, 5)
    got = weighted_sum((2.0, -1.0), (x, y))
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, 2 * x - y)
    with pytest.raises(ValueError, match="1 to 5 tensors"):
        weighted_sum([1.0] * 6, [x] * 6)
    with pytest.raises(ValueError, match="one weight each"):
        weighted_sum((1.0,), (x, y))


def _gaussian_denoiser(mu: float, s0: float) -> DenoiseFn:
    # Data N(mu, s0²): the ideal denoiser is closed form, so the ODE maps noise to samples of the data.
    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return (s0**2 * x + s2 * mu) / (s0**2 + s2)

    return denoiser


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_samplers_same_on_both_backends_and_recover_gaussian(name: str) -> None:
    """Every deterministic sampler through ``capture``'s eager path (the CPU fallback) with PyTorch ops
    equals the same sampler with every fused step run by the interpreted Triton kernels."""
    mu, s0 = 0.7, 0.3
    sigmas = torch.cat([torch.logspace(1.3, -2.0, 24), torch.zeros(1)])  # 20 → 0.01, then 0
    denoiser = _gaussian_denoiser(mu, s0)
    noise = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 20.0
    set_backend("torch")
    try:
        ref = capture(SAMPLERS[name], denoiser, sigmas, tuple(noise.shape))(noise)  # CPU: eager
    finally:
        set_backend(None)
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        set_backend("triton")
        got = SAMPLERS[name](denoiser, noise, sigmas)
    finally:
        set_backend(None)
        del os.environ["TRITON_INTERPRET"]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert abs(ref.mean().item() - mu) < 0.05 and abs(ref.std().item() - s0) < 0.06


def test_capture_eager_path_is_the_sampler_and_hands_it_host_sigmas() -> None:
    seen: list[torch.Tensor] = []

    def spy(model: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor, **options: Any) -> torch.Tensor:
        seen.append(sigmas)
        return SAMPLERS["ipndm"](model, x, sigmas)

    sigmas = torch.tensor([10.0, 2.0, 0.5, 0.0])
    denoiser = _gaussian_denoiser(0.1, 0.5)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1)) * 10
    run = capture(spy, denoiser, sigmas, tuple(x.shape), graph=False)
    assert torch.equal(run(x), SAMPLERS["ipndm"](denoiser, x, sigmas))
    assert seen[0].device.type == "cpu" and seen[0].dtype == torch.float64  # no device sync per step


def test_graph_on_cpu_is_an_error() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        capture(SAMPLERS["euler"], lambda x, s: x, torch.tensor([1.0, 0.0]), (1, 1, 2, 2), graph=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_graph_matches_eager_on_cuda(name: str) -> None:
    """The captured loop (static input buffer, whole loop in one graph) replays the eager result, and a
    second input through the same graph gives that input's result (the buffer really is the input)."""
    dev = torch.device("cuda")
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).to(dev).eval()

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c = 1 / (sigma.view(-1, 1, 1, 1) ** 2 + 0.25)
        return 0.25 * c * x + 0.1 * torch.tanh(conv(x * c.sqrt()))

    sigmas = torch.cat([torch.logspace(1.9, -2.7, 10), torch.zeros(1)]).to(dev)
    run = capture(SAMPLERS[name], denoiser, sigmas, (4, 3, 8, 8))
    for seed in (0, 1):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dev) * 80
        torch.testing.assert_close(run(x), SAMPLERS[name](denoiser, x, sigmas), atol=1e-4, rtol=1e-4)
