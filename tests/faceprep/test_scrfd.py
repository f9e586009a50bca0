"""SCRFD pieces without the network: letterbox geometry, anchors, decoding, NMS, output identification."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceprep.builtin.scrfd import (
    STRIDES,
    OutputLayout,
    anchor_centers,
    decode,
    distance2bbox,
    distance2kps,
    identify_outputs,
    letterbox,
    letterbox_geometry,
    nms,
)

SIZE = 640


@given(
    h=st.integers(1, 5000),
    w=st.integers(1, 5000),
    pts=st.lists(st.tuples(st.floats(-10, 5000), st.floats(-10, 5000)), min_size=1, max_size=8),
)
@settings(max_examples=200, deadline=None)
def test_letterbox_mapping_round_trips(h: int, w: int, pts: list[tuple[float, float]]) -> None:
    geo = letterbox_geometry(h, w, SIZE)
    assert max(geo.width, geo.height) == SIZE and 1 <= min(geo.width, geo.height) <= SIZE
    assert abs(geo.width / w - geo.height / h) <= 1.0 / min(h, w) + 1e-9  # aspect kept up to rounding
    p = np.array(pts)
    np.testing.assert_allclose(geo.to_source(geo.to_input(p)), p, rtol=1e-9, atol=1e-6)
    # The image's outer pixel edges land on the content's outer edges.
    corners = geo.to_input(np.array([[-0.5, -0.5], [w - 0.5, h - 0.5]]))
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [geo.width - 0.5, geo.height - 0.5]], atol=1e-9)


def test_letterbox_blob_content_and_padding() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :, 0] = 255  # red
    blob, geo = letterbox(img, SIZE)
    assert blob.shape == (1, 3, SIZE, SIZE) and blob.dtype == np.float32
    assert (geo.width, geo.height) == (640, 320)
    np.testing.assert_allclose(blob[0, 0, :320, :], (255 - 127.5) / 128)  # R channel first (RGB)
    np.testing.assert_allclose(blob[0, 1, :320, :], -127.5 / 128)
    np.testing.assert_allclose(blob[0, :, 320:, :], -127.5 / 128)  # padding below
    with pytest.raises(ValueError, match="uint8"):
        letterbox(img.astype(np.float32), SIZE)


def test_anchor_centers_order() -> None:
    c = anchor_centers(64, 16)  # 4x4 cells, 2 anchors each
    assert c.shape == (32, 2)
    np.testing.assert_array_equal(c[:6], [[0, 0], [0, 0], [16, 0], [16, 0], [32, 0], [32, 0]])
    np.testing.assert_array_equal(c[8], [0, 16])  # next row after 4 cells x 2 anchors


def test_distance_decoding() -> None:
    centers = np.array([[100.0, 50.0]])
    np.testing.assert_array_equal(distance2bbox(centers, np.array([[10.0, 20, 30, 40]])), [[90, 30, 130, 90]])
    kps = distance2kps(centers, np.arange(10.0)[None])
    assert kps.shape == (1, 5, 2)
    np.testing.assert_array_equal(kps[0, 2], [104, 55])


def test_nms_suppresses_overlaps_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=np.float64)
    scores = np.array([0.8, 0.9, 0.5, 0.7])
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [1, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.99), [1, 0, 3, 2])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.4).size == 0


def _fake_outputs(face_at: tuple[int, int], stride: int) -> tuple[list[np.ndarray], list[tuple[int, ...]]]:
    """Network outputs with one confident anchor at cell ``face_at`` of ``stride``, in a scrambled order."""
    outs: dict[tuple[str, int], np.ndarray] = {}
    for s in STRIDES:
        n = 2 * (SIZE // s) ** 2
        outs[("score", s)] = np.full((1, n, 1), 0.01, np.float32)
        outs[("bbox", s)] = np.ones((1, n, 4), np.float32)
        outs[("kps", s)] = np.zeros((1, n, 10), np.float32)
    cells = SIZE // stride
    idx = 2 * (face_at[1] * cells + face_at[0]) + 1  # second anchor of that cell
    outs[("score", stride)][0, idx, 0] = 0.95
    outs[("bbox", stride)][0, idx] = [1, 2, 3, 4]
    outs[("kps", stride)][0, idx] = [-1, -1, 1, -1, 0, 0, -1, 1, 1, 1]
    order = [("kps", 16), ("score", 32), ("bbox", 8), ("score", 8), ("kps", 8), ("bbox", 32), ("score", 16),
             ("bbox", 16), ("kps", 32)]  # fmt: skip
    arrays = [outs[k] for k in order]
    return arrays, [a.shape for a in arrays]


def test_identify_outputs_by_shape_and_decode() -> None:
    arrays, shapes = _fake_outputs(face_at=(5, 7), stride=16)
    layout = identify_outputs(shapes, SIZE)
    assert layout == OutputLayout(
        score={32: 1, 8: 3, 16: 6}, bbox={8: 2, 32: 5, 16: 7}, kps={16: 0, 8: 4, 32: 8}
    )
    boxes, scores, kps = decode(arrays, layout, SIZE, 0.5, 0.4)
    cx, cy = 5 * 16, 7 * 16
    np.testing.assert_allclose(boxes, [[cx - 16, cy - 32, cx + 48, cy + 64]])
    np.testing.assert_allclose(scores, [0.95], rtol=1e-6)
    np.testing.assert_allclose(kps[0, 0], [cx - 16, cy - 16])
    np.testing.assert_allclose(kps[0, 4], [cx + 16, cy + 16])
    # Without the batch dimension the same layout is found.
    assert identify_outputs([s[1:] for s in shapes], SIZE) == layout
    empty = decode(arrays, layout, SIZE, 0.99, 0.4)
    assert [a.shape for a in empty] == [(0, 4), (0,), (0, 5, 2)]


def test_identify_outputs_rejects_foreign_models() -> None:
    with pytest.raises(ValueError, match="unexpected SCRFD output"):
        identify_outputs([(1, 12800, 2)], SIZE)
    with pytest.raises(ValueError, match="lacks keypoint outputs"):
        identify_outputs([(1, 2 * (SIZE // s) ** 2, c) for s in STRIDES for c in (1, 4)], SIZE)
