"""In-plane rotation correction: re-detect tilted faces on a derotated crop and map the points back.

Detectors are trained on mostly upright faces; their keypoints drift as a face turns in the image
plane (SCRFD: the FFHQ square's corners move 5 % of its side at 15°, 14 % at 45°; YuNet's keypoints
hardly turn at all: at 90° its eye line is still horizontal). ``RotationCorrectingDetector`` wraps
any detector:

1. detect on the whole photo; if that finds no face at all, detect again on the photo turned by
   +90° and by −90° (a sideways photo: cheap, since only empty photos pay for it) and map back;
2. for each face that needs it, cut a square around it, rotated by the roll the eye line gives (a
   detector whose keypoints do not follow rotation also tries that angle ±90° and keeps the most
   confident upright re-detection), detect again, and repeat with the residual roll until it is
   below 1° (at most ``max_iter`` times);
3. map the upright detection's landmarks back to the photo.

The correction never costs a face: a re-detection counts only if, mapped back to the photo, it is
the same face (box IoU ≥ ``MATCH_IOU`` and centres within ``MATCH_CENTRE`` of the box side); when
none is, the plain detection is kept as it is. A corrected face keeps the plain detection's box and
score (an axis-aligned box in the photo, which is what box matching and the ``box`` aligner expect)
and takes only the landmarks from the upright re-detection.

Which faces "need it": for detectors whose keypoints follow rotation (attribute
``keypoints_follow_rotation``, default True), those with |roll| > ``threshold_deg``; for the others,
every face (their roll estimate cannot be trusted), which costs a few small re-detections per face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from faceprep.geometry import box_iou
from faceprep.hookspecs import Detector
from faceprep.types import Detection, FloatArray, ImageArray

Box = tuple[float, float, float, float]

CROP_FACTOR = 3.0  # crop side = CROP_FACTOR × the larger box side
MAX_CROP = 640  # crops are scaled down to at most this many pixels a side
CONVERGED_DEG = 1.0
MIRROR_ORDER = [1, 0, 2, 4, 3]  # landmark order of a horizontally mirrored face
MATCH_IOU = 0.3  # a re-detection mapped back must overlap the plain box at least this much …
MATCH_CENTRE = 0.3  # … and have its centre within this fraction of the plain box's longer side


def roll_deg(landmarks: FloatArray) -> float:
    """Angle of the eye line (image-left eye → image-right eye) against the x axis, y down, degrees."""
    d = np.asarray(landmarks, dtype=np.float64)[1] - np.asarray(landmarks, dtype=np.float64)[0]
    return float(np.degrees(np.arctan2(d[1], d[0])))


@dataclass(frozen=True)
class CropFrame:
    """A square crop of side ``size`` px whose x axis points along ``angle_deg`` in the photo.

    Crop pixel (centre convention) p maps to photo point ``center + R(angle) · (p − c) / scale`` with
    c = (size − 1) / 2.
    """

    center: tuple[float, float]
    angle_deg: float
    scale: float  # crop pixels per photo pixel
    size: int

    def _rot(self) -> FloatArray:
        t = np.radians(self.angle_deg)
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])

    def to_photo(self, points: FloatArray) -> FloatArray:
        c = (self.size - 1) / 2.0
        p = (np.asarray(points, dtype=np.float64) - c) / self.scale
        return np.asarray(p @ self._rot().T + np.asarray(self.center), dtype=np.float64)

    def to_crop(self, points: FloatArray) -> FloatArray:
        c = (self.size - 1) / 2.0
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.center)
        return np.asarray(p @ self._rot() * self.scale + c, dtype=np.float64)

    def cut(self, image: ImageArray) -> ImageArray:
        """The crop's pixels (bilinear; outside the photo is black)."""
        a = self._rot() / self.scale  # photo offset per crop pixel
        c = (self.size - 1) / 2.0
        t = np.asarray(self.center) - a @ np.array([c, c])
        # PIL samples in corner coordinates: shift by half a pixel on both sides.
        t_corner = t + 0.5 - a @ np.array([0.5, 0.5])
        coeffs = (a[0, 0], a[0, 1], t_corner[0], a[1, 0], a[1, 1], t_corner[1])
        out = Image.fromarray(image).transform(
            (self.size, self.size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
        )
        return np.asarray(out)


def same_face(plain: Detection, box: Box) -> bool:
    """Whether ``box`` (photo coordinates) is the face ``plain`` found: IoU and centre distance."""
    x0, y0, x1, y1 = plain.box
    side = max(x1 - x0, y1 - y0, 1.0)
    shift = np.hypot((box[0] + box[2] - x0 - x1) / 2.0, (box[1] + box[3] - y0 - y1) / 2.0)
    return box_iou(plain.box, box) >= MATCH_IOU and shift <= MATCH_CENTRE * side


def turn_to_photo(points: FloatArray, k: int, shape: tuple[int, ...]) -> FloatArray:
    """Map (N, 2) points of ``np.rot90(photo, k)`` (k = 1: counter-clockwise, 3: clockwise) back to
    the photo of ``shape`` (H, W, …)."""
    p = np.asarray(points, dtype=np.float64)
    h, w = shape[:2]
    if k % 4 == 1:  # turned[i, j] = photo[j, w - 1 - i]
        return np.stack([w - 1 - p[:, 1], p[:, 0]], axis=1)
    if k % 4 == 3:  # turned[i, j] = photo[h - 1 - j, i]
        return np.stack([p[:, 1], h - 1 - p[:, 0]], axis=1)
    raise ValueError(f"only quarter turns 1 and 3 are supported, got k={k}")


def _box_around(corners: FloatArray) -> Box:
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def _box_corners(box: Box) -> FloatArray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def frame_for(det: Detection, angle_deg: float) -> CropFrame:
    """A crop frame centred on the detection, CROP_FACTOR times its size, rotated by ``angle_deg``."""
    x0, y0, x1, y1 = det.box
    side = CROP_FACTOR * max(x1 - x0, y1 - y0, 1.0)
    size = int(min(MAX_CROP, max(32, round(side))))
    return CropFrame(((x0 + x1) / 2.0, (y0 + y1) / 2.0), angle_deg, size / side, size)


class RotationCorrectingDetector:
    """Wrap ``inner`` so that tilted faces get landmarks from an upright re-detection (see module doc).

    retry_turns: when the plain pass finds no face, also try the photo turned by ±90°.
    """

    def __init__(
        self,
        inner: Detector,
        threshold_deg: float = 10.0,
        max_iter: int = 4,
        keypoints_follow_rotation: bool | None = None,
        retry_turns: bool = True,
    ) -> None:
        self.inner = inner
        self.threshold_deg = threshold_deg
        self.max_iter = max_iter
        follows = getattr(inner, "keypoints_follow_rotation", True)
        self.follows = bool(follows if keypoints_follow_rotation is None else keypoints_follow_rotation)
        self.retry_turns = retry_turns
        self.name = str(getattr(inner, "name", type(inner).__name__))

    def detect(self, image: ImageArray) -> list[Detection]:
        found = self.inner.detect(image)
        if not found and self.retry_turns:
            found = self.detect_turned(image)
        return sorted((self.correct(image, det) for det in found), key=lambda d: -d.score)

    def detect_turned(self, image: ImageArray) -> list[Detection]:
        """Faces on the photo turned by +90°, else by −90°, mapped back to the photo (no correction)."""
        for k in (1, 3):
            turned = np.ascontiguousarray(np.rot90(image, k))
            faces = self.inner.detect(turned)
            if faces:
                return [
                    Detection(
                        box=_box_around(turn_to_photo(_box_corners(f.box), k, image.shape)),
                        score=f.score,
                        landmarks=turn_to_photo(f.landmarks, k, image.shape),
                        detector=f.detector,
                    )
                    for f in faces
                ]
        return []

    def correct(self, image: ImageArray, det: Detection) -> Detection:
        """``det`` with landmarks from an upright re-detection of the same face when it is tilted.

        The box and score stay the plain detection's; without a matching re-detection ``det`` itself
        comes back, so the correction never loses or moves a face.
        """
        roll = roll_deg(det.landmarks)
        if self.follows and abs(roll) <= self.threshold_deg:
            return det
        candidates = [roll] if self.follows else [roll, roll + 90.0, roll - 90.0]
        best: tuple[CropFrame, Detection, ImageArray] | None = None
        for angle in candidates:
            hit = self._redetect(image, det, angle)
            if hit is not None and (best is None or hit[1].score > best[1].score):
                best = hit
        if best is None:
            return det
        for _ in range(self.max_iter):
            frame, upright, _ = best
            residual = roll_deg(upright.landmarks)
            if abs(residual) < CONVERGED_DEG:
                break
            hit = self._redetect(image, det, frame.angle_deg + residual)
            if hit is None:
                break
            best = hit
        frame, upright = self._flip_average(*best)
        return Detection(det.box, det.score, frame.to_photo(upright.landmarks), det.detector)

    def _redetect(
        self, image: ImageArray, det: Detection, angle: float
    ) -> tuple[CropFrame, Detection, ImageArray] | None:
        """Detect on the crop rotated by ``angle``; the re-detection that is ``det``'s face (with its
        frame and the crop's pixels), if any.

        Each candidate's box is mapped back to the photo and compared with ``det`` there (IoU and
        centre distance, ``same_face``); among matches the best-overlapping one wins.
        """
        frame = frame_for(det, angle)
        crop = frame.cut(image)
        best, best_iou = None, 0.0
        for face in self.inner.detect(crop):
            box = _box_around(frame.to_photo(_box_corners(face.box)))
            overlap = box_iou(det.box, box)
            if same_face(det, box) and overlap > best_iou:
                best, best_iou = face, overlap
        return None if best is None else (frame, best, crop)

    def _flip_average(
        self, frame: CropFrame, upright: Detection, crop: ImageArray
    ) -> tuple[CropFrame, Detection]:
        """Average the upright landmarks with those of the mirrored crop (cancels left/right bias)."""
        faces = self.inner.detect(np.ascontiguousarray(crop[:, ::-1]))
        if not faces:
            return frame, upright
        mirrored = np.array([[frame.size - 1 - x, y] for x, y in (f.landmarks[2] for f in faces)])
        i = int(np.argmin(np.linalg.norm(mirrored - upright.landmarks[2], axis=1)))
        if np.linalg.norm(mirrored[i] - upright.landmarks[2]) > 0.25 * max(upright.eye_distance, 1.0):
            return frame, upright
        flipped = faces[i].landmarks[MIRROR_ORDER].copy()
        flipped[:, 0] = frame.size - 1 - flipped[:, 0]
        averaged = (upright.landmarks + flipped) / 2.0
        return frame, Detection(upright.box, upright.score, averaged, upright.detector)


def with_rotation_correction(detector: Detector, enabled: bool = True, **options: float) -> Detector:
    """The pipeline's hook: ``detector`` wrapped in ``RotationCorrectingDetector`` unless disabled."""
    if not enabled:
        return detector
    return RotationCorrectingDetector(detector, **options)  # type: ignore[arg-type]
