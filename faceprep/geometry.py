"""Pure geometry: the FFHQ / CelebA-HQ oriented crop square from five landmarks, and transforms.

All functions take and return float64 numpy arrays in source pixel coordinates (see faceprep.types).
"""

from __future__ import annotations

import numpy as np

from faceprep.types import FloatArray, Quad


def rot90(v: FloatArray) -> FloatArray:
    """Rotate a 2-vector by +90° in image coordinates (y down): (x, y) -> (-y, x)."""
    return np.array([-v[1], v[0]], dtype=np.float64)


def ffhq_quad(
    landmarks: FloatArray,
    *,
    rotate: bool = True,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> Quad:
    """The FFHQ crop square from 5 landmarks (left eye, right eye, nose, left mouth, right mouth).

    x = e2e − rot90(e2m), normalised and scaled by max(2.0·|e2e|, 1.8·|e2m|); y = rot90(x);
    centre = eye_avg + 0.1·e2m. ``rotate=False`` keeps the square axis-aligned (same size and centre);
    ``scale`` multiplies the side; ``shift`` moves the centre by (dx, dy) in units of the half side,
    along the square's own axes.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"landmarks must be a finite (5, 2) array, got shape {lm.shape}")
    eye_left, eye_right = lm[0], lm[1]
    mouth_avg = (lm[3] + lm[4]) * 0.5
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - rot90(eye_to_mouth)
    norm = float(np.hypot(*x))
    if norm < 1e-9:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * scale
    x = x / norm * half
    if not rotate:
        x = np.array([half, 0.0])
    y = rot90(x)
    c = eye_avg + eye_to_mouth * 0.1 + (shift[0] * x + shift[1] * y)
    return Quad(np.stack([c - x - y, c - x + y, c + x + y, c + x - y]))
