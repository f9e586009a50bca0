"""Thumbnail cache: each face's thumbnail is made once, on first request, into ``DST/.faceprep-review``.

Kept faces are shrunk from their crop; rejected ones (no crop on disk) are rendered from the source
photo and quad. The cache name hashes the face identity and what the thumbnail was made from (the crop
file's size and mtime, or the quad), so a crop rewritten by a refilter gets a new thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

from PIL import Image

from faceprep.review.render import CropRenderer
from faceprep.review.store import CACHE_DIR, DatasetReader, FaceTable

THUMB_SIZE = 128


class ThumbCache:
    def __init__(
        self, root: Path, reader: DatasetReader, renderer: CropRenderer, size: int = THUMB_SIZE
    ) -> None:
        self.dir = root / CACHE_DIR / "thumbs"
        self.reader = reader
        self.renderer = renderer
        self.size = size
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, table: FaceTable, face_id: int) -> bytes | None:
        """JPEG bytes of the face's thumbnail, or None when neither a crop nor its source is readable."""
        name, has_crop = self._name(table, face_id)
        path = self.dir / name[:2] / f"{name}.jpg"
        try:
            return path.read_bytes()
        except OSError:
            pass
        with self._lock_for(name):
            if path.is_file():
                return path.read_bytes()
            data = self._make(table, face_id, has_crop)
            if data is None:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".faceprep-tmp-{path.name}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        with self._guard:
            self._locks.pop(name, None)
        return data

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _name(self, table: FaceTable, face_id: int) -> tuple[str, bool]:
        source, index = table.keys[face_id]
        file_name = table.file_names[face_id]
        stamp = self.reader.crop_stamp(file_name) if file_name else None
        made_from = f"crop:{file_name}:{stamp}" if stamp else f"quad:{table.record(face_id).get('quad')}"
        text = f"{source}\x00{index}\x00{made_from}\x00{self.size}"
        return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:24], stamp is not None

    def _make(self, table: FaceTable, face_id: int, has_crop: bool) -> bytes | None:
        image: Image.Image | None = None
        file_name = table.file_names[face_id]
        data = self.reader.crop_bytes(file_name) if has_crop and file_name else None
        if data is not None:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    image = im.convert("RGB")
            except (OSError, ValueError):
                image = None
        if image is None:
            pixels = self.renderer.render(table.record(face_id), size=self.size)
            if pixels is None:
                return None
            image = Image.fromarray(pixels)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()
