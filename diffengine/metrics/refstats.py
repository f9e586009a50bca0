"""Reference statistics of a dataset, computed once and cached.

A reference is the dataset's images decoded *exactly as training sees them* (``diffengine.data``:
centre crop, antialiased resize to the model resolution), embedded with Inception. Stored: μ, Σ
(float64), up to ``max_kid_features`` feature rows for KID / precision-recall, the feature count,
the preprocessing id, the resolution and a fingerprint of the dataset (file names and sizes).

Cache file: ``<cache_dir>/<key>.npz`` where the key hashes (fingerprint, resolution, split, count,
preprocessing id); ``cache_dir`` defaults to ``refstats`` in ``$DIFFENGINE_CACHE``, else
``$XDG_CACHE_HOME/diffengine``, else ``~/.cache/diffengine``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from diffengine.data import load_images, open_source, split_names
from diffengine.metrics.fid import GaussianStats, gaussian_stats
from diffengine.metrics.inception import InceptionFeatures, default_inception

__all__ = ["RefStats", "default_cache_dir", "load_refstats", "reference_statistics", "select_names"]

Split = str  # "all" | "train" | "heldout"


@dataclass(frozen=True)
class RefStats:
    """Cached reference statistics (see module docstring)."""

    mu: NDArray[np.float64]
    sigma: NDArray[np.float64]
    features: NDArray[np.float32]  # (min(count, max_kid_features), 2048) rows for KID
    count: int
    preprocessing: str
    resolution: int
    fingerprint: str
    source: str
    split: str

    @cached_property
    def gaussian(self) -> GaussianStats:
        return GaussianStats(self.mu, self.sigma, self.count)

    def describe(self) -> str:
        return f"{self.source} [{self.split}] {self.count} images at {self.resolution}px"

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "count": self.count,
            "preprocessing": self.preprocessing,
            "resolution": self.resolution,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "split": self.split,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as handle:
                np.savez(handle, mu=self.mu, sigma=self.sigma, features=self.features, meta=json.dumps(meta))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load_refstats(path: str | os.PathLike[str]) -> RefStats:
    """Read a ``.npz`` written by :meth:`RefStats.save`. Raises ValueError naming the file."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return RefStats(
                mu=data["mu"].astype(np.float64),
                sigma=data["sigma"].astype(np.float64),
                features=data["features"].astype(np.float32),
                count=int(meta["count"]),
                preprocessing=str(meta["preprocessing"]),
                resolution=int(meta["resolution"]),
                fingerprint=str(meta["fingerprint"]),
                source=str(meta["source"]),
                split=str(meta["split"]),
            )
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: not a reference-statistics file ({err})") from err


def default_cache_dir() -> Path:
    """``refstats`` in diffengine's cache (the same rule as the Inception weights':
    :func:`diffengine.metrics.inception.cache_dir`)."""
    from diffengine.metrics.inception import cache_dir

    return cache_dir() / "refstats"


def select_names(
    names: tuple[str, ...] | list[str], split: Split, heldout_fraction: float, limit: int | None
) -> list[str]:
    """Names of the split (fixed hash split from ``diffengine.data``); ``limit`` keeps an unbiased subset
    (the first names in the order of their sha256, not alphabetical: UTKFace names start with the age)."""
    chosen = split_names(sorted(names), split, heldout_fraction)
    if limit is None or limit >= len(chosen):
        return chosen
    by_hash = sorted(chosen, key=lambda n: hashlib.sha256(("limit:" + n).encode()).hexdigest())
    return sorted(by_hash[:limit])


def _fingerprint(root: Path, names: list[str], is_zip: bool) -> str:
    digest = hashlib.sha256()
    if is_zip:
        stat = root.stat()
        digest.update(f"zip:{stat.st_size}:{int(stat.st_mtime)}".encode())
    for name in names:
        size = -1 if is_zip else (root / name).stat().st_size
        digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def embed_uint8(extractor: InceptionFeatures, images: torch.Tensor, batch_size: int) -> NDArray[np.float32]:
    """Inception features of uint8 images as float32 numpy."""
    return extractor.embed(images, batch_size).numpy().astype(np.float32)


def reference_statistics(
    data: str | os.PathLike[str],
    resolution: int,
    *,
    split: Split = "all",
    heldout_fraction: float = 0.1,
    limit: int | None = None,
    extractor: InceptionFeatures | None = None,
    batch_size: int = 64,
    max_kid_features: int = 10_000,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    verbose: bool = True,
) -> RefStats:
    """Statistics of ``data`` (folder/zip/faceprep output, or a ``.npz`` from :meth:`RefStats.save`).

    Loads from cache when the dataset fingerprint, resolution, split, limit and preprocessing match.
    """
    path = Path(data)
    if path.suffix == ".npz" and path.is_file():
        stats = load_refstats(path)
        if stats.resolution != resolution:
            raise ValueError(f"{path}: reference is at {stats.resolution}px, the model at {resolution}px")
        return stats
    source = open_source(path)
    names = select_names(source.names, split, heldout_fraction, limit)
    if len(names) < 2:
        raise ValueError(f"{path}: split {split!r} has {len(names)} image(s); need at least 2")
    extractor = extractor or default_inception()
    fingerprint = _fingerprint(source.path, names, source.is_zip)
    key_src = f"{fingerprint}|{resolution}|{split}|{heldout_fraction}|{extractor.preprocessing_id}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    cache_file = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_file / f"{key}.npz"
    if use_cache and cache_file.is_file():
        return load_refstats(cache_file)
    if verbose:
        print(f"[refstats] embedding {len(names)} images of {path} [{split}] at {resolution}px ...")
    images = load_images(source, resolution, names)
    feats = embed_uint8(extractor, images, batch_size)
    g = gaussian_stats(feats)
    keep = feats
    if feats.shape[0] > max_kid_features:
        rows = np.random.default_rng(0).choice(feats.shape[0], max_kid_features, replace=False)
        keep = feats[np.sort(rows)]
    stats = RefStats(
        mu=g.mu,
        sigma=g.sigma,
        features=keep,
        count=g.count,
        preprocessing=extractor.preprocessing_id,
        resolution=resolution,
        fingerprint=fingerprint,
        source=str(path),
        split=split,
    )
    if use_cache:
        stats.save(cache_file)
        if verbose:
            print(f"[refstats] cached {stats.describe()} -> {cache_file}")
    return stats
