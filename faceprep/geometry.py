"""Pure geometry: the FFHQ / CelebA-HQ oriented crop square from five landmarks, and transforms.

All functions take and return float64 numpy arrays in source pixel coordinates (see faceprep.types).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faceprep.types import FloatArray, Quad

MIN_SIZE, MAX_SIZE = 64, 1024  # the output side (px) that the warp and the pipeline accept


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


def box_quad(
    box: tuple[float, float, float, float] | FloatArray,
    *,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> Quad:
    """An axis-aligned square on a detection box (x0, y0, x1, y1).

    The side is ``scale`` times the longer box side, the centre is the box centre moved by ``shift``
    (dx, dy) in units of the half side.
    """
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,) or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {b.tolist()}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    half = max(b[2] - b[0], b[3] - b[1]) * 0.5 * scale
    x = np.array([half, 0.0])
    y = rot90(x)
    c = np.array([(b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5]) + shift[0] * x + shift[1] * y
    return Quad(np.stack([c - x - y, c - x + y, c + x + y, c + x - y]))


def output_to_source(quad: Quad, size: int) -> FloatArray:
    """The (2, 3) affine map from output pixel coordinates to source coordinates.

    Both use the pixel-centre convention of faceprep.types: the output image is ``size`` × ``size``
    pixels whose outer edges (-0.5 … size - 0.5) map onto the quad's corners, so output pixel (u, v)
    samples the source at ``A @ (u, v, 1)`` with
    ``A @ (u, v, 1) = TL + (u + 0.5) / size · (TR − TL) + (v + 0.5) / size · (BL − TL)``.
    This is exactly what the FFHQ script's PIL QUAD transform of ``quad + 0.5`` does.
    """
    c = np.asarray(quad.corners, dtype=np.float64)
    ex = (c[3] - c[0]) / size
    ey = (c[1] - c[0]) / size
    t = c[0] + 0.5 * (ex + ey)
    return np.stack([np.array([ex[0], ey[0], t[0]]), np.array([ex[1], ey[1], t[1]])])


def invert_affine(matrix: FloatArray) -> FloatArray:
    """Inverse of a (2, 3) affine map."""
    m = np.asarray(matrix, dtype=np.float64)
    lin = np.linalg.inv(m[:, :2])
    return np.concatenate([lin, -(lin @ m[:, 2:])], axis=1)


def source_to_output(quad: Quad, size: int) -> FloatArray:
    """The (2, 3) affine map from source coordinates to output pixel coordinates (inverse of
    :func:`output_to_source`)."""
    return invert_affine(output_to_source(quad, size))


def apply_affine(matrix: FloatArray, points: FloatArray) -> FloatArray:
    """Apply a (2, 3) affine map to (N, 2) points."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def transform_quad(quad: Quad, matrix: FloatArray) -> Quad:
    """The quad moved by a (2, 3) affine map (corner order kept)."""
    return Quad(apply_affine(matrix, quad.corners))


def similarity(
    angle_deg: float,
    scale: float = 1.0,
    translate: tuple[float, float] = (0.0, 0.0),
    center: tuple[float, float] = (0.0, 0.0),
) -> FloatArray:
    """A (2, 3) rotation-scale-translation map about ``center`` (angle counter-clockwise on screen
    is negative in y-down coordinates; positive ``angle_deg`` turns x towards y)."""
    a = np.radians(angle_deg)
    lin = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    cvec = np.asarray(center, dtype=np.float64)
    t = cvec - lin @ cvec + np.asarray(translate, dtype=np.float64)
    return np.concatenate([lin, t[:, None]], axis=1)


def quad_bounds(quad: Quad) -> tuple[float, float, float, float]:
    """Axis-aligned bounds (x0, y0, x1, y1) of the quad's corners, in source coordinates."""
    c = quad.corners
    return (float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 0].max()), float(c[:, 1].max()))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 for empty ones)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
