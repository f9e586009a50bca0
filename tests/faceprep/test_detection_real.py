"""SCRFD on real photos: Solvay 1927 (29 faces) and the dlib group photos (boxes + 68-point shapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceprep import plugins
from faceprep.builtin.scrfd import ScrfdDetector
from faceprep.detection_eval import combine, load_imglab, match
from faceprep.imageio import load_image


def test_registered_as_plugin(scrfd_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPREP_SCRFD_MODEL", str(scrfd_model))
    spec = plugins.stages("detector")["scrfd"]
    assert spec.priority == 100 and spec.available is not None and spec.available() is None
    det = plugins.create("detector", "scrfd", score_threshold=0.6)
    assert isinstance(det, ScrfdDetector) and det.score_threshold == 0.6


def test_solvay_all_29_faces(scrfd: ScrfdDetector, photos_dir: Path) -> None:
    image = load_image(photos_dir / "scrfd_repo" / "solvay_conference_1927.png")
    found = scrfd.detect(image)
    assert len(found) == 29
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.5
    h, w = image.shape[:2]
    for d in found:
        x0, y0, x1, y1 = d.box
        assert -0.5 <= x0 < x1 <= w and -0.5 <= y0 < y1 <= h
        assert 30 < x1 - x0 < 200  # faces in this photo are 50–120 px wide
        assert d.landmarks.shape == (5, 2) and d.detector == "scrfd"
        # landmark order: image-left eye left of image-right eye, mouth below eyes, all inside the box
        assert d.landmarks[0, 0] < d.landmarks[1, 0] and d.landmarks[3, 0] < d.landmarks[4, 0]
        assert d.landmarks[[3, 4], 1].mean() > d.landmarks[[0, 1], 1].mean()
        assert np.all((d.landmarks >= [x0, y0]) & (d.landmarks <= [x1, y1]))


def test_dlib_recall_and_keypoints(scrfd: ScrfdDetector, photos_dir: Path) -> None:
    labelled = [
        image
        for name in ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml")
        for image in load_imglab(photos_dir / "dlib_faces" / name)
    ]
    assert len(labelled) == 9
    total = combine([match(image.faces, scrfd.detect(load_image(image.path))) for image in labelled])
    assert total.labelled == 43
    assert total.recall >= 0.9
    errors = np.array(total.keypoint_errors)
    assert len(errors) == total.matched
    assert np.median(errors) < 0.10 and np.mean(errors <= 0.10) >= 0.9 and errors.max() < 0.2
