"""Quality filters: known values on synthetic inputs, signs and conventions, thresholds, dedup index."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceprep import filters
from faceprep.filters import DuplicateIndex, FilterThresholds, blur_value, yaw_roll
from faceprep.types import Detection

# A frontal face in image coordinates (y down): eyes, nose, mouth corners.
FRONTAL = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.0], [45.0, 90.0], [75.0, 90.0]])


def _textured(size: int, seed: int = 0) -> np.ndarray:
    """A sharp random-checker RGB image (lots of high-frequency energy)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(cells, np.ones((4, 4, 1), dtype=np.uint8)))


def _u8(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def _rotate(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points - centre) @ rot.T + centre


def test_blur_sharp_vs_blurred_and_flat() -> None:
    sharp = _textured(256)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3.0)
    v_sharp, v_blur = blur_value(sharp), blur_value(_u8(blurred))
    assert v_sharp > 1000.0
    assert v_blur < v_sharp / 20
    assert blur_value(np.full((256, 256, 3), 128, np.uint8)) == pytest.approx(0.0, abs=1e-6)


def test_blur_matches_direct_laplacian_variance_at_reference_size() -> None:
    # At 2× the reference size a 2×2 area filter reproduces the centre exactly when pixels come in 2×2 blocks.
    small = _textured(filters.BLUR_REFERENCE_SIZE, seed=3)
    big = np.kron(np.pad(small, ((64, 64), (64, 64), (0, 0)), mode="edge"), np.ones((2, 2, 1), np.uint8))
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    expected = float(cv2.Laplacian(gray, cv2.CV_32F, ksize=1).var())
    assert blur_value(big) == pytest.approx(expected, rel=1e-4)


def test_blur_is_comparable_across_output_sizes() -> None:
    base = cv2.GaussianBlur(_textured(1024, seed=1), (0, 0), 2.0)
    values = [
        blur_value(_u8(cv2.resize(base, (s, s), interpolation=cv2.INTER_AREA))) for s in (256, 512, 1024)
    ]
    assert max(values) / min(values) < 1.5  # same picture, different pixel count: similar value


def test_blur_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="crop must be"):
        blur_value(np.zeros((64, 64), np.uint8))


@settings(max_examples=40, deadline=None)
@given(st.floats(-89.0, 89.0))
def test_roll_equals_in_plane_rotation_and_yaw_is_invariant(angle: float) -> None:
    yaw0, roll0 = yaw_roll(FRONTAL)
    rotated = _rotate(FRONTAL, angle, np.array([60.0, 70.0]))
    yaw, roll = yaw_roll(rotated)
    assert roll0 == pytest.approx(0.0, abs=1e-9)
    assert roll == pytest.approx(angle, abs=1e-6)
    assert yaw == pytest.approx(yaw0, abs=1e-6)


def test_yaw_zero_frontal_and_sign_follows_nose() -> None:
    assert yaw_roll(FRONTAL)[0] == pytest.approx(0.0, abs=1e-9)
    right = FRONTAL.copy()
    right[2, 0] += 10.0  # nose 10 px toward image right, half eye distance is 20 px
    left = FRONTAL.copy()
    left[2, 0] -= 10.0
    assert yaw_roll(right)[0] == pytest.approx(math.degrees(math.atan(0.5)))
    assert yaw_roll(left)[0] == pytest.approx(-math.degrees(math.atan(0.5)))


def test_yaw_of_projected_3d_head_tracks_true_angle() -> None:
    # Orthographic projection of a simple 3D face (nose depth = half eye distance) turned by θ.
    face3d = np.array([[-20, -20, 0], [20, -20, 0], [0, 0, 20], [-15, 20, 0], [15, 20, 0]], dtype=np.float64)
    for theta in (-40.0, -15.0, 0.0, 20.0, 45.0):
        a = math.radians(theta)
        x = face3d[:, 0] * math.cos(a) + face3d[:, 2] * math.sin(a)
        yaw, _ = yaw_roll(np.stack([x + 100, face3d[:, 1] + 100], axis=1))
        assert yaw == pytest.approx(theta, abs=1e-6)


def _det(score: float = 0.9, landmarks: np.ndarray = FRONTAL) -> Detection:
    return Detection(box=(30.0, 30.0, 90.0, 110.0), score=score, landmarks=landmarks, detector="test")


def test_face_filters_values_and_thresholds() -> None:
    t = FilterThresholds(min_score=0.5, min_eye_dist=30.0, max_filled=0.3, min_blur=10.0, max_yaw=30.0)
    results = {f.name: f for f in filters.face_filters(_det(0.8), _textured(256), 0.1, t)}
    assert list(results) == ["score", "eye_distance", "filled", "blur", "yaw", "roll"]
    assert results["score"].value == pytest.approx(0.8) and results["score"].passed
    assert results["eye_distance"].value == pytest.approx(40.0) and results["eye_distance"].passed
    assert results["filled"].threshold == 0.3 and results["filled"].passed
    assert results["roll"].threshold is None and results["roll"].passed  # roll check off by default
    assert all(f.passed for f in results.values())

    flat = np.full((256, 256, 3), 90, np.uint8)
    failing = {f.name: f for f in filters.face_filters(_det(0.4), flat, 0.5, t)}
    assert {n for n, f in failing.items() if not f.passed} == {"score", "filled", "blur"}
    assert failing["filled"].value == pytest.approx(0.5)  # value kept even when failing


def test_yaw_threshold_uses_absolute_value() -> None:
    turned = FRONTAL.copy()
    turned[2, 0] -= 18.0  # atan(0.9) ≈ -42°
    yaw, _roll = filters.pose_filters(_det(landmarks=turned), FilterThresholds(max_yaw=30.0))
    assert yaw.value < -40 and not yaw.passed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_score": 1.5},
        {"min_score": "auto"},
        {"max_filled": -0.1},
        {"min_blur": float("nan")},
        {"dedup_distance": 65},
    ],
)
def test_thresholds_validated(kwargs: dict[str, Any]) -> None:  # Any: bad values, rejected at run time
    with pytest.raises(ValueError, match="must be"):
        FilterThresholds(**kwargs)


def test_min_score_defaults_to_the_detectors_own() -> None:
    class Picky:
        default_min_score = 0.8

    assert FilterThresholds().for_detector(Picky()).min_score == 0.8
    assert FilterThresholds().for_detector(object()).min_score == filters.DEFAULT_MIN_SCORE
    assert FilterThresholds(min_score=0.3).for_detector(Picky()).min_score == 0.3  # the user's wins
    assert FilterThresholds(min_score=None).for_detector(Picky()).min_score is None  # off stays off
    with pytest.raises(ValueError, match="resolved first"):
        filters.score_filter(_det(score=0.9), FilterThresholds())


def test_duplicate_index_hamming_distance() -> None:
    index = DuplicateIndex(distance=4)
    first = filters.phash(_textured(256, seed=5))
    other = filters.phash(_textured(256, seed=6))
    assert index.check(str(first)).value == filters.NO_DUPLICATE and index.check(str(first)).passed
    index.add(str(first))
    same = index.check(str(filters.phash(_u8(cv2.GaussianBlur(_textured(256, seed=5), (0, 0), 0.7)))))
    assert same.value <= 4 and not same.passed
    assert index.nearest(str(other)) == (first - other)  # imagehash's own Hamming distance
    flipped = f"{int(str(first), 16) ^ 0b10110:016x}"  # exactly 3 bits differ
    assert index.nearest(flipped) == 3
    assert DuplicateIndex(None, [str(first)]).check(str(first)).passed  # None disables the check
    assert len(DuplicateIndex(4, [str(first), str(other)])) == 2
