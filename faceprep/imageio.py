"""Reading photos: any file PIL can open becomes an (H, W, 3) uint8 RGB array, upright per EXIF.

Mode conversions (one rule per mode, so a dataset never mixes conventions):

- ``RGBA``, ``LA``, ``PA`` and ``P``/``L``/``RGB`` with a transparency key are composited on **white**
  (transparent pixels of cut-outs and logos usually hold arbitrary colours; white is what a viewer
  shows and what a detector handles best).
- ``I;16*`` (16-bit grey) is scaled by 255/65535, i.e. full range to full range, never clipped; ``I``
  (32-bit int) is treated as 16-bit when its values fit in [0, 65535], otherwise stretched from its
  min to its max; ``F`` likewise ([0, 1] → ×255, otherwise min-max).
- ``CMYK`` goes through its embedded ICC profile when it has one (ImageCms), else PIL's conversion.
- ``1``, ``L``, ``P``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB. Multi-frame files give
  their first frame.

Every failure (missing, directory, permission, zero bytes, not an image, truncated, corrupt,
decompression bomb) raises ``ImageLoadError(path, reason)`` with a one-line reason.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faceprep.types import ImageArray, ImageLoadError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)  # fmt: skip
"""Lower-case file suffixes ``iter_images`` collects."""

DEFAULT_MAX_PIXELS = 89_478_485
"""Refuse images with more pixels than this (PIL's own warning threshold, ~89 MP, ~268 MB as RGB)."""


def iter_images(root: str | os.PathLike[str], exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """All image files under ``root`` (recursive, by suffix, case-insensitive), sorted by relative path.

    A file given as ``root`` is returned alone. Hidden files and folders (name starts with ``.``, e.g.
    macOS ``._x.jpg`` resource forks) are skipped, and so is every folder in ``exclude`` (e.g. the
    output folder when it lies inside the source). Symlinked folders are not followed.
    """
    base = Path(root)
    if base.is_file():
        return [base]
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such file or folder")
    skip = {Path(p).resolve() for p in exclude}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip]
        found.extend(
            here / f
            for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def load_image(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageArray:
    """Read ``path`` as an upright (H, W, 3) uint8 RGB array (EXIF orientation applied).

    ``max_pixels``: larger images raise ``ImageLoadError`` before being decoded (None: only PIL's own
    hard decompression-bomb limit applies).
    """
    name = str(path)
    data = _read_bytes(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageLoadError(
                        name,
                        f"image too large ({w}x{h} = {w * h} pixels > {max_pixels}; decompression bomb?)",
                    )
                img.load()
                upright = _exif_upright(img)
                rgb = to_rgb(upright)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"decompression bomb refused by PIL ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(name, "not a recognised image format (or a corrupt header)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageLoadError(name, f"corrupt or truncated image ({_one_line(exc)})") from exc
    return rgb


def to_rgb(img: Image.Image) -> ImageArray:
    """Convert a loaded PIL image of any mode to a contiguous (H, W, 3) uint8 RGB array."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _high_depth_to_u8(np.asarray(img), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "CMYK":
        img = _cmyk_to_rgb(img)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    out = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(out)


def _read_bytes(name: str) -> bytes:
    try:
        if os.path.isdir(name):
            raise ImageLoadError(name, "is a directory, not an image file")
        with open(name, "rb") as fh:
            data = fh.read()
    except ImageLoadError:
        raise
    except FileNotFoundError as exc:
        raise ImageLoadError(name, "no such file") from exc
    except PermissionError as exc:
        raise ImageLoadError(name, "permission denied (cannot read the file)") from exc
    except OSError as exc:
        raise ImageLoadError(name, f"cannot read the file ({_one_line(exc)})") from exc
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    return data


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block is ignored (pixels are still valid)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # PIL raises a variety of errors on broken EXIF blocks
        return img


def _high_depth_to_u8(arr: np.ndarray, mode: str) -> np.ndarray:
    a = arr.astype(np.float64)
    fits_16bit = a.size == 0 or (a.min() >= 0 and a.max() <= 65535)
    if mode.startswith("I;16") or (mode == "I" and fits_16bit):
        scaled = a * (255.0 / 65535.0)
    elif mode == "F" and (a.size == 0 or (np.nanmin(a) >= 0 and np.nanmax(a) <= 1)):
        scaled = a * 255.0
    else:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    profile = img.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            dst = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # no littleCMS or a broken profile: fall back to PIL's plain conversion
            pass
    return img.convert("RGB")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
