"""FFHQ golden check: re-aligning an FFHQ-aligned image from its own landmarks gives back its square.

The shared FFHQ images carry 68-point FAN landmarks, while FFHQ itself was aligned from dlib landmarks;
the two detectors disagree by a few pixels per face (up to ~2.5° of eye-line angle here), so single
faces land within 4% and the quad averaged over the ten faces (where detector noise cancels and any
systematic error of the recipe or of the pixel convention would remain) within 2%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceprep.geometry import ffhq_quad
from faceprep.types import FloatArray

SIZE = 256
# output pixel edges, in the corner order of faceprep.types.Quad
IMAGE_SQUARE = np.array([[-0.5, -0.5], [-0.5, SIZE - 0.5], [SIZE - 0.5, SIZE - 0.5], [SIZE - 0.5, -0.5]])


def five_points(lm68: FloatArray) -> FloatArray:
    """The FFHQ script's points from iBUG-68: eye centres (36–41, 42–47), nose 30, mouth corners 48, 54."""
    return np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])


def test_ffhq_quad_recovers_the_ffhq_square(photos_dir: Path) -> None:
    files = sorted((photos_dir / "ffhq_aligned").glob("*.npy"))
    if len(files) < 10:
        pytest.skip(f"expected 10 landmark files in {photos_dir / 'ffhq_aligned'}, found {len(files)}")
    quads = []
    for path in files:
        lm = np.load(path)
        assert lm.shape == (68, 2), f"{path}: landmark array has shape {lm.shape}"
        quads.append(ffhq_quad(five_points(lm)).corners)
    errors = np.array([np.abs(q - IMAGE_SQUARE).max() / SIZE for q in quads])
    assert errors.max() < 0.04, dict(zip([p.name for p in files], errors.round(4), strict=True))
    mean_quad = np.mean(quads, axis=0)
    assert np.abs(mean_quad - IMAGE_SQUARE).max() / SIZE < 0.02
    assert np.median(errors) < 0.02
