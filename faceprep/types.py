"""Small typed records that the pipeline stages pass to each other.

Coordinates are pixel coordinates in the *source* image (after EXIF orientation), x to the right and
y down, with pixel centres at integer positions (pixel (0, 0) covers [-0.5, 0.5]²).

The five landmarks are, in order: the eye on the image-left side, the eye on the image-right side,
the nose tip, the image-left mouth corner, the image-right mouth corner (SCRFD / RetinaFace order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
ImageArray = NDArray[np.uint8]  # (H, W, 3) RGB uint8

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


@dataclass(frozen=True, eq=False)
class Detection:
    """One face found by a detector.

    box: (x0, y0, x1, y1); score in [0, 1]; landmarks: (5, 2) in LANDMARK_NAMES order.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: FloatArray
    detector: str = ""

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


@dataclass(frozen=True, eq=False)
class Quad:
    """An oriented square in source coordinates.

    corners: (4, 2) in the order top-left, bottom-left, bottom-right, top-right of the *output*
    image (the order PIL's QUAD transform and the FFHQ script use).
    """

    corners: FloatArray

    @property
    def center(self) -> FloatArray:
        return np.asarray(self.corners.mean(axis=0), dtype=np.float64)

    @property
    def side(self) -> float:
        return float(np.linalg.norm(self.corners[3] - self.corners[0]))

    @property
    def angle_deg(self) -> float:
        """Rotation of the square's top edge against the image x axis, in degrees."""
        d = self.corners[3] - self.corners[0]
        return float(np.degrees(np.arctan2(d[1], d[0])))


@dataclass(frozen=True, eq=False)
class FillContext:
    """What a fill that asks for it (``wants_context = True``) learns about the face it fills.

    quad: (4, 2) corners of the crop square in *canvas* pixel coordinates (pixel centres at integers,
    Quad's corner order: top-left, bottom-left, bottom-right, top-right of the output); size: the output
    crop's side in pixels; source, face_index: which face this is (e.g. to seed a generative fill).
    """

    quad: FloatArray
    size: int
    source: str = ""
    face_index: int = 0


@dataclass(frozen=True)
class FilterResult:
    """Value a quality filter measured, and whether it passed its threshold."""

    name: str
    value: float
    passed: bool
    threshold: float | None = None


@dataclass(frozen=True, eq=False)
class FaceCrop:
    """One aligned face: the pixels and everything the dataset writer records about it."""

    image: ImageArray  # (S, S, 3) RGB uint8
    detection: Detection
    quad: Quad
    face_index: int
    filled_fraction: float
    filters: tuple[FilterResult, ...] = ()
    source: str = ""
    fill_record: dict[str, Any] | None = None  # how a recording fill (``generated``) made the outside

    @property
    def rejected_by(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.filters if not f.passed)

    @property
    def kept(self) -> bool:
        return not self.rejected_by

    def record(self) -> dict[str, Any]:
        """The JSON-serialisable metadata line (without ``file_name``)."""
        return {
            "source": self.source,
            "face_index": self.face_index,
            "box": [round(float(v), 2) for v in self.detection.box],
            "score": round(float(self.detection.score), 4),
            "landmarks": np.round(self.detection.landmarks, 2).tolist(),
            "quad": np.round(self.quad.corners, 2).tolist(),
            "filled_fraction": round(float(self.filled_fraction), 4),
            "detector": self.detection.detector,
            "filters": {f.name: round(float(f.value), 4) for f in self.filters},
            "rejected_by": list(self.rejected_by),
            **({"fill": dict(self.fill_record)} if self.fill_record else {}),
        }


@dataclass(frozen=True)
class SourceError:
    """A source file that could not be processed, and why."""

    path: str
    reason: str

    def record(self) -> dict[str, str]:
        return {"file": self.path, "reason": self.reason}


class ImageLoadError(Exception):
    """A file could not be read as an image; the message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
