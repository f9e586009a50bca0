"""SCRFD face detector (InsightFace) through onnxruntime, registered as the built-in ``scrfd`` stage.

Pipeline: letterbox the photo into the model's square input (keep the aspect ratio, scale with an
anti-aliased filter, pad right/bottom), normalise ``(rgb − 127.5) / 128``, run the network, decode the
three strides (8, 16, 32; two anchors per cell; box = distances to the anchor centre, keypoints =
offsets from it, both in units of the stride), drop scores below the threshold, greedy NMS, and map
boxes and the five keypoints back to source pixels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from faceprep import detectors
from faceprep.models import ENV_MODEL, InvalidModelError, ModelUnavailableError, resolve_scrfd_model
from faceprep.types import Detection, FloatArray, ImageArray

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
MEAN, STD = 127.5, 128.0


# ----------------------------------------------------------------------------- letterbox (pure)


@dataclass(frozen=True)
class Letterbox:
    """How a source image was placed in the square network input (top-left aligned, then padding).

    Pixel centres follow faceprep.types: source x maps to ``(x + 0.5) * sx − 0.5`` in the input.
    """

    sx: float
    sy: float
    width: int  # resized content size inside the input square
    height: int

    def to_input(self, points: FloatArray) -> FloatArray:
        p = np.asarray(points, dtype=np.float64)
        return np.stack([(p[..., 0] + 0.5) * self.sx - 0.5, (p[..., 1] + 0.5) * self.sy - 0.5], axis=-1)

    def to_source(self, points: FloatArray) -> FloatArray:
        p = np.asarray(points, dtype=np.float64)
        return np.stack([(p[..., 0] + 0.5) / self.sx - 0.5, (p[..., 1] + 0.5) / self.sy - 0.5], axis=-1)


def letterbox_geometry(height: int, width: int, size: int) -> Letterbox:
    """Scale (h, w) to fit in size×size keeping the aspect ratio (the long side becomes ``size``)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    scale = size / max(height, width)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    return Letterbox(sx=new_w / width, sy=new_h / height, width=new_w, height=new_h)


def letterbox(image: ImageArray, size: int) -> tuple[NDArray[np.float32], Letterbox]:
    """The (1, 3, size, size) float32 network input for an (H, W, 3) uint8 RGB image, and its geometry."""
    detectors.check_image(image)
    geo = letterbox_geometry(image.shape[0], image.shape[1], size)
    if (geo.width, geo.height) == (image.shape[1], image.shape[0]):
        resized = image
    else:
        resized = np.asarray(
            Image.fromarray(image).resize((geo.width, geo.height), Image.Resampling.BILINEAR)
        )
    blob = np.full((1, 3, size, size), (0.0 - MEAN) / STD, dtype=np.float32)
    blob[0, :, : geo.height, : geo.width] = (resized.transpose(2, 0, 1).astype(np.float32) - MEAN) / STD
    return blob, geo


# ----------------------------------------------------------------------------- decoding (pure)


def anchor_centers(size: int, stride: int, num_anchors: int = NUM_ANCHORS) -> FloatArray:
    """(N, 2) anchor centres (x, y) in input pixels: row-major cells, each repeated ``num_anchors`` times."""
    cells = size // stride
    ys, xs = np.mgrid[:cells, :cells]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64) * stride
    return np.repeat(centers, num_anchors, axis=0)


def distance2bbox(centers: FloatArray, distances: FloatArray) -> FloatArray:
    """(N, 4) boxes x0, y0, x1, y1 from distances (left, top, right, bottom) to the centres."""
    return np.concatenate([centers - distances[:, :2], centers + distances[:, 2:4]], axis=1)


def distance2kps(centers: FloatArray, offsets: FloatArray) -> FloatArray:
    """(N, K, 2) keypoints from (N, 2K) offsets to the centres."""
    return centers[:, None, :] + offsets.reshape(len(offsets), -1, 2)


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> NDArray[np.intp]:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


@dataclass(frozen=True)
class OutputLayout:
    """Which network output holds the scores, boxes and keypoints of each stride (found by shape)."""

    score: dict[int, int]
    bbox: dict[int, int]
    kps: dict[int, int]


def identify_outputs(shapes: Sequence[Sequence[Any]], size: int) -> OutputLayout:
    """Map output shapes ((1,) N, C) to strides by N = 2·(size/stride)² and to roles by C (1, 4, 10)."""
    by_count = {NUM_ANCHORS * (size // s) ** 2: s for s in STRIDES}
    roles: dict[int, dict[int, int]] = {1: {}, 4: {}, 10: {}}
    for index, shape in enumerate(shapes):
        dims = list(shape)[-2:] if len(shape) >= 2 else [*shape, 1]  # ([batch,] N, C) or (N,)
        count, channels = dims[0], dims[1]
        if count not in by_count or channels not in roles:
            raise ValueError(f"unexpected SCRFD output shape {tuple(shape)} (input {size})")
        roles[channels][by_count[count]] = index
    for channels, name in ((1, "score"), (4, "bbox"), (10, "keypoint")):
        if sorted(roles[channels]) != sorted(STRIDES):
            raise ValueError(
                f"SCRFD model lacks {name} outputs for strides {STRIDES} (shapes {list(shapes)})"
            )
    return OutputLayout(score=roles[1], bbox=roles[4], kps=roles[10])


def decode(
    outputs: Sequence[NDArray[np.float32]],
    layout: OutputLayout,
    size: int,
    score_threshold: float,
    nms_threshold: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Boxes (M, 4), scores (M,), keypoints (M, 5, 2) in input pixels, after threshold and NMS."""
    all_boxes, all_scores, all_kps = [], [], []
    for stride in STRIDES:
        scores = np.asarray(outputs[layout.score[stride]], dtype=np.float64).reshape(-1)
        hit = np.flatnonzero(scores >= score_threshold)
        if not hit.size:
            continue
        centers = anchor_centers(size, stride)[hit]
        dist = np.asarray(outputs[layout.bbox[stride]], dtype=np.float64).reshape(-1, 4)[hit] * stride
        offs = np.asarray(outputs[layout.kps[stride]], dtype=np.float64).reshape(-1, 10)[hit] * stride
        all_boxes.append(distance2bbox(centers, dist))
        all_scores.append(scores[hit])
        all_kps.append(distance2kps(centers, offs))
    if not all_scores:
        return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2))
    boxes, scores, kps = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_kps)
    keep = nms(boxes, scores, nms_threshold)
    return boxes[keep], scores[keep], kps[keep]


# ----------------------------------------------------------------------------- the detector


class ScrfdDetector:
    """SCRFD through onnxruntime. ``detect(image)`` → detections sorted by score (highest first).

    model: ONNX path (None: ``faceprep.models.resolve_scrfd_model``). input_size: the square network
    input (must equal the model's if its input shape is fixed). num_threads: onnxruntime intra-op
    threads (0: its default; use 1 per worker process when running several). providers: onnxruntime
    execution providers (default: CUDA when available, then CPU). A file that onnxruntime cannot load
    or whose inputs/outputs are not SCRFD's raises ``InvalidModelError`` (a ValueError, one line
    naming the file).
    """

    name = "scrfd"
    keypoints_follow_rotation = True  # roughly: its eye line turns with the face (see faceprep.rotation)
    default_min_score = 0.6  # real faces in the shared photos score >= 0.72; the dogs of dogs.jpg <= 0.54

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        input_size: int = 640,
        num_threads: int = 0,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        detectors.check_thresholds(score_threshold, nms_threshold)
        if input_size <= 0 or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
        self.model_path: Path = resolve_scrfd_model(model)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.input_size = input_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = detectors.check_num_threads(num_threads)
        options.inter_op_num_threads = 1
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = _open_session(ort, self.model_path, options, list(providers))
        self.input_name, self.layout = _check_model(self.session, self.model_path, input_size)

    def detect(self, image: ImageArray) -> list[Detection]:
        blob, geo = letterbox(image, self.input_size)
        outputs = self.session.run(None, {self.input_name: blob})
        boxes, scores, kps = decode(
            outputs, self.layout, self.input_size, self.score_threshold, self.nms_threshold
        )
        corners = geo.to_source(boxes.reshape(-1, 2, 2))
        return detectors.to_detections(corners, scores, geo.to_source(kps), image.shape, self.name)


def _ort_reason(exc: BaseException, path: Path) -> str:
    """onnxruntime's message without its "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :" prefix and
    "Load model from <path> failed:" (the caller names the file)."""
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", str(exc).strip())
    text = text.replace(f"Load model from {path} failed:", "").strip()
    return " ".join(text.split()) or type(exc).__name__


def _open_session(ort: Any, path: Path, options: Any, providers: list[str]) -> Any:
    """An onnxruntime session for ``path``; InvalidModelError (one line, naming it) if it cannot load."""
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph, ... (not RuntimeError)
        raise InvalidModelError(path, f"not a valid ONNX model: {_ort_reason(exc, path)}") from exc


def _check_model(session: Any, path: Path, input_size: int) -> tuple[str, OutputLayout]:
    """The input name and output layout; InvalidModelError unless it looks like SCRFD (by shapes)."""
    inputs = session.get_inputs()
    channels = inputs[0].shape[1] if len(inputs) == 1 and len(inputs[0].shape) == 4 else None
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or (isinstance(channels, int) and channels != 3):
        shapes = [list(i.shape) for i in inputs]
        raise InvalidModelError(path, f"not an SCRFD model: expected one 1x3xHxW input, got {shapes}")
    inp = inputs[0]
    fixed = [d for d in inp.shape[2:] if isinstance(d, int)]
    if fixed and any(d != input_size for d in fixed):
        raise InvalidModelError(path, f"takes {fixed} px input; input_size={input_size} does not match")
    shapes = [list(o.shape) for o in session.get_outputs()]
    try:
        if any(not isinstance(d, int) for s in shapes for d in s):  # dynamic shapes: probe once
            probe = np.zeros((1, 3, input_size, input_size), np.float32)
            shapes = [list(o.shape) for o in session.run(None, {inp.name: probe})]
        return inp.name, identify_outputs(shapes, input_size)
    except Exception as exc:
        raise InvalidModelError(path, f"not an SCRFD model: {_ort_reason(exc, path)}") from exc


# ----------------------------------------------------------------------------- plugin registration


def available() -> str | None:
    """None when a model resolves (path, env, cache or verified download), else the one-line reason."""
    missing = detectors.missing_module("onnxruntime")
    if missing:
        return missing
    try:
        resolve_scrfd_model()
    except ModelUnavailableError as exc:
        return f"{exc}; set {ENV_MODEL} or --model"
    return None


faceprep_detectors = detectors.detector_hook(
    "scrfd",
    ScrfdDetector,
    "SCRFD-2.5GF (InsightFace) via onnxruntime: boxes, scores, 5 keypoints",
    available=available,
    priority=100,
)
