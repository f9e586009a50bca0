"""FID / KID / precision-recall on synthetic features with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from diffengine.metrics.fid import (
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    kid,
    precision_recall,
)


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 40))
def test_frechet_matches_closed_form_for_commuting_covariances(seed: int, d: int) -> None:
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute, so tr((Σ1Σ2)^½) = Σ √(a b) and
    # FID = ‖μ1−μ2‖² + Σ (√a − √b)². Q is a random rotation, so the matrices are not diagonal.
    rng = np.random.default_rng(seed)
    q = _random_rotation(rng, d)
    a = rng.uniform(0.0, 5.0, d)
    b = rng.uniform(0.0, 5.0, d)
    a[rng.random(d) < 0.2] = 0.0  # singular covariances are the hard case
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-8)


def test_frechet_diagonal_pair_by_hand() -> None:
    # N([0,0], diag(1,4)) vs N([3,4], diag(9,16)): 25 + (1-3)² + (2-4)² = 33.
    got = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([3.0, 4.0]), np.diag([9.0, 16.0]))
    assert got == pytest.approx(33.0, rel=1e-12)


def test_frechet_matches_scipy_sqrtm_for_general_covariances() -> None:
    rng = np.random.default_rng(1)
    d = 30
    x = rng.standard_normal((200, d)) @ rng.standard_normal((d, d))
    y = rng.standard_normal((300, d)) @ rng.standard_normal((d, d)) + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    mu1, mu2 = x.mean(0), y.mean(0)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # NVIDIA / pytorch-fid formula
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


@pytest.mark.parametrize("n", [20, 100])  # n <= D: Gram-matrix path; n > D: full covariance path
def test_fid_from_features_matches_frechet_distance_of_the_moments(n: int) -> None:
    rng = np.random.default_rng(8)
    d = 48
    gen = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + 0.2
    ref = rng.standard_normal((150, d)) @ rng.standard_normal((d, d)) * 0.3
    g, r = gaussian_stats(gen), gaussian_stats(ref)
    expected = frechet_distance(g.mu, g.sigma, r.mu, r.sigma)
    # rel 1e-7: the D×D path takes √ of ~1e-13 round-off eigenvalues of the rank-deficient product.
    assert fid_from_features(gen, r).value == pytest.approx(expected, rel=1e-7)


def test_fid_of_identical_sets_is_zero_even_when_covariance_is_singular() -> None:
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((50, 128)).astype(np.float32)  # rank 49 < 128
    result = fid_from_features(feats, feats)
    assert abs(result.value) < 1e-6
    assert (result.n_gen, result.n_ref) == (50, 50)


def test_fid_grows_with_mean_shift_and_records_counts() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((400, 8))
    near = fid_from_features(rng.standard_normal((300, 8)) + 0.1, ref)
    far = fid_from_features(rng.standard_normal((300, 8)) + 1.0, ref)
    assert 0 < near.value < far.value
    assert far.value == pytest.approx(8.0, rel=0.25)  # ‖Δμ‖² = 8, covariances ≈ equal
    assert (far.n_gen, far.n_ref) == (300, 400)
    assert "n_gen=300" in str(far)


def test_gaussian_stats_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        gaussian_stats(np.zeros(4))


def _kid_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³, written as explicit double sums."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1) ** 3)

    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_matches_definition_on_full_subsets() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    # subset = whole set: every subset is a permutation, and MMD² is permutation invariant.
    result = kid(x, y, num_subsets=3, subset_size=1000)
    assert result.value == pytest.approx(_kid_by_definition(x, y), rel=1e-10)
    assert result.std == pytest.approx(0.0, abs=1e-12)
    assert result.extra["subset_size"] == 12


def test_kid_is_unbiased_on_shuffled_halves() -> None:
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((400, 16))
    values = []
    for _ in range(40):
        perm = rng.permutation(400)
        values.append(kid(feats[perm[:200]], feats[perm[200:]], num_subsets=1).value)
    arr = np.array(values)
    sem = arr.std(ddof=1) / np.sqrt(arr.size)
    assert abs(arr.mean()) < 3 * sem
    # A biased (V-statistic) estimator would sit well above zero: the diagonal terms alone add
    # 2·E[k(x,x)]/m ≈ 2·(1 + 1)³/200 here, far more than the noise.
    assert 20 * sem < 2 * 8 / 200


def test_kid_is_positive_for_shifted_sets_and_uses_subsets() -> None:
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((600, 16))
    gen = rng.standard_normal((500, 16)) + 0.5
    result = kid(gen, ref, num_subsets=20, subset_size=100)
    assert result.value > 0
    assert result.std is not None and result.value > 3 * result.std
    assert (result.n_gen, result.n_ref, result.extra["subset_size"]) == (500, 600, 100)


def test_kid_rejects_mismatched_dims() -> None:
    with pytest.raises(ValueError, match="dims differ"):
        kid(np.zeros((4, 3)), np.zeros((4, 2)))


def test_precision_recall_extremes() -> None:
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((200, 8))
    same_p, same_r = precision_recall(ref.copy(), ref, k=3)
    assert same_p.value == 1.0 and same_r.value == 1.0
    far_p, far_r = precision_recall(ref + 100.0, ref, k=3)
    assert far_p.value == 0.0 and far_r.value == 0.0
    # A generator collapsed onto a small part of the data: precise but low recall.
    plane = rng.standard_normal((200, 2))
    collapsed = plane[np.argsort(plane[:, 0])[:40]]
    p, r = precision_recall(collapsed, plane, k=3)
    assert p.value == 1.0 and r.value < 0.5
    assert p.extra["k"] == 3 and p.n_gen == 40
