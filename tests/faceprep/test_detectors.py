"""The shared detector-plugin plumbing: option and input checks, output conversion, registration."""

from __future__ import annotations

import types

import numpy as np
import pluggy
import pytest

from faceprep import detectors as D
from faceprep import hookspecs


def test_option_and_input_checks() -> None:
    D.check_thresholds(0.0, 1.0)
    for score, nms in ((1.5, 0.4), (-0.1, 0.4), (0.5, 0.0), (0.5, 1.2)):
        with pytest.raises(ValueError, match="thresholds out of range"):
            D.check_thresholds(score, nms)
    assert D.check_num_threads(0) == 0 and D.check_num_threads(3) == 3
    with pytest.raises(ValueError, match="num_threads"):
        D.check_num_threads(-1)
    D.check_image(np.zeros((4, 5, 3), np.uint8))
    bad_images: list[np.ndarray] = [
        np.zeros((4, 5), np.uint8),
        np.zeros((4, 5, 4), np.uint8),
        np.zeros((4, 5, 3)),
    ]
    for bad in bad_images:
        with pytest.raises(ValueError, match=r"uint8 RGB image, got \(4, 5"):
            D.check_image(bad)


def test_to_detections_clips_boxes_and_sorts_by_score() -> None:
    corners = np.array([[[-9.0, 2], [30, 12]], [[1, 1], [3, 3]]])
    landmarks = np.arange(20, dtype=np.float64).reshape(2, 5, 2)
    found = D.to_detections(corners, np.array([0.4, 1.3]), landmarks, (10, 20, 3), "fake")
    assert [d.score for d in found] == [1.0, 0.4]  # clipped to [0, 1], highest first
    assert found[1].box == (-0.5, 2.0, 19.5, 9.5)  # inside the 20×10 photo's pixel area
    np.testing.assert_array_equal(found[0].landmarks, landmarks[1])
    assert {d.detector for d in found} == {"fake"}
    assert D.to_detections(np.zeros((0, 2, 2)), np.zeros(0), np.zeros((0, 5, 2)), (5, 5), "x") == []


def test_missing_module_names_the_package() -> None:
    assert D.missing_module("numpy") is None
    assert D.missing_module("no_such_module_xyz", "no-such-dist") == "no-such-dist is not installed"
    assert D.missing_module("no_such_pkg.sub") == "no_such_pkg.sub is not installed"


def test_detector_hook_registers_through_pluggy() -> None:
    def available() -> str | None:
        return "never here"

    plugin = types.SimpleNamespace(
        faceprep_detectors=D.detector_hook("fake", dict, "a test stage", available=available, priority=3)
    )
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin)
    ((spec,),) = pm.hook.faceprep_detectors()
    assert (spec.name, spec.factory, spec.priority) == ("fake", dict, 3)
    assert spec.available is not None and spec.available() == "never here"
