"""Noise schedules: shape, endpoints, monotonicity (property-based) and the closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffengine.precond import EDM, VPEpsilon, VPVelocity
from diffengine.schedules import SCHEDULES, exponential_sigmas, get_sigmas, karras_sigmas, vp_discrete_sigmas

steps = st.integers(min_value=1, max_value=300)
sigma_range = st.tuples(
    st.floats(min_value=1e-4, max_value=10.0), st.floats(min_value=1.0, max_value=1e3)
).filter(lambda r: r[1] > r[0] * 1.001)


@settings(max_examples=60, deadline=None)
@given(n=steps, rng=sigma_range, rho=st.floats(min_value=1.0, max_value=10.0))
def test_karras_endpoints_and_monotone(n: int, rng: tuple[float, float], rho: float) -> None:
    lo, hi = rng
    s = karras_sigmas(n, lo, hi, rho)
    assert s.shape == (n + 1,) and s.dtype == torch.float64
    assert s[0].item() == pytest.approx(hi, rel=1e-9)
    assert s[-1].item() == 0.0
    if n > 1:
        assert s[-2].item() == pytest.approx(lo, rel=1e-9)
    assert bool((s[1:] < s[:-1]).all())


@settings(max_examples=60, deadline=None)
@given(n=steps, rng=sigma_range)
def test_exponential_endpoints_monotone_and_log_uniform(n: int, rng: tuple[float, float]) -> None:
    lo, hi = rng
    s = exponential_sigmas(n, lo, hi)
    assert s.shape == (n + 1,) and s[-1].item() == 0.0
    assert s[0].item() == pytest.approx(hi, rel=1e-9)
    assert bool((s[1:] < s[:-1]).all())
    if n > 2:
        ratios = s[1:-1] / s[:-2]  # constant ratio between consecutive non-zero σ
        torch.testing.assert_close(ratios, torch.full_like(ratios, (lo / hi) ** (1 / (n - 1))))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=1000))
def test_vp_discrete_sigmas_are_ddpm_timesteps(n: int) -> None:
    vp = VPEpsilon()
    s = vp_discrete_sigmas(n, vp)
    assert s.shape == (n + 1,) and s[-1].item() == 0.0
    assert s[0].item() == pytest.approx(vp.sigma_max)
    assert bool((s[1:] < s[:-1]).all())
    assert torch.isin(s[:-1], vp.sigmas).all()  # only values of the 1000-step table
    if n > 1:
        assert s[-2].item() == pytest.approx(vp.sigma_min)


def test_karras_closed_form() -> None:
    s = karras_sigmas(3, 0.002, 80.0, rho=7.0)
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    torch.testing.assert_close(s, torch.tensor([80.0, mid, 0.002, 0.0], dtype=torch.float64))


def test_ddpm_1000_steps_is_the_whole_table() -> None:
    s = vp_discrete_sigmas(1000)
    torch.testing.assert_close(s[:-1], VPEpsilon().sigmas.flip(0))
    assert s[-2].item() == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))


def test_get_sigmas_uses_the_formulation_range() -> None:
    edm = EDM()
    torch.testing.assert_close(get_sigmas("karras", 10, edm), karras_sigmas(10, 0.002, 80.0))
    vpv = VPVelocity()
    assert get_sigmas("exponential", 5, vpv)[0].item() == pytest.approx(vpv.sigma_max)
    torch.testing.assert_close(get_sigmas("vp", 20, edm), vp_discrete_sigmas(20))
    assert set(SCHEDULES) == {"karras", "exponential", "vp"}


def test_get_sigmas_can_start_below_the_formulation_sigma_max() -> None:
    edm = EDM()
    torch.testing.assert_close(get_sigmas("karras", 6, edm, sigma_max=1.5), karras_sigmas(6, 0.002, 1.5))
    torch.testing.assert_close(
        get_sigmas("exponential", 4, edm, sigma_max=3.0), exponential_sigmas(4, 0.002, 3.0)
    )
    assert get_sigmas("karras", 6, edm, sigma_max=500.0)[0].item() == pytest.approx(80.0)  # capped
    with pytest.raises(ValueError, match="fixed timestep table"):
        get_sigmas("vp", 6, edm, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_max must exceed"):
        get_sigmas("karras", 6, edm, sigma_max=0.001)


def test_bad_arguments_give_clear_errors() -> None:
    with pytest.raises(KeyError, match=r"unknown schedule 'cosine'.*karras"):
        get_sigmas("cosine", 10, EDM())
    with pytest.raises(ValueError, match="steps must be >= 1"):
        karras_sigmas(0, 0.002, 80)
    with pytest.raises(ValueError, match="sigma_min <= sigma_max"):
        exponential_sigmas(10, 5.0, 1.0)
    with pytest.raises(ValueError, match=r"1 … 1000"):
        vp_discrete_sigmas(1001)
