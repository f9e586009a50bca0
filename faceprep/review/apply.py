"""Making review decisions count: the effective list of kept faces, and crops for rescued ones.

``effective_kept(dst)`` is what a trainer should read: the faces faceprep kept, minus those the
reviewer rejected, plus the rejected ones the reviewer kept ("rescued"). A rescued face had no crop
written (faceprep saves only kept faces); :func:`materialise_rescued` renders those crops into DST under
the name :func:`faceprep.dataset.face_file_name` gives them, with the dataset writer's discipline (the
journal names the files first, temporary ``.faceprep-tmp-*`` name, fsync, ``os.replace``), holding the
dataset lock.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceprep import atomic
from faceprep.review.render import CropRenderer, find_src
from faceprep.review.store import Decision, Key, iter_records, open_reader, read_decisions
from faceprep.types import ImageArray


def decisions(dst: str | os.PathLike[str]) -> dict[Key, Decision]:
    """The standing review decisions of ``dst``: ``{(source, face_index): "keep" | "reject"}``."""
    return read_decisions(dst)


def effective_kept(dst: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Kept faces minus those rejected in review, plus those kept in review, as metadata records.

    Records are metadata.jsonl's (copies); a face kept in review also carries ``"review": "keep"``.
    A rescued face (rejected by faceprep, kept in review) has ``"rescued": True`` and ``"file_name"``:
    its crop's name once :func:`materialise_rescued` wrote it, or None while it has no crop on disk.
    """
    root = Path(dst)
    reader = open_reader(root)
    chosen = read_decisions(root)
    fmt = _format(reader.options(), root)
    out: list[dict[str, Any]] = []
    seen: set[Key] = set()
    from faceprep.dataset import face_file_name

    for kept, rec in iter_records(reader):
        key = (rec["source"], int(rec.get("face_index", 0)))
        if key in seen:
            continue
        seen.add(key)
        decision = chosen.get(key)
        if kept and decision != "reject":
            out.append({**rec, "review": decision} if decision else dict(rec))
        elif not kept and decision == "keep":
            name = face_file_name(key[0], key[1], fmt)  # type: ignore[arg-type]
            exists = (root / name).is_file()
            out.append({"file_name": name if exists else None, **rec, "review": "keep", "rescued": True})
    return out


@dataclass
class Materialised:
    written: list[str] = field(default_factory=list)  # crop file names written into DST
    missing: list[Key] = field(default_factory=list)  # rescued faces whose source could not be read


def materialise_rescued(
    dst: str | os.PathLike[str], src: str | os.PathLike[str] | None = None
) -> Materialised:
    """Render the crop of every rescued face that has none yet into ``dst`` (see the module docstring).

    ``src``: the photos folder (default: ``"src"`` recorded in faceprep.json). Faces whose source photo
    cannot be read are listed in ``missing``. Raises DatasetLockedError while ``faceprep crop`` runs.
    """
    from faceprep.run_lock import DatasetLock

    root = Path(dst)
    with DatasetLock(root):
        reader = open_reader(root)
        options = reader.options()
        fmt = _format(options, root)
        quality = int(options.get("options", {}).get("jpeg_quality") or 95)
        renderer = CropRenderer(find_src(root, src), options)
        todo = [rec for rec in effective_kept(root) if rec.get("rescued") and rec.get("file_name") is None]
        result = Materialised()
        from faceprep.dataset import face_file_name

        ready: list[tuple[dict[str, Any], ImageArray]] = []
        for rec in todo:
            pixels = renderer.render(rec)
            if pixels is None:
                result.missing.append((rec["source"], int(rec.get("face_index", 0))))
            else:
                ready.append((rec, pixels))
        if not ready:
            return result
        names = [face_file_name(rec["source"], int(rec.get("face_index", 0)), fmt) for rec, _ in ready]  # type: ignore[arg-type]
        by_source: dict[str, list[str]] = {}
        for (rec, _), name in zip(ready, names, strict=True):
            by_source.setdefault(rec["source"], []).append(name)
        append_journal(root, [{"source": s, "writing": n} for s, n in by_source.items()])
        for (_, pixels), name in zip(ready, names, strict=True):
            save_crop(root, name, pixels, fmt, quality)
            result.written.append(name)
        atomic.fsync_path(root)
        return result


def append_journal(root: Path, records: list[dict[str, Any]]) -> None:
    """Name files about to be written in ``done.jsonl`` (as the writer does), so a resume owns them."""
    atomic.append_lines(root / "done.jsonl", [json.dumps(r, ensure_ascii=True) + "\n" for r in records])


def save_crop(root: Path, name: str, pixels: ImageArray, fmt: str, quality: int = 95) -> None:
    """Write a crop like DatasetWriter does: temporary name, fsync, ``os.replace``."""
    atomic.save_image(root / name, pixels, fmt, quality)


def _format(options: dict[str, Any], root: Path) -> str:
    fmt = options.get("options", {}).get("format")
    if fmt in ("png", "jpg"):
        return str(fmt)
    from faceprep.refilter import _guess_format

    return _guess_format(root)
