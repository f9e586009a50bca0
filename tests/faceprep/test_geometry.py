"""Geometry: the FFHQ square, the box square, the output↔source maps and the aligner plugins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceprep import plugins
from faceprep.geometry import (
    apply_affine,
    box_quad,
    ffhq_quad,
    invert_affine,
    output_to_source,
    quad_bounds,
    similarity,
    source_to_output,
    transform_quad,
)
from faceprep.types import Detection, Quad

coord = st.floats(-2000, 2000, allow_nan=False)


@st.composite
def faces(draw: st.DrawFn) -> np.ndarray:
    """Plausible 5-point landmarks: a canonical face under a random similarity, plus jitter."""
    canon = np.array([[-1.0, -0.6], [1.0, -0.6], [0.0, 0.2], [-0.7, 1.0], [0.7, 1.0]])
    jitter = np.array(draw(st.lists(st.floats(-0.3, 0.3), min_size=10, max_size=10))).reshape(5, 2)
    m = similarity(draw(st.floats(-180, 180)), draw(st.floats(2, 300)), (draw(coord), draw(coord)))
    return apply_affine(m, canon + jitter)


def assert_square(q: Quad) -> None:
    c = q.corners
    sides = [np.linalg.norm(c[(i + 1) % 4] - c[i]) for i in range(4)]
    np.testing.assert_allclose(sides, sides[0], rtol=1e-9)
    for i in range(4):
        a, b = c[(i + 1) % 4] - c[i], c[i - 1] - c[i]
        assert abs(np.dot(a, b)) <= 1e-9 * sides[0] ** 2


@settings(max_examples=200, deadline=None)
@given(lm=faces(), rotate=st.booleans(), scale=st.floats(0.2, 5))
def test_ffhq_quad_is_a_square(lm: np.ndarray, rotate: bool, scale: float) -> None:
    q = ffhq_quad(lm, rotate=rotate, scale=scale)
    assert_square(q)
    e2e = lm[1] - lm[0]
    e2m = (lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2
    expected = 2 * max(2.0 * np.linalg.norm(e2e), 1.8 * np.linalg.norm(e2m)) * scale
    assert q.side == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(q.center, (lm[0] + lm[1]) / 2 + 0.1 * e2m, atol=1e-6)
    if not rotate:
        assert q.angle_deg == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    lm=faces(),
    angle=st.floats(-180, 180),
    scale=st.floats(0.1, 10),
    t=st.tuples(coord, coord),
    shift=st.tuples(st.floats(-0.5, 0.5), st.floats(-0.5, 0.5)),
)
def test_ffhq_quad_is_equivariant(
    lm: np.ndarray, angle: float, scale: float, t: tuple[float, float], shift: tuple[float, float]
) -> None:
    m = similarity(angle, scale, t)
    moved = ffhq_quad(apply_affine(m, lm), shift=shift).corners
    expected = transform_quad(ffhq_quad(lm, shift=shift), m).corners
    np.testing.assert_allclose(moved, expected, atol=1e-6 * max(1.0, np.abs(expected).max()))
    # without rotation only scale and translation carry over
    s = similarity(0.0, scale, t)
    np.testing.assert_allclose(
        ffhq_quad(apply_affine(s, lm), rotate=False).corners,
        transform_quad(ffhq_quad(lm, rotate=False), s).corners,
        atol=1e-6 * max(1.0, np.abs(expected).max()),
    )


def test_ffhq_quad_upright_face_and_shift() -> None:
    lm = np.array([[40.0, 50], [60, 50], [50, 60], [42, 70], [58, 70]])
    q = ffhq_quad(lm)
    # e2e = 20, e2m = 20 → half side = max(40, 36) = 40, centre = (50, 52)
    np.testing.assert_allclose(q.corners, [[10, 12], [10, 92], [90, 92], [90, 12]])
    shifted = ffhq_quad(lm, shift=(0.5, -0.25))
    np.testing.assert_allclose(shifted.center, [70, 42])
    assert ffhq_quad(lm, scale=1.5).side == pytest.approx(120)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        ffhq_quad(lm[:4])
    with pytest.raises(ValueError, match="degenerate"):
        ffhq_quad(np.zeros((5, 2)))


@settings(max_examples=100, deadline=None)
@given(x0=coord, y0=coord, w=st.floats(1, 500), h=st.floats(1, 500), scale=st.floats(0.5, 3))
def test_box_quad_square_on_box(x0: float, y0: float, w: float, h: float, scale: float) -> None:
    q = box_quad((x0, y0, x0 + w, y0 + h), scale=scale)
    assert_square(q)
    assert q.angle_deg == pytest.approx(0.0, abs=1e-9)
    assert q.side == pytest.approx(max(w, h) * scale, rel=1e-9)
    np.testing.assert_allclose(q.center, [x0 + w / 2, y0 + h / 2], atol=1e-6)
    if scale >= 1:
        bx0, by0, bx1, by1 = quad_bounds(q)
        tol = 1e-6 * (1 + abs(x0) + abs(y0))
        assert bx0 <= x0 + tol and by0 <= y0 + tol and bx1 >= x0 + w - tol and by1 >= y0 + h - tol


def test_box_quad_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="box"):
        box_quad((10, 10, 5, 20))
    with pytest.raises(ValueError, match="scale"):
        box_quad((0, 0, 5, 5), scale=0)


@settings(max_examples=100, deadline=None)
@given(lm=faces(), size=st.integers(64, 1024))
def test_output_to_source_maps_pixel_edges_to_corners(lm: np.ndarray, size: int) -> None:
    q = ffhq_quad(lm)
    a = output_to_source(q, size)
    edges = np.array([[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]])
    tol = 1e-6 * max(1.0, np.abs(q.corners).max())
    np.testing.assert_allclose(apply_affine(a, edges), q.corners, atol=tol)
    back = apply_affine(source_to_output(q, size), q.corners)
    np.testing.assert_allclose(back, edges, atol=1e-6 * size)
    np.testing.assert_allclose(invert_affine(invert_affine(a)), a, atol=tol)


def test_aligner_plugins() -> None:
    lm = np.array([[40.0, 50], [60, 50], [50, 60], [42, 70], [58, 70]])
    det = Detection(box=(30.0, 35.0, 70.0, 80.0), score=0.9, landmarks=lm)
    ffhq = plugins.create("aligner", "ffhq", rotate=True, scale=1.2, shift=(0.1, 0.0))
    np.testing.assert_allclose(
        ffhq.align(det, (100, 100)).corners, ffhq_quad(lm, scale=1.2, shift=(0.1, 0.0)).corners
    )
    box = plugins.create("aligner", "box", scale=1.5)
    np.testing.assert_allclose(box.align(det, (100, 100)).corners, box_quad(det.box, scale=1.5).corners)
    assert plugins.create("aligner", "box", rotate=True).align(det, (100, 100)).side == pytest.approx(45)
    for name in ("ffhq", "box"):
        with pytest.raises(ValueError, match="scale"):
            plugins.create("aligner", name, scale=-1.0)
