"""FID, KID and k-NN precision/recall on feature vectors (float64, numpy).

- FID (Heusel et al. 2017): ``‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)``. The trace of the matrix square
  root is computed as ``Σ sqrt(eig(A Σ2 A))`` with ``A = Σ1^½`` (symmetric PSD, eigh-based), which is
  exact in exact arithmetic and avoids ``scipy.linalg.sqrtm``'s complex round-off on singular Σ.
- KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel ``(x·y/d + 1)³`` averaged
  over random subsets of size ``min(1000, n)`` as NVIDIA's and clean-fid's code do; mean ± std over
  subsets.
- Precision/recall (Kynkäänniemi et al. 2019): k-NN manifolds, k = 3.

Every result records the sample counts it was computed from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = [
    "GaussianStats",
    "MetricResult",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "kid",
    "precision_recall",
]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class MetricResult:
    """One figure with the sample counts behind it (``std`` is the spread over KID subsets)."""

    metric: str
    value: float
    n_gen: int
    n_ref: int
    std: float | None = None
    extra: dict[str, float | int | str] = field(default_factory=dict)

    def __str__(self) -> str:
        spread = f" ± {self.std:.5f}" if self.std is not None else ""
        return f"{self.metric} = {self.value:.5f}{spread} (n_gen={self.n_gen}, n_ref={self.n_ref})"

    def as_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "value": self.value,
            "std": self.std,
            "n_gen": self.n_gen,
            "n_ref": self.n_ref,
            **self.extra,
        }


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``(D,)`` and covariance ``(D, D)`` of ``count`` feature vectors."""

    mu: Array
    sigma: Array
    count: int

    @cached_property
    def sqrt_sigma(self) -> Array:
        """Σ^½ (symmetric PSD root), computed once: reused for every FID against these statistics."""
        return _psd_sqrt(self.sigma)


def _as_features(features: NDArray[np.floating] | torch.Tensor, name: str) -> Array:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: features must be (N, D), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return arr


def gaussian_stats(features: NDArray[np.floating] | torch.Tensor) -> GaussianStats:
    """Mean and unbiased covariance (``np.cov`` convention, as NVIDIA/pytorch-fid) in float64."""
    x = _as_features(features, "gaussian_stats")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    return GaussianStats(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), count=x.shape[0])


def _psd_sqrt(sigma: Array) -> Array:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    sym = (sigma + sigma.T) / 2
    vals, vecs = np.linalg.eigh(sym)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: Array, sigma2: Array) -> float:
    """``tr((Σ1 Σ2)^½)`` for symmetric PSD Σ1, Σ2 via the similar symmetric ``A Σ2 A``, ``A = Σ1^½``."""
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    vals = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def fid_from_features(
    gen: NDArray[np.floating] | torch.Tensor, ref: GaussianStats | NDArray[np.floating] | torch.Tensor
) -> MetricResult:
    """FID of generated features against reference features or precomputed reference statistics.

    With ``R = Σ_ref^½`` (cached on the stats), ``tr((Σ_gen Σ_ref)^½) = Σ √eig(R Σ_gen R)``. For
    ``n_gen ≤ D`` the non-zero eigenvalues of ``R Σ_gen R = YᵀY/(n−1)``, ``Y = (X − μ) R``, are those of
    the small Gram matrix ``YYᵀ/(n−1)`` (n × n): exact, and no D × D eigendecomposition per evaluation.
    """
    x = _as_features(gen, "fid gen")
    r = ref if isinstance(ref, GaussianStats) else gaussian_stats(ref)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 generated feature vectors, got {n}")
    if r.mu.shape != (d,):
        raise ValueError(f"feature dims differ: gen {d} vs ref {r.mu.shape}")
    centred = x - x.mean(axis=0)
    root = r.sqrt_sigma
    if n <= d:
        y = centred @ root
        inner = y @ y.T / (n - 1)
        trace_gen = float(np.sum(centred**2) / (n - 1))
    else:
        sigma_gen = centred.T @ centred / (n - 1)
        inner = root @ sigma_gen @ root
        trace_gen = float(np.trace(sigma_gen))
    vals = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(vals, 0.0, None)).sum())
    diff = x.mean(axis=0) - r.mu
    value = float(diff @ diff + trace_gen + np.trace(r.sigma) - 2 * trace_sqrt)
    return MetricResult("fid", max(value, 0.0), n_gen=n, n_ref=r.count)


def _mmd2_unbiased(x: Array, y: Array) -> float:
    """Unbiased MMD² with the kernel ``(a·b/d + 1)³`` on equal-size sets ``x``, ``y`` (m, d)."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kid(
    gen: NDArray[np.floating] | torch.Tensor,
    ref: NDArray[np.floating] | torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> MetricResult:
    """Kernel Inception Distance: mean ± std of unbiased MMD² over ``num_subsets`` random subsets.

    Subset size is ``min(subset_size, n_gen, n_ref)`` (sampled without replacement), as in NVIDIA's
    ``kernel_inception_distance.py`` and clean-fid.
    """
    x = _as_features(gen, "kid gen")
    y = _as_features(ref, "kid ref")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: gen {x.shape[1]} vs ref {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got gen={x.shape[0]} ref={y.shape[0]}")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            _mmd2_unbiased(
                x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)]
            )
            for _ in range(num_subsets)
        ]
    )
    return MetricResult(
        "kid",
        float(values.mean()),
        n_gen=x.shape[0],
        n_ref=y.shape[0],
        std=float(values.std()),
        extra={"subset_size": m, "num_subsets": num_subsets},
    )


def _kth_neighbour_radii(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    radii = []
    for i in range(0, x.shape[0], block):
        dist = torch.cdist(x[i : i + block], x)
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # +1: the point itself at distance 0
    return torch.cat(radii)


def _inside_fraction(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    inside = 0
    for i in range(0, points.shape[0], block):
        dist = torch.cdist(points[i : i + block], centres)
        inside += int((dist <= radii[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(
    gen: NDArray[np.floating] | torch.Tensor,
    ref: NDArray[np.floating] | torch.Tensor,
    k: int = 3,
    block: int = 1024,
) -> tuple[MetricResult, MetricResult]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii, on the given features."""
    x = torch.from_numpy(_as_features(gen, "precision gen"))
    y = torch.from_numpy(_as_features(ref, "precision ref"))
    if min(x.shape[0], y.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    ref_radii = _kth_neighbour_radii(y, k, block)
    gen_radii = _kth_neighbour_radii(x, k, block)
    precision = _inside_fraction(x, y, ref_radii, block)
    recall = _inside_fraction(y, x, gen_radii, block)
    extra: dict[str, float | int | str] = {"k": k, "method": "Kynkaanniemi2019 k-NN"}
    return (
        MetricResult("precision", precision, n_gen=x.shape[0], n_ref=y.shape[0], extra=extra),
        MetricResult("recall", recall, n_gen=x.shape[0], n_ref=y.shape[0], extra=extra),
    )
