"""Sample-quality metrics: Inception pool3 features (TF 2015-12-05 graph), FID, KID, precision/recall,
and cached reference statistics. ``refstats`` is not imported here (it pulls in the data loader)."""

from diffengine.metrics.fid import (
    GaussianStats,
    MetricResult,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    kid,
    precision_recall,
)
from diffengine.metrics.inception import PREPROCESSING_ID, InceptionFeatures, load_inception

__all__ = [
    "PREPROCESSING_ID",
    "GaussianStats",
    "InceptionFeatures",
    "MetricResult",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "kid",
    "load_inception",
    "precision_recall",
]
