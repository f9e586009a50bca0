"""Rotation correction: crop-frame geometry, pass-through of upright faces, and a real rotated portrait."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceprep.builtin.scrfd import ScrfdDetector
from faceprep.detection_eval import rotate_photo, rotation_errors
from faceprep.rotation import (
    CropFrame,
    RotationCorrectingDetector,
    roll_deg,
    turn_to_photo,
    with_rotation_correction,
)
from faceprep.types import Detection, ImageArray


def test_rotate_photo_map() -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    img[5, 30] = 255
    turned, affine = rotate_photo(img, 90)
    assert turned.shape == (40, 20, 3)
    x, y = affine[:, :2] @ [30, 5] + affine[:, 2]
    assert turned[round(y), round(x)].max() > 100


def test_roll_deg() -> None:
    lm = np.array([[0.0, 0.0], [10.0, 10.0], [5, 5], [0, 10], [10, 20]])
    assert roll_deg(lm) == pytest.approx(45.0)
    assert roll_deg(lm[[1, 0, 2, 4, 3]]) == pytest.approx(-135.0)


@given(
    cx=st.floats(-100, 2000),
    cy=st.floats(-100, 2000),
    angle=st.floats(-180, 180),
    scale=st.floats(0.05, 4),
    size=st.integers(8, 640),
    pts=st.lists(st.tuples(st.floats(-50, 700), st.floats(-50, 700)), min_size=1, max_size=6),
)
@settings(max_examples=150, deadline=None)
def test_crop_frame_round_trip(
    cx: float, cy: float, angle: float, scale: float, size: int, pts: list[tuple[float, float]]
) -> None:
    frame = CropFrame((cx, cy), angle, scale, size)
    p = np.array(pts)
    np.testing.assert_allclose(frame.to_crop(frame.to_photo(p)), p, atol=1e-6)
    centre = frame.to_photo(np.array([[(size - 1) / 2, (size - 1) / 2]]))
    np.testing.assert_allclose(centre[0], [cx, cy], atol=1e-6)
    step = frame.to_photo(np.array([[0.0, 0.0], [1.0, 0.0]]))  # one crop pixel along x
    d = step[1] - step[0]
    assert np.hypot(*d) == pytest.approx(1 / scale)
    wrapped = (np.degrees(np.arctan2(d[1], d[0])) - angle + 180.0) % 360.0 - 180.0  # ±180° are one angle
    assert min(abs(wrapped), 360.0 - abs(wrapped)) == pytest.approx(0.0, abs=1e-6)


def test_cut_matches_plain_crop_and_rot90() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    straight = CropFrame((24.5, 19.5), 0.0, 1.0, 10).cut(img)  # pixels 20..29 x, 15..24 y
    np.testing.assert_array_equal(straight, img[15:25, 20:30])
    turned = CropFrame((24.5, 19.5), 90.0, 1.0, 10).cut(img)  # crop x runs down the photo
    np.testing.assert_array_equal(turned, np.rot90(img[15:25, 20:30], k=1))


class _Upright:
    name = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: ImageArray) -> list[Detection]:
        self.calls += 1
        lm = np.array([[10.0, 10], [20, 10.5], [15, 15], [11, 20], [19, 20]])
        return [Detection((5, 5, 25, 25), 0.9, lm, "fake")]


def test_upright_faces_are_not_redetected() -> None:
    inner = _Upright()
    wrapped = with_rotation_correction(inner)
    assert isinstance(wrapped, RotationCorrectingDetector) and wrapped.name == "fake"
    found = wrapped.detect(np.zeros((30, 30, 3), np.uint8))
    assert inner.calls == 1 and len(found) == 1 and found[0].score == 0.9
    assert with_rotation_correction(inner, enabled=False) is inner


@given(h=st.integers(1, 30), w=st.integers(1, 30), k=st.sampled_from([1, 3]), data=st.data())
@settings(max_examples=60, deadline=None)
def test_turn_to_photo_inverts_rot90(h: int, w: int, k: int, data: st.DataObject) -> None:
    y, x = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    photo = np.zeros((h, w, 3), np.uint8)
    photo[y, x] = 255
    turned = np.rot90(photo, k)
    ty, tx = np.argwhere(turned[..., 0])[0]
    np.testing.assert_allclose(turn_to_photo(np.array([[tx, ty]], float), k, photo.shape), [[x, y]])


class _Markers:
    """A fake detector: a "face" is a red dot (image-left eye), a green dot (image-right eye) and a
    blue dot (mouth centre); it finds the face only when the eye line is within ±30° of horizontal,
    like a detector that knows upright faces only. Its keypoints are exact."""

    name = "markers"

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: ImageArray) -> list[Detection]:
        self.calls += 1
        rgb = image.astype(np.float64)
        points = []
        for c in range(3):
            weight = np.clip(rgb[..., c] - np.delete(rgb, c, axis=2).max(axis=2), 0, None)
            if weight.sum() < 100:
                return []
            ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
            points.append([(xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()])
        left, right, mouth = np.array(points)
        if abs(roll_deg(np.array([left, right]))) > 30:
            return []
        half = 0.35 * (right - left)
        lm = np.array([left, right, ((left + right) / 2 + mouth) / 2, mouth - half, mouth + half])
        pad = np.linalg.norm(right - left)
        lo, hi = lm.min(axis=0) - pad, lm.max(axis=0) + pad
        return [Detection((lo[0], lo[1], hi[0], hi[1]), 0.9, lm, "markers")]


def _dot(image: ImageArray, x: int, y: int, channel: int) -> None:
    image[y - 1 : y + 2, x - 1 : x + 2, channel] = 255


def test_sideways_photo_is_found_by_the_turn_retry() -> None:
    photo = np.zeros((100, 140, 3), np.uint8)
    _dot(photo, 70, 40, 0)  # eye line points down the photo: the face is turned by 90°
    _dot(photo, 70, 60, 1)
    _dot(photo, 50, 50, 2)  # mouth at eye centre + rot90(eye-to-eye)
    inner = _Markers()
    assert inner.detect(photo) == []
    assert RotationCorrectingDetector(inner, retry_turns=False).detect(photo) == []
    found = RotationCorrectingDetector(inner).detect(photo)
    assert len(found) == 1
    np.testing.assert_allclose(found[0].landmarks[:2], [[70, 40], [70, 60]], atol=0.5)
    x0, y0, x1, y1 = found[0].box
    assert x0 < 50 < x1 and y0 < 40 and y1 > 60 and found[0].score == 0.9


class _NeighbourOnCrops:
    """Finds a tilted face on the whole photo; on any crop it finds only another face near a corner
    (or nothing, if ``nothing_on_crops``)."""

    name = "neighbour"

    def __init__(self, nothing_on_crops: bool = False) -> None:
        self.nothing_on_crops = nothing_on_crops

    def detect(self, image: ImageArray) -> list[Detection]:
        lm = np.array([[100.0, 100], [120, 120], [103, 118], [92, 126], [108, 138]])  # roll 45°
        if image.shape[:2] == (300, 300):
            return [Detection((80, 85, 135, 145), 0.8, lm, "neighbour")]
        if self.nothing_on_crops:
            return []
        return [Detection((0, 0, 20, 20), 0.99, lm / 10, "neighbour")]


@pytest.mark.parametrize("nothing", [False, True])
def test_correction_keeps_the_plain_face_without_a_matching_redetection(nothing: bool) -> None:
    inner = _NeighbourOnCrops(nothing)
    plain = inner.detect(np.zeros((300, 300, 3), np.uint8))[0]
    (found,) = RotationCorrectingDetector(inner).detect(np.zeros((300, 300, 3), np.uint8))
    assert found.box == plain.box and found.score == plain.score
    np.testing.assert_array_equal(found.landmarks, plain.landmarks)


@pytest.mark.slow
def test_scrfd_rotated_portrait_gives_same_quad(scrfd: ScrfdDetector, portrait: ImageArray) -> None:
    inner = scrfd
    errors = rotation_errors(RotationCorrectingDetector(inner), portrait, [0, 15, 45, 90, -45])
    assert max(errors) < 0.04, errors
    # Without the correction the same detector is clearly off at 90° (shows the test can fail).
    uncorrected = RotationCorrectingDetector(inner, threshold_deg=360.0)
    assert rotation_errors(uncorrected, portrait, [90])[0] > 0.1
