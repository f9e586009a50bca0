"""Fused sampler steps (Euler, Heun, DPM-Solver++(2M)) and the graph-capturable loop vs the references."""

from __future__ import annotations

import pytest
import torch

from diffengine.kernels import (
    dpmpp2m_step,
    euler_step,
    heun_correct,
    make_sampler,
    sampling_loop,
    set_backend,
)
from diffengine.kernels.sampler_steps import (
    dpmpp2m_step_reference,
    euler_step_reference,
    heun_correct_reference,
)

SIGMAS = [(14.6, 3.1, 20.0), (0.9, 0.0, 1.7), (2.0, 1.5, None)]  # (σ, σ_next, σ_prev): last step, first step


def _tensors(n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 5, n, generator=g).to(dtype) for _ in range(4)]


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("s", "sn", "sp"), SIGMAS)
def test_steps_match_reference(triton_cpu, close, dtype, as_tensor, s, sn, sp) -> None:  # type: ignore[no-untyped-def]
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


def test_nan_propagates(triton_cpu) -> None:  # type: ignore[no-untyped-def]
    x, _, den, old = _tensors(3, torch.float32, 0)
    den[1, 2, 3, 1] = float("nan")
    for out in (euler_step(x, den, 2.0, 1.0), dpmpp2m_step(x, den, old, 2.0, 1.0, 3.0)):
        assert torch.isnan(out[1, 2, 3, 1]) and torch.isfinite(out).sum() == out.numel() - 1


@pytest.mark.parametrize("method", ["euler", "heun", "dpmpp2m"])
def test_loop_same_on_both_backends_and_recovers_gaussian_mean(method) -> None:  # type: ignore[no-untyped-def]
    # Data N(mu, s0²): the ideal denoiser is closed form, so the ODE maps noise to samples of the data.
    mu, s0 = 0.7, 0.3
    sigmas = torch.cat([torch.logspace(1.3, -2.0, 24), torch.zeros(1)])  # 20 → 0.01, then 0

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return (s0**2 * x + s2 * mu) / (s0**2 + s2)

    noise = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 20.0
    set_backend("torch")
    ref = make_sampler(denoiser, sigmas, tuple(noise.shape), method)(noise)  # CPU: eager fallback
    import os

    os.environ["TRITON_INTERPRET"] = "1"
    try:
        set_backend("triton")
        got = sampling_loop(denoiser, noise, sigmas, method)
    finally:
        set_backend(None)
        del os.environ["TRITON_INTERPRET"]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert abs(ref.mean().item() - mu) < 0.05 and abs(ref.std().item() - s0) < 0.06


def test_graph_on_cpu_is_an_error() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        make_sampler(lambda x, s: x, torch.tensor([1.0, 0.0]), (1, 1, 2, 2), graph=True)
