"""Quality filters: each measures one value of a face and compares it with a threshold.

Every filter returns a :class:`~faceprep.types.FilterResult` whose ``value`` is stored in the dataset's
metadata whether or not it passed, so a researcher can re-filter later without re-running. A threshold
of ``None`` disables the check (the value is still measured and stored, ``passed`` is True).

Filter names (the keys of ``metadata.jsonl``'s ``filters`` dict): ``score``, ``eye_distance``,
``filled``, ``blur``, ``yaw``, ``roll``, ``duplicate``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

import cv2
import imagehash
import numpy as np
from PIL import Image

from faceprep.types import Detection, FilterResult, FloatArray, ImageArray

BLUR_REFERENCE_SIZE = 128  # the face centre is resampled to this many pixels before measuring blur
DETECTOR_DEFAULT: Final = "detector"  # min_score: use the detector's ``default_min_score``
DEFAULT_MIN_SCORE = 0.6  # for detectors that declare no default_min_score
NO_DUPLICATE = 64.0  # "distance to the nearest kept face" when nothing was kept yet (phash has 64 bits)


@dataclass(frozen=True)
class FilterThresholds:
    """Thresholds for the quality filters; ``None`` disables a check (its value is still recorded).

    Defaults aim at a clean FFHQ-like training set without throwing away ordinary photos:
    min_score: detector confidence; ``"detector"`` (the default) takes the detector's own
    ``default_min_score`` (:data:`DEFAULT_MIN_SCORE` if it has none): SCRFD 0.6 (its real faces in the
    shared photos score >= 0.72, the dogs <= 0.54), YuNet 0.8 (real faces >= 0.86, dogs 0.77 and 0.65).
    min_eye_dist: eye distance in *source* pixels; 20 px is ~3× upsampling for a 256 px crop.
    max_filled: fraction of the crop that lay outside the photo and was synthesised by the fill; above
    ~0.3 the mirror-blur fill shows a ghost of the face itself.
    min_blur: normalised variance of Laplacian of the face centre (see :func:`blur_value`).
    max_yaw / max_roll: degrees, compared with the absolute value (see :func:`yaw_roll`). Roll is
    undone by the FFHQ alignment, so it is off by default.
    dedup_distance: a face whose perceptual hash lies within this Hamming distance of an already kept
    face is a near-duplicate.
    """

    min_score: float | Literal["detector"] | None = "detector"
    min_eye_dist: float | None = 20.0
    max_filled: float | None = 0.3
    min_blur: float | None = 15.0
    max_yaw: float | None = 50.0
    max_roll: float | None = None
    dedup_distance: int | None = 6

    def __post_init__(self) -> None:
        if isinstance(self.min_score, str) and self.min_score != DETECTOR_DEFAULT:
            raise ValueError(f"threshold min_score must be a number, None or {DETECTOR_DEFAULT!r}")
        for name in ("min_score", "min_eye_dist", "max_filled", "min_blur", "max_yaw", "max_roll"):
            value = getattr(self, name)
            if value == DETECTOR_DEFAULT:
                continue
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"threshold {name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.min_score, float | int) and self.min_score > 1:
            raise ValueError(f"threshold min_score must be in [0, 1], got {self.min_score}")
        if self.max_filled is not None and self.max_filled > 1:
            raise ValueError(f"threshold max_filled must be in [0, 1], got {self.max_filled}")
        if self.dedup_distance is not None and not 0 <= self.dedup_distance <= 64:
            raise ValueError(f"dedup_distance must be in [0, 64], got {self.dedup_distance}")

    def for_detector(self, detector: object) -> FilterThresholds:
        """These thresholds with ``min_score="detector"`` replaced by ``detector``'s own default."""
        if self.min_score != DETECTOR_DEFAULT:
            return self
        default = float(getattr(detector, "default_min_score", DEFAULT_MIN_SCORE))
        return dataclasses.replace(self, min_score=default)


def _at_least(name: str, value: float, threshold: float | None) -> FilterResult:
    return FilterResult(name, float(value), threshold is None or value >= threshold, threshold)


def _at_most(name: str, value: float, threshold: float | None) -> FilterResult:
    return FilterResult(name, float(value), threshold is None or abs(value) <= threshold, threshold)


# --- measurements ---------------------------------------------------------------------------------


def blur_value(crop: ImageArray) -> float:
    """Variance of the Laplacian of the face centre, comparable across output sizes.

    Takes the central half of the aligned crop (eyes to mouth in an FFHQ crop, so synthesised fill near
    the borders does not count), converts it to gray in [0, 255], resamples it to
    ``BLUR_REFERENCE_SIZE``² (area filter when shrinking, bicubic when enlarging) and returns the
    variance of the 4-neighbour Laplacian. Sharp faces measure ~50–500, visibly soft ones < 15.
    """
    if crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"crop must be (S, S, 3), got {crop.shape}")
    h, w = crop.shape[:2]
    centre = crop[h // 4 : h - h // 4, w // 4 : w - w // 4]
    gray = cv2.cvtColor(np.ascontiguousarray(centre), cv2.COLOR_RGB2GRAY).astype(np.float32)
    size = BLUR_REFERENCE_SIZE
    interp = cv2.INTER_AREA if gray.shape[0] >= size else cv2.INTER_CUBIC
    resized = cv2.resize(gray, (size, size), interpolation=interp)
    return float(cv2.Laplacian(resized, cv2.CV_32F, ksize=1).var())


def yaw_roll(landmarks: FloatArray) -> tuple[float, float]:
    """Approximate head yaw and roll in degrees from the 5 landmarks.

    roll = atan2(dy, dx) of the eye line (image-left eye → image-right eye); 0 for an upright face,
    positive when the face is turned clockwise on screen (y points down).

    yaw: the face midline runs from the eye midpoint m_e to the mouth midpoint m_m. The nose tip sits
    in front of that plane, so when the head turns by θ it moves sideways by about d·sin θ while the
    half eye distance shrinks to w·cos θ. With the nose depth d ≈ w (half the eye distance, true to
    ~20% for adult faces), the nose's signed offset from the midline divided by half the eye distance is
    r ≈ tan θ, so yaw = atan(r). Positive yaw: nose toward the image right (the subject looks to their
    left). It is a rough estimate (±10°) for ranking and thresholding, not a pose regressor.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_l, eye_r, nose = lm[0], lm[1], lm[2]
    e2e = eye_r - eye_l
    roll = math.degrees(math.atan2(e2e[1], e2e[0]))
    half_eye = float(np.hypot(*e2e)) / 2.0
    eye_mid = (eye_l + eye_r) / 2.0
    mid_dir = (lm[3] + lm[4]) / 2.0 - eye_mid
    length = float(np.hypot(*mid_dir))
    if half_eye < 1e-9 or length < 1e-9:
        return 90.0, roll  # degenerate: eyes or eyes-to-mouth collapsed, i.e. a profile view
    u = mid_dir / length
    right = np.array([u[1], -u[0]])  # perpendicular to the midline, image-right on an upright face
    offset = float(np.dot(nose - eye_mid, right))
    return math.degrees(math.atan(offset / half_eye)), roll


def phash(crop: ImageArray) -> imagehash.ImageHash:
    """64-bit perceptual hash (DCT) of an aligned crop."""
    return imagehash.phash(Image.fromarray(crop))


# --- filters --------------------------------------------------------------------------------------


def score_filter(detection: Detection, t: FilterThresholds) -> FilterResult:
    if t.min_score == DETECTOR_DEFAULT:
        raise ValueError("min_score='detector' must be resolved first: FilterThresholds.for_detector")
    return _at_least("score", detection.score, t.min_score)


def eye_distance_filter(detection: Detection, t: FilterThresholds) -> FilterResult:
    return _at_least("eye_distance", detection.eye_distance, t.min_eye_dist)


def filled_filter(filled_fraction: float, t: FilterThresholds) -> FilterResult:
    return _at_most("filled", filled_fraction, t.max_filled)


def blur_filter(crop: ImageArray, t: FilterThresholds) -> FilterResult:
    return _at_least("blur", blur_value(crop), t.min_blur)


def pose_filters(detection: Detection, t: FilterThresholds) -> tuple[FilterResult, FilterResult]:
    yaw, roll = yaw_roll(detection.landmarks)
    return _at_most("yaw", yaw, t.max_yaw), _at_most("roll", roll, t.max_roll)


def face_filters(
    detection: Detection, crop: ImageArray, filled_fraction: float, t: FilterThresholds
) -> tuple[FilterResult, ...]:
    """All per-face filters except ``duplicate`` (which needs the run's history: DuplicateIndex)."""
    return (
        score_filter(detection, t),
        eye_distance_filter(detection, t),
        filled_filter(filled_fraction, t),
        blur_filter(crop, t),
        *pose_filters(detection, t),
    )


class DuplicateIndex:
    """Perceptual hashes of the faces kept so far in a run (including earlier, resumed runs).

    ``check`` measures the Hamming distance to the nearest kept hash; ``add`` remembers a kept face. A
    linear scan over a growing uint64 array (no per-check conversion): ~0.1 ms per 100 000 kept faces.
    """

    def __init__(self, distance: int | None, hashes: Iterable[str] = ()) -> None:
        self.distance = distance
        self._hashes = np.empty(1024, dtype=np.uint64)  # grown by doubling; the first _count are used
        self._count = 0
        for h in hashes:
            self.add(h)

    def __len__(self) -> int:
        return self._count

    def add(self, hash_hex: str) -> None:
        if self._count == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.empty_like(self._hashes)])
        self._hashes[self._count] = np.uint64(int(hash_hex, 16))
        self._count += 1

    def nearest(self, hash_hex: str) -> int:
        """Hamming distance to the nearest remembered hash (``NO_DUPLICATE`` = 64 when empty)."""
        if not self._count:
            return int(NO_DUPLICATE)
        xor = np.bitwise_xor(self._hashes[: self._count], np.uint64(int(hash_hex, 16)))
        if hasattr(np, "bitwise_count"):  # numpy >= 2.0
            return int(np.bitwise_count(xor).min())
        return int(np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).min())

    def check(self, hash_hex: str) -> FilterResult:
        """``duplicate`` filter: passes when no kept face is within ``distance``."""
        d = self.nearest(hash_hex)
        passed = self.distance is None or d > self.distance
        threshold = None if self.distance is None else float(self.distance)
        return FilterResult("duplicate", float(d), passed, threshold)
