"""faceprep: turn a folder of photos into an FFHQ/CelebA-HQ-style aligned face dataset."""

from __future__ import annotations

__version__ = "0.1.0"
