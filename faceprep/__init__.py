"""faceprep: turn a folder of photos into an FFHQ/CelebA-HQ-style aligned face dataset.

The plugin API is re-exported here (``from faceprep import hookimpl, StageSpec``); it is imported on
first use, so ``import faceprep`` stays light (no pluggy, torch or onnxruntime until needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faceprep.hookspecs import StageSpec, hookimpl

__version__ = "0.1.0"
__all__ = ["StageSpec", "__version__", "hookimpl"]

_LAZY = {"hookimpl": "faceprep.hookspecs", "StageSpec": "faceprep.hookspecs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'faceprep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
