"""diffengine: train and sample unconditional image diffusion models (EDM by default)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

__all__ = ["__version__"]

try:  # one source of truth: faceprep.__version__, which the build writes into the metadata
    __version__ = _distribution_version("faceprep-diffengine")
except PackageNotFoundError:  # a source tree that was never installed
    from faceprep import __version__
