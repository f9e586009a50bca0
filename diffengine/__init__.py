"""diffengine: train and sample unconditional image diffusion models (EDM by default)."""

from __future__ import annotations

__version__ = "0.1.0"
