"""Writes that a kill at any instant cannot leave half done: temporary name, fsync, ``os.replace``.

Every temporary file faceprep makes is named ``.faceprep-tmp-<final name>`` beside its final place, so a
repair may delete exactly those and nothing of the user's. Appends are flushed and fsynced line batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

TMP_PREFIX = ".faceprep-tmp-"


def tmp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before it is renamed into place."""
    return path.with_name(f"{TMP_PREFIX}{path.name}")


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (where the OS allows it), to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Open ``path``'s temporary name for writing; on success fsync and rename it onto ``path``."""
    tmp = tmp_path(path)
    if "b" not in mode:
        open_args.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_args) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with replacing(path) as fh:
        fh.write(text)


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append complete lines (each ending in a newline) and fsync them."""
    text = "".join(lines)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def save_image(path: Path, pixels: NDArray[np.uint8], image_format: str, jpeg_quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 crop as PNG or JPEG (4:4:4 chroma from quality 90) atomically."""
    image = Image.fromarray(pixels)
    with replacing(path, "wb") as fh:
        if image_format == "png":
            image.save(fh, format="PNG", compress_level=4)
        else:
            subsampling = 0 if jpeg_quality >= 90 else 2
            image.save(fh, format="JPEG", quality=jpeg_quality, subsampling=subsampling)
