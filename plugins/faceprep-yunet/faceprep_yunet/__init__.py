"""faceprep plugin package: the YuNet detector (``faceprep_yunet.plugin``)."""

from __future__ import annotations

__version__ = "0.1.0"
