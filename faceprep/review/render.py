"""Finding a face's source photo and rendering its crop again from the stored quad.

Rejected faces have no crop on disk (faceprep writes only kept ones), so the review page, the refilter
and :func:`faceprep.review.materialise_rescued` warp them out of the source photo again with the
quad, output size and fill recorded in ``DST/faceprep.json``. The quad is stored rounded to 0.01 px,
so a re-rendered crop matches the original to within resampling noise.

Sources are resolved inside SRC only: a recorded ``source`` that leaves SRC (``../``, an absolute
path, or a symlink pointing out of it) is refused, since the page serves these files to a browser.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from faceprep.types import ImageArray, Quad

OPTIONS_FILE = "faceprep.json"


def recorded_options(dst: Path) -> dict[str, Any]:
    """``DST/faceprep.json`` as a dict (``{}`` when absent or unreadable)."""
    try:
        data = json.loads((dst / OPTIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_src(dst: Path, src: str | os.PathLike[str] | None = None) -> Path | None:
    """SRC of a dataset: ``src`` if given, else ``"src"`` in faceprep.json (top level or options)."""
    if src is not None:
        return Path(src)
    recorded = recorded_options(dst)
    options = recorded.get("options")
    value = recorded.get("src") or (options.get("src") if isinstance(options, dict) else None)
    return Path(value) if isinstance(value, str) and value else None


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` resolved (symlinks followed), or None if that leaves ``root`` or is no file."""
    if not relative or "\x00" in relative:
        return None
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    try:
        base = root.resolve(strict=True)
        path = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


class CropRenderer:
    """Warps crops out of source photos with a dataset's recorded size and fill (thread-safe).

    The last few decoded photos are cached, since a group photo's faces are rendered one after another.
    """

    def __init__(self, src: Path | None, options: Mapping[str, Any], cache: int = 4) -> None:
        self.src = src
        opts = options.get("options", options)
        self.size = int(opts.get("size") or 256)
        self.fill_name = str(opts.get("fill") or "mirror-blur")
        self.fill_options = dict(opts.get("fill_options") or {})
        self._fill: Any = None
        self._images: OrderedDict[Path, ImageArray] = OrderedDict()
        self._cache = cache
        self._lock = threading.Lock()

    def source_path(self, source: str) -> Path | None:
        return None if self.src is None else inside(self.src, source)

    def load(self, source: str) -> ImageArray | None:
        """The upright RGB source photo (as the detector saw it), or None when it cannot be found/read."""
        from faceprep.imageio import load_image
        from faceprep.types import ImageLoadError

        path = self.source_path(source)
        if path is None:
            return None
        with self._lock:
            if path in self._images:
                self._images.move_to_end(path)
                return self._images[path]
        try:
            image = load_image(path, max_pixels=None)
        except ImageLoadError:
            return None
        with self._lock:
            self._images[path] = image
            while len(self._images) > self._cache:
                self._images.popitem(last=False)
        return image

    def fill(self) -> Any:
        if self._fill is None:
            from faceprep import plugins

            self._fill = plugins.create("fill", self.fill_name, **self.fill_options)
        return self._fill

    def render(self, record: Mapping[str, Any], size: int | None = None) -> ImageArray | None:
        """The crop of ``record`` (its ``source`` + ``quad``) at ``size`` (default: the dataset's)."""
        from faceprep.warp import extract_face

        image = self.load(str(record.get("source", "")))
        quad = record.get("quad")
        if image is None or quad is None:
            return None
        from faceprep.geometry import MIN_SIZE

        try:
            pixels, _ = extract_face(
                image,
                Quad(np.asarray(quad, dtype=np.float64)),
                max(size or self.size, MIN_SIZE),
                self.fill(),
                source=str(record.get("source", "")),
                face_index=int(record.get("face_index", 0)),  # a generated fill seeds from these
            )
        except ValueError:
            return None
        return pixels
