"""Fixtures shared by the faceprep tests: one SCRFD detector per session and the upright portrait."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceprep.builtin.scrfd import ScrfdDetector
from faceprep.imageio import load_image
from faceprep.types import ImageArray

PORTRAIT = "face_recognition/examples/obama.jpg"


@pytest.fixture(scope="session")
def scrfd(scrfd_model: Path) -> ScrfdDetector:
    """The SCRFD detector on one thread (the test machine is shared), loaded once."""
    return ScrfdDetector(model=scrfd_model, num_threads=1)


@pytest.fixture(scope="session")
def portrait(photos_dir: Path) -> ImageArray:
    """An upright one-face portrait (RGB uint8)."""
    return load_image(photos_dir / PORTRAIT)
