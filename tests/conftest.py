"""Shared fixtures. Real photos and the SCRFD model come from the read-only ``shared/`` folder beside
the checkout, found through ``FACEPREP_SHARED`` (nox sets it) or ``../shared``; tests that need it skip
with a reason when it is absent. The SCRFD model is found the normal way: ``FACEPREP_SCRFD_MODEL``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests never touch the network: model resolution must not try to download.
os.environ["FACEPREP_OFFLINE"] = "1"


def shared_root() -> Path:
    return Path(os.environ.get("FACEPREP_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_root()
    if not (path / "photos").is_dir():
        pytest.skip(f"shared data not found at {path} (set FACEPREP_SHARED)")
    return path


@pytest.fixture(scope="session")
def photos_dir(shared_dir: Path) -> Path:
    return shared_dir / "photos"


@pytest.fixture(scope="session")
def scrfd_model() -> Path:
    value = os.environ.get("FACEPREP_SCRFD_MODEL")
    if not value or not Path(value).is_file():
        pytest.skip("FACEPREP_SCRFD_MODEL is not set to an existing file")
    return Path(value)
