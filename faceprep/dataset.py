"""Writing a face dataset folder that survives interruption and resumes without duplicates.

Layout of ``DST`` (Hugging Face ``imagefolder`` loads it as is)::

    <name>.png | <name>.jpg   one aligned face per kept detection
    metadata.jsonl            one line per kept face, ``file_name`` first, then FaceCrop.record()
    rejected.jsonl            one line per rejected face (same fields, ``rejected_by`` non-empty)
    errors.jsonl              one line per source that could not be processed: file, reason
    done.jsonl                journal: one line per finished source (the resume point)
    contact_sheet.png         a grid of a sample of kept faces, written at the end

Crash safety (also against ``kill -9``): images are written to a hidden temporary name and renamed into
place; the JSONL lines of a source are appended only after its images are in place, and its journal
line only after those, each followed by flush + fsync. On opening, :meth:`DatasetWriter.open` repairs
whatever an interrupted run left: temporary files and a trailing partial line are dropped, lines and
images of sources missing from the journal are removed, and those sources are processed again.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from faceprep.filters import DuplicateIndex
from faceprep.pipeline import FileResult, check_duplicate
from faceprep.types import FaceCrop

METADATA = "metadata.jsonl"
REJECTED = "rejected.jsonl"
ERRORS = "errors.jsonl"
JOURNAL = "done.jsonl"
CONTACT_SHEET = "contact_sheet.png"
TMP_SUFFIX = ".tmp"
ImageFormat = Literal["png", "jpg"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_OUR_IMAGE = re.compile(r"_\d{2,}\.(png|jpg)$")
MAX_NAME = 150


def face_file_name(source: str, face_index: int, image_format: ImageFormat = "png") -> str:
    """Deterministic, unique, file-system-safe name for face ``face_index`` of ``source``.

    ``source`` is the path relative to SRC; folders are joined with ``__`` and the suffix is kept as
    ``_jpg``: ``party/2019/img.jpg``, face 0 → ``party__2019__img_jpg_00.png``. When that spelling
    could be ambiguous (unsafe characters, ``_`` at the ends of or ``__`` inside a name, no plain
    suffix, very long paths), an 8-hex-digit hash of the original path is appended (``-1f97f74b``) so
    two sources can never share a name.
    """
    parts = [p for p in source.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"empty source path {source!r}")
    stem, dot, ext = parts[-1].rpartition(".")
    has_ext = bool(dot and stem and ext.isalnum() and ext.isascii())
    parts[-1] = f"{stem}_{ext}" if has_ext else parts[-1]
    safe = [_UNSAFE.sub("_", p) for p in parts]
    base = "__".join(safe)
    # The spelling can be decoded back (so it is unique) only if no part contains "__" or starts/ends
    # with "_", nothing was replaced and the suffix was plain; otherwise add a hash of the source.
    lossy = (
        not has_ext
        or safe != parts
        or any("__" in p or p.startswith("_") or p.endswith("_") for p in parts)
        or len(base) > MAX_NAME
    )
    if lossy:
        base = f"{base[:MAX_NAME]}-{_short_hash(source)}"
    return f"{base}_{face_index:02d}.{image_format}"


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


@dataclass
class RunStats:
    """Counts for the end-of-run summary (this run only)."""

    photos: int = 0
    faces: int = 0
    kept: int = 0
    errors: int = 0
    rejected_by: Counter[str] = field(default_factory=Counter)

    def add(self, result: FileResult, written: list[FaceCrop]) -> None:
        self.photos += 1
        if result.error is not None:
            self.errors += 1
            return
        self.faces += len(written)
        for crop in written:
            if crop.kept:
                self.kept += 1
            self.rejected_by.update(crop.rejected_by)


class DatasetWriter:
    """Single writer of a dataset folder (the CLI's main process; workers only compute)."""

    def __init__(
        self,
        dst: str | os.PathLike[str],
        *,
        image_format: ImageFormat = "png",
        jpeg_quality: int = 95,
        dedup_distance: int | None = 6,
    ) -> None:
        if image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.dst = Path(dst)
        self.image_format: ImageFormat = image_format
        self.jpeg_quality = jpeg_quality
        self.done: set[str] = set()
        self.duplicates = DuplicateIndex(dedup_distance)
        self.stats = RunStats()
        self._files: dict[str, Any] = {}

    # --- opening and repair -------------------------------------------------------------------------

    def open(self) -> DatasetWriter:
        """Create DST or repair and reload it for resuming; returns self."""
        self.dst.mkdir(parents=True, exist_ok=True)
        resuming = (self.dst / JOURNAL).exists()
        for tmp in self.dst.glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        self.done = {rec["source"] for rec in self._repair(JOURNAL, keep=lambda rec: True)}
        kept = self._repair(METADATA, keep=lambda rec: rec.get("source") in self.done)
        self._repair(REJECTED, keep=lambda rec: rec.get("source") in self.done)
        self._repair(ERRORS, keep=lambda rec: rec.get("source") in self.done)
        listed = {rec["file_name"] for rec in kept}
        for path in self.dst.iterdir() if resuming else ():  # an interrupted source's images: redone
            if path.is_file() and _OUR_IMAGE.search(path.name) and path.name not in listed:
                path.unlink()
        for rec in kept:
            if "phash" in rec:
                self.duplicates.add(rec["phash"])
        names = (METADATA, REJECTED, ERRORS, JOURNAL)
        self._files = {name: open(self.dst / name, "a", encoding="utf-8") for name in names}  # noqa: SIM115
        return self

    def _repair(self, name: str, keep: Any) -> list[dict[str, Any]]:
        """Parse a JSONL file, keeping complete lines that ``keep`` accepts; rewrite it if any dropped."""
        path = self.dst / name
        if not path.exists():
            return []
        records: list[dict[str, Any]] = []
        dropped = False
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                rec = _parse_line(line)
                if rec is not None and keep(rec):
                    records.append(rec)
                else:
                    dropped = True
        if dropped:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            tmp = self.dst / f".{name}{TMP_SUFFIX}"
            tmp.write_text(text, encoding="utf-8")
            _fsync_path(tmp)
            os.replace(tmp, path)
        return records

    def __enter__(self) -> DatasetWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}

    # --- writing ----------------------------------------------------------------------------------

    def write(self, result: FileResult) -> list[FaceCrop]:
        """Record one processed source (exactly once); returns its crops after the duplicate check."""
        if not self._files:
            raise RuntimeError("DatasetWriter.write called before open()")
        if result.source in self.done:
            return []
        written: list[FaceCrop] = []
        meta_lines: list[str] = []
        rejected_lines: list[str] = []
        for crop in sorted(result.crops, key=lambda c: c.face_index):
            checked, hash_hex = check_duplicate(crop, self.duplicates)
            record = {**checked.record(), "phash": hash_hex}
            if checked.kept:
                file_name = face_file_name(result.source, checked.face_index, self.image_format)
                self._save_image(checked, file_name)
                meta_lines.append(_dumps({"file_name": file_name, **record}))
            else:
                rejected_lines.append(_dumps(record))
            written.append(checked)
        if meta_lines or rejected_lines:
            _fsync_dir(self.dst)
        if result.error is not None:
            self._append(ERRORS, [_dumps({**result.error.record(), "source": result.source})])
        self._append(METADATA, meta_lines)
        self._append(REJECTED, rejected_lines)
        self._append(JOURNAL, [_dumps({"source": result.source, "faces": len(written)})])
        self.done.add(result.source)
        self.stats.add(result, written)
        return written

    def _append(self, name: str, lines: list[str]) -> None:
        if not lines:
            return
        fh = self._files[name]
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())

    def _save_image(self, crop: FaceCrop, file_name: str) -> None:
        tmp = self.dst / f".{file_name}{TMP_SUFFIX}"
        image = Image.fromarray(crop.image)
        with open(tmp, "wb") as fh:
            if self.image_format == "png":
                image.save(fh, format="PNG", compress_level=4)
            else:
                subsampling = 0 if self.jpeg_quality >= 90 else 2  # 4:4:4 chroma for high quality
                image.save(fh, format="JPEG", quality=self.jpeg_quality, subsampling=subsampling)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dst / file_name)

    # --- reading back -----------------------------------------------------------------------------

    def kept_records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.dst / METADATA)

    def write_contact_sheet(self, max_faces: int = 64, thumb: int = 128, columns: int = 8) -> Path | None:
        """A grid of up to ``max_faces`` kept faces, evenly sampled over the dataset; None if empty."""
        return write_contact_sheet(self.dst, max_faces=max_faces, thumb=thumb, columns=columns)


def write_contact_sheet(dst: Path, max_faces: int = 64, thumb: int = 128, columns: int = 8) -> Path | None:
    """Write ``dst/contact_sheet.png`` from the kept faces listed in ``dst/metadata.jsonl``."""
    names = [rec["file_name"] for rec in read_jsonl(dst / METADATA)]
    if not names:
        return None
    step = max(1, len(names) / max_faces)
    sample = [names[int(i * step)] for i in range(min(max_faces, len(names)))]
    cols = min(columns, len(sample))
    rows = -(-len(sample) // cols)
    gap = 2
    sheet = Image.new("RGB", (cols * (thumb + gap) + gap, rows * (thumb + gap) + gap), (32, 32, 32))
    for i, name in enumerate(sample):
        with Image.open(dst / name) as im:
            tile = im.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(tile, (gap + (i % cols) * (thumb + gap), gap + (i // cols) * (thumb + gap)))
    out = dst / CONTACT_SHEET
    tmp = dst / f".{CONTACT_SHEET}{TMP_SUFFIX}"
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete, parseable lines of a JSONL file (a trailing partial line is ignored)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [rec for line in fh if (rec := _parse_line(line)) is not None]


def _parse_line(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n"):
        return None  # written partially when the process died
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
