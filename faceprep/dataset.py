"""Writing a face dataset folder that survives interruption and resumes without duplicates.

Layout of ``DST`` (Hugging Face ``imagefolder`` loads it as is)::

    <name>.png | <name>.jpg   one aligned face per kept detection
    metadata.jsonl            one line per kept face, ``file_name`` first, then FaceCrop.record()
    rejected.jsonl            one line per rejected face (same fields, ``rejected_by`` non-empty)
    errors.jsonl              one line per source that could not be processed: file, reason
    done.jsonl                journal: the files a source is about to write, then its finished line
    deleted.jsonl             kept crops found deleted by hand (their records, moved out of metadata)
    faceprep.json             the options the dataset was made with (see faceprep.run_options)
    contact_sheet.png         a grid of a sample of kept faces, written at the end
    .faceprep.lock            held by the run writing the folder (see faceprep.run_lock)

Crash safety (also against ``kill -9``): images are written to a hidden temporary name
(``.faceprep-tmp-*``) and renamed into place; before a source's images are written the journal names
them, its JSONL lines are appended only after its images are in place, and its finished line only after
those, each followed by flush + fsync. On opening, :meth:`DatasetWriter.open` repairs whatever an
interrupted run left: temporary files and a trailing partial line are dropped, lines of sources missing
from the journal are removed, and so are the images the journal says such a source was writing; those
sources are processed again. faceprep deletes no other file: nothing that is not in its own record.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from faceprep import atomic
from faceprep.atomic import TMP_PREFIX
from faceprep.card import CARD, ReviewCounts, write_card
from faceprep.filters import DuplicateIndex
from faceprep.outputs import SHARDS, ZIP_NAME, OutputFormat, read_crop
from faceprep.pipeline import FileResult, check_duplicate
from faceprep.run_lock import DatasetLock
from faceprep.run_options import OPTIONS_FILE, check_or_record
from faceprep.types import FaceCrop, SourceError

METADATA = "metadata.jsonl"
REJECTED = "rejected.jsonl"
ERRORS = "errors.jsonl"
JOURNAL = "done.jsonl"
CONTACT_SHEET = "preview/contact_sheet.png"  # outside the image set: EDM's tool would train on it
DELETED = "deleted.jsonl"
ImageFormat = Literal["png", "jpg"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
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


class DatasetError(RuntimeError):
    """DST cannot be used as it is (someone else's files where faceprep would write)."""


class DatasetWriter:
    """Single writer of a dataset folder (the CLI's main process; workers only compute).

    ``options`` (see :mod:`faceprep.run_options`) are checked against ``DST/faceprep.json`` on opening;
    None skips the check (library callers that manage their own folders).
    """

    def __init__(
        self,
        dst: str | os.PathLike[str],
        *,
        image_format: ImageFormat = "png",
        jpeg_quality: int = 95,
        dedup_distance: int | None = 6,
        options: Mapping[str, Any] | None = None,
        detector: Mapping[str, Any] | None = None,
        output: OutputFormat | None = None,
        src: str | os.PathLike[str] | None = None,
    ) -> None:
        if image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.dst = Path(dst)
        self.output = output or OutputFormat()
        self.images = self.output.image_dir(self.dst)
        self.image_format: ImageFormat = image_format
        self.jpeg_quality = jpeg_quality
        self.options = options
        self.src = None if src is None else os.fsdecode(Path(src).resolve())
        self.detector = detector or {}
        self.done: set[str] = set()
        self.ours: set[str] = set()  # image files this dataset's record says faceprep wrote
        self.deleted_by_hand: list[dict[str, Any]] = []  # kept crops found missing on opening
        self.notes: list[str] = []  # one-line messages for the user (older dataset, other version)
        self.duplicates = DuplicateIndex(dedup_distance)
        self.stats = RunStats()
        self._files: dict[str, Any] = {}
        self._lock: DatasetLock | None = None
        self._next_index = 0  # kept faces so far, over all runs: their place in a zip or shard

    # --- opening and repair -------------------------------------------------------------------------

    def open(self) -> DatasetWriter:
        """Lock DST, check its options, create it or repair and reload it for resuming; returns self."""
        self.dst.mkdir(parents=True, exist_ok=True)
        self._lock = DatasetLock(self.dst).acquire()
        self.images.mkdir(exist_ok=True)
        try:
            self._refuse_foreign_files()
            if self.options is not None:
                note = check_or_record(self.dst, self.options, self.detector, self.src)
                self.notes += [note] if note else []
            self._load_and_repair()
            names = (METADATA, REJECTED, ERRORS, JOURNAL)
            self._files = {name: open(self.dst / name, "a", encoding="utf-8") for name in names}  # noqa: SIM115
        except BaseException:
            self._lock.release()
            raise
        return self

    def _refuse_foreign_files(self) -> None:
        """A folder that is not a faceprep dataset yet must not hold files under faceprep's names."""
        if (self.dst / JOURNAL).exists() or (self.dst / OPTIONS_FILE).exists():
            return
        for name in (METADATA, REJECTED, ERRORS, DELETED, CONTACT_SHEET, ZIP_NAME, SHARDS):
            if (self.dst / name).exists():
                raise DatasetError(
                    f"{self.dst / name} exists but {self.dst} is not a faceprep dataset (no {JOURNAL}): "
                    "faceprep will not overwrite it; write to an empty or new folder"
                )

    def _load_and_repair(self) -> None:
        """Reload the record; undo what an interrupted source left, note crops deleted by hand."""
        for folder in {self.dst, self.images, self.dst / SHARDS}:
            for tmp in folder.glob(f"{TMP_PREFIX}*"):  # only faceprep writes files under this prefix
                tmp.unlink(missing_ok=True)
        journal = self._repair(JOURNAL, keep=lambda rec: "source" in rec)
        self.done = {rec["source"] for rec in journal if "faces" in rec}
        pending: set[str] = set()
        for rec in journal:
            files = set(rec.get("files") or rec.get("writing") or ())
            (self.ours if rec["source"] in self.done else pending).update(files)
        self._repair(JOURNAL, keep=lambda rec: rec.get("source") in self.done)
        kept = self._repair(METADATA, keep=lambda rec: rec.get("source") in self.done)
        self._repair(REJECTED, keep=lambda rec: rec.get("source") in self.done)
        self._repair(ERRORS, keep=lambda rec: rec.get("source") in self.done)
        listed = {rec["file_name"] for rec in kept}
        self.ours |= listed
        for name in pending - listed:  # an interrupted source's images, by our own record: redone
            (self.images / name).unlink(missing_ok=True)
        self._next_index = len(kept) + len(read_jsonl(self.dst / DELETED))
        present = [rec for rec in kept if self.output.holds(self.dst, rec)]
        if len(present) < len(kept):  # crops the user deleted: keep the decision, record it
            self.deleted_by_hand = [rec for rec in kept if rec not in present]
            found = time.strftime("%Y-%m-%dT%H:%M:%S")
            lines = [_dumps({**rec, "deleted_found": found}) for rec in self.deleted_by_hand]
            atomic.append_lines(self.dst / DELETED, lines)
            self._repair(METADATA, keep=lambda rec: self.output.holds(self.dst, rec))
        for rec in present:
            if "phash" in rec:
                self.duplicates.add(rec["phash"])

    def own_files(self) -> set[str]:
        """Names (relative to DST) of every file faceprep wrote there, for excluding them as inputs."""
        fixed = {METADATA, REJECTED, ERRORS, JOURNAL, DELETED, CONTACT_SHEET, OPTIONS_FILE, CARD}
        return self.ours | fixed

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
            atomic.write_text(path, "".join(_dumps(r) for r in records))
        return records

    def __enter__(self) -> DatasetWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- writing ----------------------------------------------------------------------------------

    def write(self, result: FileResult) -> list[FaceCrop]:
        """Record one processed source (exactly once); returns its crops after the duplicate check."""
        if not self._files:
            raise RuntimeError("DatasetWriter.write called before open()")
        if result.source in self.done:
            return []
        crops = sorted(result.crops, key=lambda c: c.face_index)
        error = result.error
        taken = [
            name
            for c in crops
            if (name := face_file_name(result.source, c.face_index, self.image_format)) not in self.ours
            and (self.images / name).exists()
        ]
        if taken:  # someone else's file under a crop's name: never overwrite it
            reason = f"{self.images / taken[0]} exists and was not written by faceprep: not overwritten"
            error, crops = SourceError(result.path, reason), []
        written: list[FaceCrop] = []
        files: list[str] = []
        meta_lines: list[str] = []
        rejected_lines: list[str] = []
        for crop in crops:
            checked, hash_hex = check_duplicate(crop, self.duplicates)
            record = {**checked.record(), "phash": hash_hex}
            if checked.kept:
                files.append(face_file_name(result.source, checked.face_index, self.image_format))
                place = self.output.placement(self._next_index + len(files) - 1, files[-1])
                meta_lines.append(_dumps({"file_name": files[-1], **place, **record}))
            else:
                rejected_lines.append(_dumps(record))
            written.append(checked)
        if files:  # our record of what we are about to write, so a repair removes only our files
            self._append(JOURNAL, [_dumps({"source": result.source, "writing": files})])
            for crop, name in zip((c for c in written if c.kept), files, strict=True):
                self._save_image(crop, name)
                self.ours.add(name)
            atomic.fsync_path(self.images)
        if error is not None:
            self._append(ERRORS, [_dumps({**error.record(), "source": result.source})])
        self._append(METADATA, meta_lines)
        self._append(REJECTED, rejected_lines)
        self._append(JOURNAL, [_dumps({"source": result.source, "faces": len(written), "files": files})])
        self.done.add(result.source)
        self._next_index += len(files)
        self.stats.add(dataclasses.replace(result, error=error), written)
        return written

    def _append(self, name: str, lines: list[str]) -> None:
        if not lines:
            return
        fh = self._files[name]
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())

    def _save_image(self, crop: FaceCrop, file_name: str) -> None:
        atomic.save_image(self.images / file_name, crop.image, self.image_format, self.jpeg_quality)

    # --- reading back -----------------------------------------------------------------------------

    def kept_records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.dst / METADATA)

    def finish(self, contact_sheet: bool = True) -> Path | None:
        """End of a run: pack staged crops into the archive, write the contact sheet and the card.

        Returns the contact sheet's path (None when not asked for or no crop is left)."""
        kept = self.kept_records()
        self.output.pack(self.dst, kept)
        reviewed = review_counts(self.dst, kept)
        sheet = write_contact_sheet(self.dst, reviewed.records) if contact_sheet else None
        write_card(
            self.dst,
            kept=kept,
            review=reviewed,
            rejected=read_jsonl(self.dst / REJECTED),
            errors=len(read_jsonl(self.dst / ERRORS)),
            deleted=len(read_jsonl(self.dst / DELETED)),
            output=self.output.kind,
            contact_sheet=CONTACT_SHEET if sheet else None,
        )
        return sheet


def review_counts(dst: Path, kept: list[dict[str, Any]]) -> ReviewCounts:
    """What the review decisions of ``dst`` (``review.jsonl``) make of its ``kept`` faces."""
    if not (dst / "review.jsonl").is_file():
        return ReviewCounts(records=kept)
    from faceprep.review.apply import effective_kept

    effective = effective_kept(dst)
    rescued = [r for r in effective if r.get("rescued")]
    return ReviewCounts(
        records=[r for r in effective if r.get("file_name")],
        rejected=len(kept) - (len(effective) - len(rescued)),
        rescued=len(rescued),
        pending=sum(r.get("file_name") is None for r in rescued),
    )


def write_contact_sheet(
    dst: Path,
    records: list[dict[str, Any]] | None = None,
    max_faces: int = 64,
    thumb: int = 128,
    columns: int = 8,
) -> Path | None:
    """Write ``dst/preview/contact_sheet.png`` from ``records`` (default: ``dst/metadata.jsonl``'s).

    Crops deleted or broken since they were listed are left out; None when no crop is left."""
    records = read_jsonl(dst / METADATA) if records is None else records
    step = max(1.0, len(records) / max_faces)
    sample = [records[int(i * step)] for i in range(min(max_faces, len(records)))]
    tiles: list[Image.Image] = []
    for record in sample:
        try:
            with Image.open(io.BytesIO(read_crop(dst, record))) as im:
                tiles.append(im.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS))
        except (OSError, ValueError, KeyError):
            continue  # deleted or damaged by hand after it was written
    if not tiles:
        return None
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    gap = 2
    sheet = Image.new("RGB", (cols * (thumb + gap) + gap, rows * (thumb + gap) + gap), (32, 32, 32))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (gap + (i % cols) * (thumb + gap), gap + (i // cols) * (thumb + gap)))
    out = dst / CONTACT_SHEET
    out.parent.mkdir(exist_ok=True)
    with atomic.replacing(out, "wb") as fh:
        sheet.save(fh, format="PNG")
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
    """One JSONL line, UTF-8 where it can be; names that are not valid UTF-8 (``caf\\xe9.jpg`` read with
    surrogate escapes) are written as JSON ``\\udcXX`` escapes, which read back to the same name."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True)
    return text + "\n"
