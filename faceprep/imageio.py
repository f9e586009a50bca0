"""Reading photos: any file PIL can open becomes an (H, W, 3) uint8 RGB array, upright per EXIF.

Mode conversions (one rule per mode, so a dataset never mixes conventions):

- ``RGBA``, ``LA``, ``PA`` and ``P``/``L``/``RGB`` with a transparency key are composited on **white**
  (transparent pixels of cut-outs and logos usually hold arbitrary colours; white is what a viewer
  shows and what a detector handles best).
- ``I;16*`` (16-bit grey) is scaled from the bit depth its data uses to 8 bits, never clipped: the
  full scale is the smallest of 2^8−1, 2^10−1, 2^12−1, 2^14−1, 2^16−1 that holds the image's maximum
  (12-bit sensor data stored in 16 bits, 0…4095, is scaled by 255/4095 instead of coming out
  nearly black; a true 16-bit image keeps 255/65535). The steps are whole bit depths, so an image is
  never stretched to its own maximum. ``I`` (32-bit int) follows the same rule when its values fit
  in [0, 65535], otherwise it is stretched from its min to its max; ``F`` likewise ([0, 1] → ×255,
  otherwise min-max).
- ``CMYK`` goes through its embedded ICC profile when it has one (ImageCms), else PIL's conversion.
- ``1``, ``L``, ``P``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB. Multi-frame files give
  their first frame.

Every failure (missing, directory, permission, zero bytes, not an image, truncated, corrupt,
decompression bomb, a photo format this Pillow cannot decode) raises ``ImageLoadError(path, reason)``
with a one-line reason.

File types follow one rule whether a file is given alone or found in a folder: the photo formats in
``PHOTO_FORMATS`` that this Pillow build can decode (``IMAGE_EXTENSIONS``; AVIF needs Pillow >= 11.3
built with libavif) are read; the others (``UNSUPPORTED_EXTENSIONS``, e.g. HEIC without a plugin)
are still collected from folders so that each is reported with its reason instead of being
silently skipped.
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

PHOTO_FORMATS: dict[str, str] = {
    **dict.fromkeys((".jpg", ".jpeg", ".jpe", ".jfif"), "JPEG"),
    ".mpo": "JPEG",  # multi-picture JPEG (cameras); the JPEG opener reads it
    **dict.fromkeys((".png", ".apng"), "PNG"),
    **dict.fromkeys((".bmp", ".dib"), "BMP"),
    ".gif": "GIF",
    **dict.fromkeys((".tif", ".tiff"), "TIFF"),
    ".webp": "WEBP",
    **dict.fromkeys((".avif", ".avifs"), "AVIF"),
    **dict.fromkeys((".heic", ".heif"), "HEIF"),
    ".jxl": "JXL",
    **dict.fromkeys((".jp2", ".j2k", ".jpx", ".jpf", ".j2c"), "JPEG2000"),
    **dict.fromkeys((".ppm", ".pgm", ".pbm", ".pnm"), "PPM"),
    ".tga": "TGA",
    ".qoi": "QOI",
}
"""Lower-case suffix → Pillow format name of the photo formats faceprep looks for."""

_CODEC_FEATURES = {"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif", "JPEG2000": "jpg_2000"}
_MISSING_HINT = {
    "AVIF": "this Pillow has no AVIF decoder (Pillow >= 11.3 built with libavif reads it)",
    "HEIF": "Pillow cannot decode HEIF/HEIC (convert the files, e.g. to JPEG)",
    "JXL": "Pillow cannot decode JPEG XL (convert the files, e.g. to PNG)",
}


def format_unsupported(fmt: str) -> str | None:
    """None when this Pillow can decode ``fmt`` (a Pillow format name), else the one-line reason."""
    from PIL import features

    Image.init()
    feature = _CODEC_FEATURES.get(fmt)
    if fmt in Image.OPEN and (feature is None or features.check(feature)):
        return None
    return _MISSING_HINT.get(fmt, f"this Pillow cannot decode {fmt} images")


def _support_tables() -> tuple[frozenset[str], dict[str, str]]:
    reasons = {fmt: format_unsupported(fmt) for fmt in set(PHOTO_FORMATS.values())}
    supported = frozenset(ext for ext, fmt in PHOTO_FORMATS.items() if reasons[fmt] is None)
    unsupported = {
        ext: f"{fmt} image not supported: {reason}"
        for ext, fmt in PHOTO_FORMATS.items()
        if (reason := reasons[fmt]) is not None
    }
    return supported, unsupported


IMAGE_EXTENSIONS, UNSUPPORTED_EXTENSIONS = _support_tables()
"""Suffixes this Pillow decodes; and suffix → reason for photo formats it cannot decode. ``iter_images``
collects both (the second kind so that ``load_image`` reports each such file with its reason)."""

DEFAULT_MAX_PIXELS = 89_478_485
"""Refuse images with more pixels than this (PIL's own warning threshold, ~89 MP, ~268 MB as RGB)."""


def iter_images(root: str | os.PathLike[str], exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """All image files under ``root`` (recursive, by suffix, case-insensitive), sorted by relative path.

    Suffixes are those of ``PHOTO_FORMATS``: decodable ones and, so that they are reported rather
    than silently missing, the ones this Pillow cannot decode. A file given as ``root`` is returned
    alone (``load_image`` then decides, with the same reasons). Hidden files and folders (name
    starts with ``.``, e.g. macOS ``._x.jpg`` resource forks) are skipped, and so is every folder in
    ``exclude`` (e.g. the output folder when it lies inside the source). Symlinked folders are not
    followed.
    """
    base = Path(root)
    if base.is_file():
        return [base]
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such file or folder")
    skip = {Path(p).resolve() for p in exclude}
    collected = IMAGE_EXTENSIONS | UNSUPPORTED_EXTENSIONS.keys()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip]
        found.extend(
            here / f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in collected
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
            # PIL's "could not be identified because AVIF support not installed": our reason says it
            warnings.filterwarnings("ignore", "image file could not be", UserWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageLoadError(
                        name,
                        f"image too large ({w}x{h} = {w * h} pixels > {max_pixels}; decompression bomb?)",
                    )
                rgb = from_pil(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"decompression bomb refused by PIL ({exc})") from exc
    except UnidentifiedImageError as exc:
        unsupported = UNSUPPORTED_EXTENSIONS.get(Path(name).suffix.lower())
        reason = unsupported or "not a recognised image format (or a corrupt header)"
        raise ImageLoadError(name, reason) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageLoadError(name, f"corrupt or truncated image ({_one_line(exc)})") from exc
    return rgb


def from_pil(img: Image.Image) -> ImageArray:
    """An opened PIL image as ``load_image`` returns a file: decoded, EXIF-upright, (H, W, 3) uint8 RGB.

    Decoding errors propagate as PIL raises them (OSError, ValueError, ...).
    """
    img.load()
    return to_rgb(_exif_upright(img))


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


DATA_BIT_DEPTHS = (8, 10, 12, 14, 16)
"""Bit depths a 16-bit image's data may really have (sensor and scanner formats)."""


def data_full_scale(max_value: float) -> int:
    """The full-scale value 2^k − 1 of the smallest depth k in ``DATA_BIT_DEPTHS`` holding ``max_value``."""
    for bits in DATA_BIT_DEPTHS:
        if max_value <= (1 << bits) - 1:
            return (1 << bits) - 1
    return (1 << DATA_BIT_DEPTHS[-1]) - 1


def _high_depth_to_u8(arr: np.ndarray, mode: str) -> np.ndarray:
    a = arr.astype(np.float64)
    fits_16bit = a.size == 0 or (a.min() >= 0 and a.max() <= 65535)
    if mode.startswith("I;16") or (mode == "I" and fits_16bit):
        full = data_full_scale(float(a.max()) if a.size else 0.0)
        scaled = a * (255.0 / full)
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
