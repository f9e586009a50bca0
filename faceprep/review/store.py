"""Reading a faceprep dataset for review, and the review decisions stored beside it.

A dataset is read through a :class:`DatasetReader` (only the folder format exists today:
:class:`FolderReader`; a zip or WebDataset reader plugs in by implementing the same protocol and being
returned by :func:`open_reader`). The review page holds every face in a :class:`FaceTable`: compact
numpy columns (status, rejection reasons, filter values, phash) plus each face's JSON line, so 50 000
faces take a few tens of MB and filtering or sorting them is a numpy operation.

Decisions live in ``DST/review.jsonl``, one JSON line per decision (``source``, ``face_index``,
``decision``: ``"keep"``, ``"reject"`` or ``null`` for "back to faceprep's own verdict"), appended with
a single ``write`` on an ``O_APPEND`` descriptor and fsynced; the last line for a face wins. A face is
identified by ``(source, face_index)``, which stay the same across resumes and refilters.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from faceprep.refilter import FILTER_ORDER
from faceprep.review.render import recorded_options

METADATA = "metadata.jsonl"
REJECTED = "rejected.jsonl"
JOURNAL = "done.jsonl"
REVIEW = "review.jsonl"
CACHE_DIR = ".faceprep-review"  # the review page's own cache inside DST (thumbnails)

Key = tuple[str, int]
Decision = Literal["keep", "reject"]
KEPT, REJECTED_STATUS = 0, 1
NO_DECISION, KEEP, REJECT = 0, 1, 2
_DECISION_CODE: dict[str | None, int] = {None: NO_DECISION, "keep": KEEP, "reject": REJECT}


# --- reading a dataset -----------------------------------------------------------------------------


class DatasetReader(Protocol):
    """What the review page needs from a dataset, whatever its output format."""

    root: Path  # DST: where review.jsonl and the thumbnail cache live

    def records(self) -> Iterator[tuple[bool, str]]:
        """(kept, JSON line) for every face, kept and rejected."""
        ...

    def run_order(self) -> dict[str, int]:
        """Position of each source in the order the run processed them."""
        ...

    def options(self) -> dict[str, Any]:
        """The recorded ``faceprep.json`` (``{}`` if none)."""
        ...

    def crop_bytes(self, file_name: str) -> bytes | None:
        """The stored crop image of a kept face, or None when it is not there."""
        ...

    def crop_stamp(self, file_name: str) -> str | None:
        """Changes when the stored crop changes (size and mtime); None when it is not there."""
        ...

    def signature(self) -> tuple[Any, ...]:
        """Changes whenever the dataset's records change (to reload)."""
        ...


class FolderReader:
    """The folder format written by ``faceprep crop`` (see :mod:`faceprep.dataset`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def records(self) -> Iterator[tuple[bool, str]]:
        for name, kept in ((METADATA, True), (REJECTED, False)):
            for line in _lines(self.root / name):
                yield kept, line

    def run_order(self) -> dict[str, int]:
        order: dict[str, int] = {}
        for line in _lines(self.root / JOURNAL):
            rec = _parse(line)
            if rec is not None and "faces" in rec and isinstance(rec.get("source"), str):
                order.setdefault(rec["source"], len(order))
        return order

    def options(self) -> dict[str, Any]:
        return recorded_options(self.root)

    def crop_path(self, file_name: str) -> Path | None:
        """``DST/file_name`` if it is a file directly inside DST (no traversal, no symlink out)."""
        if not file_name or "/" in file_name or "\\" in file_name or file_name.startswith("."):
            return None
        try:
            base = self.root.resolve(strict=True)
            path = (base / file_name).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return path if path.parent == base and path.is_file() else None

    def crop_bytes(self, file_name: str) -> bytes | None:
        path = self.crop_path(file_name)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    def crop_stamp(self, file_name: str) -> str | None:
        path = self.crop_path(file_name)
        if path is None:
            return None
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def signature(self) -> tuple[Any, ...]:
        sig: list[Any] = []
        for name in (METADATA, REJECTED):
            try:
                st = (self.root / name).stat()
                sig.append((st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append(None)
        return tuple(sig)


def open_reader(dst: str | os.PathLike[str]) -> DatasetReader:
    """The reader for the dataset at ``dst``; ValueError if it is not a faceprep dataset."""
    root = Path(dst)
    if root.is_dir() and any((root / n).is_file() for n in (METADATA, REJECTED, JOURNAL)):
        return FolderReader(root)
    raise ValueError(f"{root} is not a faceprep dataset folder (no {METADATA} or {JOURNAL})")


def _lines(path: Path) -> Iterator[str]:
    """Complete lines of a text file (a trailing partial line, still being written, is skipped)."""
    try:
        fh = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if line.endswith("\n") and line.strip():
                yield line


def _parse(line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


# --- the table of faces ----------------------------------------------------------------------------


@dataclass
class FaceTable:
    """Every face of a dataset, as columns; a face's id is its row."""

    keys: list[Key]
    lines: list[str]  # each face's JSON line, parsed again only when its details are asked for
    file_names: list[str | None]
    kept: NDArray[np.bool_]
    reasons: NDArray[np.int64]  # bit i: rejected by self.reason_names[i]
    values: NDArray[np.float64]  # (n, len(filter_names)); NaN where not recorded
    phash: NDArray[np.uint64]
    has_phash: NDArray[np.bool_]
    order: NDArray[np.int64]  # run order: source position, then face index
    filter_names: list[str]
    reason_names: list[str]
    index: dict[Key, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, reader: DatasetReader) -> FaceTable:
        run_order = reader.run_order()
        keys: list[Key] = []
        lines: list[str] = []
        file_names: list[str | None] = []
        kept: list[bool] = []
        filters: list[dict[str, Any]] = []
        rejected_by: list[list[str]] = []
        hashes: list[str | None] = []
        order: list[int] = []
        index: dict[Key, int] = {}
        for is_kept, line in reader.records():
            rec = _parse(line)
            if rec is None or not isinstance(rec.get("source"), str):
                continue
            key = (rec["source"], int(rec.get("face_index", 0)))
            if key in index:  # listed twice (an interrupted refilter): the kept listing wins
                continue
            index[key] = len(keys)
            keys.append(key)
            lines.append(line)
            file_names.append(rec.get("file_name") if is_kept else None)
            kept.append(is_kept)
            stored = rec.get("filters")
            filters.append(stored if isinstance(stored, dict) else {})
            rejected_by.append([str(r) for r in rec.get("rejected_by") or ()])
            hashes.append(rec.get("phash") if isinstance(rec.get("phash"), str) else None)
            position = run_order.get(key[0], len(run_order))
            order.append(position * 1024 + min(key[1], 1023))
        present = {name for f in filters for name in f}
        names = [n for n in FILTER_ORDER if n in present] + sorted(present - set(FILTER_ORDER))
        reasons_present = {r for rs in rejected_by for r in rs}
        reason_names = [n for n in names if n in reasons_present] + sorted(reasons_present - set(names))
        bit = {name: 1 << i for i, name in enumerate(reason_names)}
        values = np.full((len(keys), len(names)), np.nan, dtype=np.float64)
        col = {name: j for j, name in enumerate(names)}
        for i, f in enumerate(filters):
            for name, value in f.items():
                if isinstance(value, int | float):
                    values[i, col[name]] = float(value)
        has_phash = np.array([h is not None for h in hashes], dtype=bool)
        phash = np.array([_hex64(h) for h in hashes], dtype=np.uint64)
        return cls(
            keys=keys,
            lines=lines,
            file_names=file_names,
            kept=np.array(kept, dtype=bool),
            reasons=np.array([sum(bit[r] for r in set(rs)) for rs in rejected_by], dtype=np.int64),
            values=values,
            phash=phash,
            has_phash=has_phash,
            order=np.array(order, dtype=np.int64),
            filter_names=names,
            reason_names=reason_names,
            index=index,
        )

    def record(self, face_id: int) -> dict[str, Any]:
        rec = _parse(self.lines[face_id])
        return rec if rec is not None else {}

    def reason_list(self, face_id: int) -> list[str]:
        mask = int(self.reasons[face_id])
        return [name for i, name in enumerate(self.reason_names) if mask >> i & 1]

    def nearest_kept(self, face_id: int, *, earlier: bool = False) -> tuple[int, int] | None:
        """(id, Hamming distance) of the kept face whose phash is nearest this face's, itself excluded.

        ``earlier``: only faces the run wrote before this one (what its duplicate check saw)."""
        if not self.has_phash[face_id]:
            return None
        candidates = self.kept & self.has_phash
        candidates[face_id] = False
        if earlier and (candidates & (self.order < self.order[face_id])).any():
            candidates &= self.order < self.order[face_id]
        ids = np.flatnonzero(candidates)
        if not len(ids):
            return None
        distance = hamming(self.phash[ids], self.phash[face_id])
        best = int(np.argmin(distance))
        return int(ids[best]), int(distance[best])


def _hex64(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return int(value, 16) & 0xFFFFFFFFFFFFFFFF
    except ValueError:
        return 0


def hamming(hashes: NDArray[np.uint64], one: np.uint64) -> NDArray[np.int64]:
    """Bit differences between each of ``hashes`` and ``one``."""
    xor = np.bitwise_xor(hashes, one)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.asarray(np.bitwise_count(xor), dtype=np.int64)
    bits = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1)
    return np.asarray(bits.sum(axis=1), dtype=np.int64)


# --- decisions -------------------------------------------------------------------------------------


def read_decisions(dst: str | os.PathLike[str]) -> dict[Key, Decision]:
    """The standing review decision per face: ``{(source, face_index): "keep" | "reject"}``.

    The last line for a face wins; a ``null`` decision (an undo) removes the face's entry."""
    out: dict[Key, Decision] = {}
    for line in _lines(Path(dst) / REVIEW):
        rec = _parse(line)
        if rec is None or not isinstance(rec.get("source"), str):
            continue
        try:
            key = (rec["source"], int(rec["face_index"]))
        except (KeyError, TypeError, ValueError):
            continue
        decision = rec.get("decision")
        if decision in ("keep", "reject"):
            out[key] = decision
        elif decision is None:
            out.pop(key, None)
    return out


class DecisionLog:
    """Appends decisions to ``DST/review.jsonl`` (one ``write`` per line, fsynced) and mirrors them.

    Thread-safe. Never takes the dataset lock: a running ``faceprep crop`` does not write this file.
    """

    def __init__(self, dst: Path) -> None:
        self.path = dst / REVIEW
        self._lock = threading.Lock()
        self.current: dict[Key, Decision] = read_decisions(dst)

    def record(self, key: Key, decision: Decision | None, **extra: Any) -> None:
        if decision not in ("keep", "reject", None):
            raise ValueError(f"decision must be 'keep', 'reject' or None, got {decision!r}")
        line = json.dumps(
            {
                "source": key[0],
                "face_index": key[1],
                "decision": decision,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **extra,
            },
            ensure_ascii=True,
        )
        with self._lock:
            _append_line(self.path, line)
            if decision is None:
                self.current.pop(key, None)
            else:
                self.current[key] = decision


def _append_line(path: Path, line: str) -> None:
    """Append one line atomically: a single write on O_APPEND, then fsync.

    If an earlier writer died mid-line, a newline is written first so that only its line is lost."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        data = line.encode("ascii") + b"\n"
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def decision_codes(table: FaceTable, current: Mapping[Key, Decision]) -> NDArray[np.int8]:
    codes = np.zeros(len(table), dtype=np.int8)
    for key, decision in current.items():
        face_id = table.index.get(key)
        if face_id is not None:
            codes[face_id] = _DECISION_CODE[decision]
    return codes


def iter_records(reader: DatasetReader) -> Iterable[tuple[bool, dict[str, Any]]]:
    for kept, line in reader.records():
        rec = _parse(line)
        if rec is not None and isinstance(rec.get("source"), str):
            yield kept, rec
