"""Scoring a detector against labelled photos (dlib imglab XML): recall at an IoU and keypoint error.

Used by the detector tests (built-in and plugins) and ``bench/detectors.py``. The 68-point iBUG
annotations give the five faceprep landmarks as: image-left eye = mean of points 36–41, image-right
eye = mean of 42–47, nose tip = 30, mouth corners = 48 and 54.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from faceprep.geometry import box_iou, ffhq_quad
from faceprep.hookspecs import Detector
from faceprep.types import Detection, FloatArray, ImageArray


@dataclass(frozen=True, eq=False)
class LabelledFace:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    landmarks: FloatArray | None  # (5, 2) in faceprep order, or None without a 68-point shape
    ignore: bool = False


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    faces: tuple[LabelledFace, ...]


def five_from_68(points: FloatArray) -> FloatArray:
    """faceprep's 5 landmarks from a (68, 2) iBUG shape."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected a (68, 2) shape, got {p.shape}")
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def load_imglab(xml_path: str | Path) -> list[LabelledImage]:
    """Parse a dlib imglab XML file; image paths are resolved against the XML's folder."""
    xml_path = Path(xml_path)
    images = []
    for node in ET.parse(xml_path).getroot().iter("image"):
        faces = []
        for box in node.iter("box"):
            x0, y0 = float(box.get("left", 0)), float(box.get("top", 0))
            w, h = float(box.get("width", 0)), float(box.get("height", 0))
            parts = {
                int(p.get("name", -1)): (float(p.get("x", 0)), float(p.get("y", 0))) for p in box.iter("part")
            }
            lm = five_from_68(np.array([parts[i] for i in range(68)])) if len(parts) == 68 else None
            faces.append(LabelledFace((x0, y0, x0 + w, y0 + h), lm, box.get("ignore", "0") == "1"))
        images.append(LabelledImage(xml_path.parent / node.get("file", ""), tuple(faces)))
    return images


@dataclass(frozen=True)
class MatchResult:
    labelled: int
    matched: int
    detections: int
    keypoint_errors: tuple[float, ...]  # per matched face: mean eye/mouth error / inter-ocular distance

    @property
    def recall(self) -> float:
        return self.matched / self.labelled if self.labelled else 1.0


def match(
    truth: Sequence[LabelledFace], found: Sequence[Detection], iou_threshold: float = 0.5
) -> MatchResult:
    """Greedy one-to-one matching by IoU (best pairs first); ignored faces count neither way."""
    faces = [f for f in truth if not f.ignore]
    pairs = sorted(
        ((box_iou(f.box, d.box), i, j) for i, f in enumerate(faces) for j, d in enumerate(found)),
        reverse=True,
    )
    used_f: set[int] = set()
    used_d: set[int] = set()
    errors = []
    for overlap, i, j in pairs:
        if overlap < iou_threshold:
            break
        if i in used_f or j in used_d:
            continue
        used_f.add(i)
        used_d.add(j)
        lm = faces[i].landmarks
        if lm is not None:
            iod = float(np.linalg.norm(lm[1] - lm[0]))
            idx = [0, 1, 3, 4]  # eyes and mouth corners
            errors.append(float(np.linalg.norm(found[j].landmarks[idx] - lm[idx], axis=1).mean() / iod))
    return MatchResult(len(faces), len(used_f), len(found), tuple(errors))


def combine(results: Sequence[MatchResult]) -> MatchResult:
    return MatchResult(
        sum(r.labelled for r in results),
        sum(r.matched for r in results),
        sum(r.detections for r in results),
        tuple(e for r in results for e in r.keypoint_errors),
    )


def rotate_photo(image: ImageArray, degrees: float) -> tuple[ImageArray, FloatArray]:
    """The photo turned counter-clockwise on screen (canvas expanded), and the 2×3 affine map that
    takes source points to the turned photo."""
    h, w = image.shape[:2]
    out = np.asarray(Image.fromarray(image).rotate(degrees, Image.Resampling.BICUBIC, expand=True))
    t = np.radians(degrees)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # y down, counter-clockwise
    shift = np.array([(out.shape[1] - 1) / 2, (out.shape[0] - 1) / 2]) - rot @ [(w - 1) / 2, (h - 1) / 2]
    return out, np.hstack([rot, shift[:, None]])


def rotation_errors(detector: Detector, image: ImageArray, angles: Sequence[float]) -> list[float]:
    """For each angle: max corner distance between the FFHQ quad of the most confident face on the
    turned photo and the upright photo's quad mapped there, divided by the quad side."""
    ref = ffhq_quad(detector.detect(image)[0].landmarks)
    errors = []
    for degrees in angles:
        turned, affine = rotate_photo(image, degrees)
        found = detector.detect(turned)
        if not found:
            errors.append(float("inf"))
            continue
        quad = ffhq_quad(found[0].landmarks)
        expected = ref.corners @ affine[:, :2].T + affine[:, 2]
        errors.append(float(np.linalg.norm(quad.corners - expected, axis=1).max() / ref.side))
    return errors
