"""Where the kept crops go: a folder (HF ``imagefolder``), an EDM/StyleGAN zip, or WebDataset shards.

Every format keeps the same records in DST (``metadata.jsonl`` and the rest, see
:mod:`faceprep.dataset`); only the images' home differs:

``folder``  ``DST/<name>.png`` beside ``metadata.jsonl``: ``datasets.load_dataset("imagefolder")``.
``zip``     ``DST/dataset.zip``: NVlabs' ``dataset_tool`` layout (stored, not deflated;
            ``00000/img00000000.png``; ``dataset.json`` with ``"labels": null``; one image size), which
            EDM, EDM2 and StyleGAN2/3 train from unchanged.
``wds``     ``DST/shards/faces-000000.tar``, ... with ``SHARD_SIZE`` samples each: ``<key>.png`` and
            ``<key>.json`` (the metadata line; the key is the face's 9-digit index, free of dots as
            WebDataset wants), for ``webdataset`` and ``datasets.load_dataset("webdataset")``.

For zip and wds the writer saves each crop under ``DST/.faceprep-staging/`` first (the same crash-safe
writes as the folder format) and :meth:`OutputFormat.pack` moves the staged crops into the archive at the
end of a run: the archive is written to a temporary name and renamed into place, then the staged files it
now holds are removed. A kill at any instant leaves the previous archive intact and the staged crops on
disk, so the next run packs them. Only the zip is rewritten as a whole; complete shards are never touched.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from faceprep.atomic import TMP_PREFIX, fsync_path

OutputKind = Literal["folder", "zip", "wds"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("folder", "zip", "wds")
STAGING = ".faceprep-staging"
ZIP_NAME = "dataset.zip"
SHARDS = "shards"
SHARD_SIZE = 10_000


@dataclass(frozen=True)
class OutputFormat:
    """One of :data:`OUTPUT_KINDS`: where crops are written first and how they reach their home."""

    kind: OutputKind = "folder"

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {', '.join(OUTPUT_KINDS)}, not {self.kind!r}")

    def image_dir(self, dst: Path) -> Path:
        """The folder the writer saves crops into."""
        return dst if self.kind == "folder" else dst / STAGING

    def placement(self, index: int, file_name: str) -> dict[str, str]:
        """The metadata fields that say where kept face number ``index`` lives in the archive."""
        if self.kind == "zip":
            ext = Path(file_name).suffix
            return {"archive": ZIP_NAME, "archive_name": f"{index // 1000:05d}/img{index:08d}{ext}"}
        if self.kind == "wds":
            return {"archive": f"{SHARDS}/{shard_name(index // SHARD_SIZE)}", "key": f"{index:09d}"}
        return {}

    def pack(self, dst: Path, records: Iterable[Mapping[str, Any]]) -> int:
        """Move the staged crops of ``records`` (kept faces, in order) into the archive; returns how many."""
        if self.kind == "folder":
            return 0
        staged = [r for r in records if (dst / STAGING / r["file_name"]).is_file()]
        if not staged:
            return 0
        if self.kind == "zip":
            _pack_zip(dst, staged)
        else:
            _pack_shards(dst, staged)
        for record in staged:  # in the archive now (renamed into place above): the staged copy goes
            (dst / STAGING / record["file_name"]).unlink(missing_ok=True)
        return len(staged)

    def holds(self, dst: Path, record: Mapping[str, Any]) -> bool:
        """Whether the crop of a kept ``record`` exists (staged, in the folder, or in its archive)."""
        if (self.image_dir(dst) / record["file_name"]).is_file():
            return True
        return self.kind != "folder" and (dst / str(record.get("archive", ""))).is_file()


def read_crop(dst: Path, record: Mapping[str, Any]) -> bytes:
    """The encoded crop of a kept ``record``, wherever it is now (folder, staging, zip or shard)."""
    for path in (dst / record["file_name"], dst / STAGING / record["file_name"]):
        if path.is_file():
            return path.read_bytes()
    archive = dst / str(record.get("archive", ""))
    if record.get("archive") and archive.is_file():
        if "archive_name" in record:
            with zipfile.ZipFile(archive) as zf:
                return zf.read(str(record["archive_name"]))
        with tarfile.open(archive) as tar:
            member = tar.extractfile(f"{record['key']}{Path(record['file_name']).suffix}")
            if member is not None:
                return member.read()
    raise FileNotFoundError(f"{dst / record['file_name']}: crop not found")


def shard_name(number: int) -> str:
    return f"faces-{number:06d}.tar"


def _pack_zip(dst: Path, staged: list[Mapping[str, Any]]) -> None:
    final = dst / ZIP_NAME
    tmp = dst / f"{TMP_PREFIX}{ZIP_NAME}"
    new = {r["archive_name"]: dst / STAGING / r["file_name"] for r in staged}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
        if final.is_file():
            with zipfile.ZipFile(final) as old:
                for info in old.infolist():
                    if info.filename not in new and info.filename != "dataset.json":
                        out.writestr(info, old.read(info))
        for name, path in sorted(new.items()):
            out.write(path, name)
        out.writestr("dataset.json", json.dumps({"labels": None}))
    _commit(tmp, final)


def _pack_shards(dst: Path, staged: list[Mapping[str, Any]]) -> None:
    by_shard: dict[str, list[Mapping[str, Any]]] = {}
    for record in staged:
        by_shard.setdefault(str(record["archive"]), []).append(record)
    (dst / SHARDS).mkdir(exist_ok=True)
    for archive, members in by_shard.items():
        final = dst / archive
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
        keys = {str(r["key"]) for r in members}
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as out:
            if final.is_file():  # the last shard of an earlier run: keep its samples, add the new ones
                with tarfile.open(final) as old:
                    for info in old.getmembers():
                        if info.name.partition(".")[0] not in keys:
                            out.addfile(info, old.extractfile(info))
            for record in members:
                image = dst / STAGING / record["file_name"]
                _add_bytes(out, f"{record['key']}{image.suffix}", image.read_bytes())
                _add_bytes(out, f"{record['key']}.json", json.dumps(dict(record)).encode("utf-8"))
        _commit(tmp, final)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for identical runs
    tar.addfile(info, io.BytesIO(data))


def _commit(tmp: Path, final: Path) -> None:
    fsync_path(tmp)
    os.replace(tmp, final)
