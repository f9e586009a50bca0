"""Plumbing every detector plugin needs, so that a plugin module holds only its model-specific code.

A detector plugin (built-in ``faceprep.builtin.scrfd`` or a package such as ``faceprep-yunet``)
uses these to check its options and input the same way, to turn raw network output into sorted
``Detection`` records, to say why it cannot run (``StageSpec.available``) and to register itself::

    faceprep_detectors = detector_hook("mine", MyDetector, "what it is", available=..., priority=5)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import numpy as np

from faceprep.hookspecs import StageSpec, hookimpl
from faceprep.types import Detection, FloatArray, ImageArray


def check_thresholds(score_threshold: float, nms_threshold: float) -> None:
    """Raise ValueError unless 0 ≤ score ≤ 1 and 0 < NMS IoU ≤ 1."""
    if not 0.0 <= score_threshold <= 1.0 or not 0.0 < nms_threshold <= 1.0:
        raise ValueError(f"thresholds out of range: score {score_threshold}, nms {nms_threshold}")


def check_num_threads(num_threads: int) -> int:
    """The thread count as an int ≥ 0 (0: the runtime's default); ValueError otherwise."""
    if int(num_threads) != num_threads or num_threads < 0:
        raise ValueError(f"num_threads must be an integer >= 0, got {num_threads!r}")
    return int(num_threads)


def check_image(image: ImageArray) -> None:
    """Raise ValueError unless ``image`` is an (H, W, 3) uint8 RGB array (the Detector protocol)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: {image.shape}")


def to_detections(
    corners: FloatArray,
    scores: FloatArray,
    landmarks: FloatArray,
    image_shape: tuple[int, ...],
    name: str,
) -> list[Detection]:
    """Detections, highest score first, from source-pixel arrays.

    corners: (N, 2, 2) box corners ((x0, y0), (x1, y1)), clipped here to the photo's pixel area;
    scores: (N,), clipped to [0, 1]; landmarks: (N, 5, 2).
    """
    h, w = image_shape[:2]
    boxes = np.clip(np.asarray(corners, dtype=np.float64), -0.5, [w - 0.5, h - 0.5])
    found = [
        Detection(
            box=(float(b[0, 0]), float(b[0, 1]), float(b[1, 0]), float(b[1, 1])),
            score=float(min(1.0, max(0.0, s))),
            landmarks=np.asarray(lm, dtype=np.float64),
            detector=name,
        )
        for b, s, lm in zip(boxes, np.asarray(scores, dtype=np.float64), landmarks, strict=True)
    ]
    return sorted(found, key=lambda d: -d.score)


def missing_module(module: str, package: str | None = None) -> str | None:
    """None when ``module`` can be imported, else "<package> is not installed" (without importing it)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"{package or module} is not installed"


def detector_hook(
    name: str,
    factory: Callable[..., object],
    description: str,
    *,
    available: Callable[[], str | None] | None = None,
    priority: int = 0,
) -> Callable[[], Sequence[StageSpec]]:
    """The ``faceprep_detectors`` hook implementation for one detector; bind it under that name."""
    spec = StageSpec(name, factory, description, available=available, priority=priority)

    @hookimpl
    def faceprep_detectors() -> Sequence[StageSpec]:
        return [spec]

    return faceprep_detectors
