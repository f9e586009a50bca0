"""Training images: find, decode once, cache as uint8, hand out checked batches in [-1, 1].

Sources (``open_source``):
- a faceprep output folder: ``metadata.jsonl`` lines with ``file_name`` relative to the folder, with the
  review decisions of ``review.jsonl`` applied when there is one (``faceprep.review.effective_kept``); a
  folder written with ``--output zip`` reads its ``dataset.zip``;
- any folder of images (searched recursively);
- a ``.zip`` of images (the EDM/StyleGAN ``dataset_tool`` layout included).
WebDataset shards, and reading lazily in DataLoader workers, are :mod:`diffengine.streaming`
(``make_stream`` picks this in-memory path or that one).

Every image is decoded once, centre-cropped to a square, resized (antialiased) to the model resolution
and kept in memory as one ``(N, 3, R, R)`` uint8 tensor: UTKFace (23.7k faces) at 32 px is 73 MB.
Batches are drawn by ``BatchStream``: a seeded permutation per epoch, sharded across ranks, random
horizontal flips, its whole state saved in checkpoints so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from faceprep.imageio import DEFAULT_MAX_PIXELS

MAX_PIXELS = DEFAULT_MAX_PIXELS  # larger images are refused before decoding (as faceprep does)
ZIP_ERRORS = (OSError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FEW_IMAGES = 1000  # below this many images a diffusion model memorises: warn


class DataError(ValueError):
    """The training data cannot be used (missing, empty, unreadable, wrong range...)."""


@dataclass(frozen=True)
class ImageSource:
    """Where images live: a folder (optionally with metadata.jsonl) or a zip; names are relative."""

    path: Path
    names: tuple[str, ...]
    is_zip: bool
    # What the held-out split hashes, one per name (default: the names). A faceprep folder written with
    # ``--output zip`` lists zip entries (``00000/img00000000.png``) but splits by the crops' file names,
    # so its split is the one of the same run written as a folder or as shards.
    split_keys: tuple[str, ...] | None = None

    def split(self, split: str, fraction: float) -> list[str]:
        """The names of ``split`` (``all``, ``train`` or ``heldout``) of the fixed hash split."""
        keys = self.names if self.split_keys is None else self.split_keys
        chosen = set(split_names(keys, split, fraction))
        return [n for n, k in zip(self.names, keys, strict=True) if k in chosen]

    def read_bytes(self, name: str, archive: zipfile.ZipFile | None = None) -> bytes:
        """The file's bytes; DataError naming ``folder/name`` or ``zip!name`` when it cannot be read
        (missing, permissions, a zip entry with a bad CRC or damaged compressed data...)."""
        try:
            if self.is_zip:
                if archive is None:
                    with zipfile.ZipFile(self.path) as zf:
                        return zf.read(name)
                return archive.read(name)
            return (self.path / name).read_bytes()
        except ZIP_ERRORS as exc:
            raise DataError(f"{self.describe(name)}: cannot read ({exc})") from exc

    def describe(self, name: str) -> str:
        return f"{self.path}!{name}" if self.is_zip else str(self.path / name)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS) and not Path(name).name.startswith(".")


def open_source(path: str | os.PathLike[str]) -> ImageSource:
    """List the images of a faceprep folder, a plain image folder or a zip. Raises DataError."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise DataError(f"{root}: not a folder or a .zip file")
        try:
            with zipfile.ZipFile(root) as zf:
                names = sorted(n for n in zf.namelist() if not n.endswith("/") and _is_image(n))
        except ZIP_ERRORS as exc:
            raise DataError(f"{root}: damaged zip file ({exc})") from exc
        if not names:
            raise DataError(f"{root}: the zip holds no images ({', '.join(IMAGE_EXTS)})")
        return ImageSource(root, tuple(names), is_zip=True)
    meta = root / "metadata.jsonl"
    if meta.is_file():
        records = kept_records(meta)
        if any(r.get("archive") for r in records):
            return _archive_source(root, meta, records)
        names = [str(r["file_name"]) for r in records]
        _check_present(meta, [n for n in names if not (root / n).is_file()])
    else:
        names = sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and _is_image(p.name)
        )
    if not names:
        raise DataError(f"{root}: no images found ({', '.join(IMAGE_EXTS)}, searched recursively)")
    return ImageSource(root, tuple(names), is_zip=False)


REVIEW = "review.jsonl"  # faceprep's review decisions (faceprep.review.store.REVIEW)


def kept_records(meta: Path) -> list[dict[str, Any]]:
    """The records of the faces to train on: ``metadata.jsonl``'s lines, each checked (UTF-8, a JSON
    object with a ``file_name`` inside the folder, symlinks resolved); where the folder holds a
    ``review.jsonl``, faceprep's rule instead (``faceprep.review.effective_kept``: kept faces minus those
    rejected in review plus those kept in review). Rescued faces whose crop is not rendered yet are left
    out with one warning. Raises DataError naming the file and line."""
    root = meta.parent.resolve()
    records: list[dict[str, Any]] = []
    try:
        raw = meta.read_bytes()
    except OSError as exc:
        raise DataError(f"{meta}: cannot read ({exc})") from exc
    for lineno, chunk in enumerate(raw.splitlines(), 1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{meta}:{lineno}: not UTF-8 text (byte 0x{chunk[exc.start]:02x} at column {exc.start + 1})"
            ) from exc
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name = str(record["file_name"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{meta}:{lineno}: not a JSON object with 'file_name' ({exc})") from exc
        if not _inside(root, name):
            raise DataError(
                f"{meta}:{lineno}: file_name {name!r} points outside the dataset folder {meta.parent}"
            )
        records.append(record)
    if not (meta.parent / REVIEW).is_file():
        return records
    from faceprep.review.apply import effective_kept  # lazily: plain folders need no faceprep.review

    try:
        reviewed = effective_kept(meta.parent)
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta.parent / REVIEW}: cannot apply the review decisions ({exc})") from exc
    pending = [r for r in reviewed if r.get("file_name") is None]
    if pending:
        warnings.warn(
            f"{meta.parent}: {len(pending)} face(s) kept in review have no crop yet and are left out: "
            f"render them with faceprep.review.materialise_rescued({str(meta.parent)!r}) "
            "(or the `faceprep review` page)",
            stacklevel=3,
        )
    chosen = [r for r in reviewed if r.get("file_name") is not None]
    for record in chosen:
        if not _inside(root, str(record["file_name"])):
            raise DataError(
                f"{meta.parent / REVIEW}: file_name {record['file_name']!r} points outside the dataset "
                f"folder {meta.parent}"
            )
    return chosen


def _check_present(meta: Path, missing: Sequence[str]) -> None:
    """DataError for listed crops that are not there, saying how to record a deletion made by hand."""
    if not missing:
        return
    fix = (
        f"if they were deleted on purpose, run `faceprep crop SRC {meta.parent}` again (it records them in "
        "deleted.jsonl and drops them from metadata.jsonl); otherwise restore them"
        if (meta.parent / "done.jsonl").is_file()
        else "remove their lines from metadata.jsonl or restore the files"
    )
    raise DataError(f"{meta}: {len(missing)} listed file(s) missing, e.g. {meta.parent / missing[0]}: {fix}")


def _archive_source(root: Path, meta: Path, records: list[dict[str, Any]]) -> ImageSource:
    """A faceprep folder written with ``--output zip``: its ``dataset.zip``, entries in record order."""
    loose = [r for r in records if not r.get("archive")]  # e.g. crops rendered for faces kept in review
    if loose:
        warnings.warn(
            f"{root}: {len(loose)} face(s) have a crop in the folder but not in its archive and are left "
            f"out, e.g. {root / str(loose[0]['file_name'])}",
            stacklevel=3,
        )
        records = [r for r in records if r.get("archive")]
    archives = {str(r.get("archive")) for r in records}
    if archives != {"dataset.zip"}:
        shards = sorted(a for a in archives if a.endswith(".tar"))
        if shards:
            raise DataError(
                f"{root}: its crops are WebDataset shards ({root / shards[0]}, ...): they are streamed, "
                "use diffengine.streaming.make_stream (diffengine train does)"
            )
        raise DataError(
            f"{meta}: records name several archives or none ({sorted(archives)}): re-run faceprep"
        )
    archive = root / "dataset.zip"
    try:
        with zipfile.ZipFile(archive) as zf:
            present = set(zf.namelist())
    except ZIP_ERRORS as exc:
        raise DataError(f"{archive}: damaged or missing zip file ({exc})") from exc
    names = [str(r.get("archive_name", "")) for r in records]
    _check_present(
        meta, [n or str(r["file_name"]) for n, r in zip(names, records, strict=True) if n not in present]
    )
    keys = tuple(Path(str(r["file_name"])).name for r in records)
    return ImageSource(archive, tuple(names), is_zip=True, split_keys=keys)


def _inside(root: Path, name: str) -> bool:
    """Whether relative ``name`` resolves (symlinks followed) to a path inside resolved ``root``."""
    if not name or "\x00" in name or Path(name).is_absolute() or Path(name).drive:
        return False
    try:
        return (root / name).resolve().is_relative_to(root)
    except (OSError, RuntimeError, ValueError):  # symlink loops, odd names
        return False


def heldout_split(names: Sequence[str], fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split names into (train, held-out) by a hash of each base name: fixed across runs and machines."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), not {fraction}")
    train: list[str] = []
    held: list[str] = []
    for name in names:
        (held if is_heldout(name, fraction) else train).append(name)
    return train, held


def is_heldout(name: str, fraction: float) -> bool:
    """Whether ``name`` falls in the held-out fraction: a hash of its base name (folders do not count)."""
    digest = hashlib.sha256(Path(name).name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def split_names(names: Sequence[str], split: str, fraction: float) -> list[str]:
    """The names of ``split`` (``all``, ``train`` or ``heldout``) of the fixed hash split."""
    if split == "all":
        return list(names)
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be all, train or heldout, not {split!r}")
    train, held = heldout_split(names, fraction)
    return train if split == "train" else held


def decode_image(data: bytes, resolution: int, where: str) -> torch.Tensor:
    """Decode, centre-crop to a square and resize (antialiased). Returns (3, R, R) uint8.

    Images over ``MAX_PIXELS`` (read from the header, before decoding) and decompression bombs are a
    DataError, like undecodable data."""
    try:
        opened = Image.open(io.BytesIO(data))
        w, h = opened.size
        if w * h > MAX_PIXELS:
            raise DataError(
                f"{where}: image too large ({w}x{h} = {w * h} pixels > {MAX_PIXELS}; decompression bomb?)"
            )
        opened.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale >= resolution
        img = opened.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{where}: decompression bomb refused ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{where}: cannot read image ({exc})") from exc
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    img = img.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return array.view(resolution, resolution, 3).permute(2, 0, 1).contiguous()


def load_images(
    source: ImageSource, resolution: int, names: Sequence[str] | None = None, workers: int | None = None
) -> torch.Tensor:
    """Decode every image (threads) into one (N, 3, R, R) uint8 tensor. Raises DataError naming the file."""
    names = list(source.names if names is None else names)
    if not names:
        raise DataError(f"{source.path}: no images to load")
    out = torch.empty(len(names), 3, resolution, resolution, dtype=torch.uint8)
    archive = zipfile.ZipFile(source.path) if source.is_zip else None
    try:

        def work(i: int) -> None:
            name = names[i]
            out[i] = decode_image(source.read_bytes(name, archive), resolution, source.describe(name))

        # PIL warns about huge images (and refuses twice its limit); decode_image refuses them itself,
        # naming the file. Set here in the calling thread, around the whole pool: the warnings filters
        # are process-global.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if source.is_zip:  # ZipFile reads share one file handle: stay sequential
                for i in range(len(names)):
                    work(i)
            else:
                with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
                    list(pool.map(work, range(len(names))))
    finally:
        if archive is not None:
            archive.close()
    flat = out.flatten(1)
    constant = (flat.amax(1) == flat.amin(1)).nonzero().flatten().tolist()
    if constant:
        shown = ", ".join(source.describe(names[i]) for i in constant[:3])
        raise DataError(f"{len(constant)} constant (single-colour) image(s), e.g. {shown}: remove them")
    return out


def load_dataset(
    path: str | os.PathLike[str],
    resolution: int,
    *,
    split: str = "all",
    heldout_fraction: float = 0.1,
) -> tuple[torch.Tensor, list[str]]:
    """Images of ``path`` at ``resolution`` as uint8 plus their names. split: all | train | heldout."""
    source = open_source(path)
    names = source.split(split, heldout_fraction)
    images = load_images(source, resolution, names)
    if len(names) < FEW_IMAGES:
        warnings.warn(
            f"{path}: only {len(names)} images; under ~{FEW_IMAGES} a diffusion model memorises them",
            stacklevel=2,
        )
    return images, names


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded)."""
    return ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


class DataCheckError(RuntimeError):
    """A batch that must not be trained on."""


def check_batch(x: torch.Tensor, tol: float = 1e-3) -> list[str]:
    """Stop on NaN/Inf, values outside [-1, 1] or constant images; return warnings for odd-looking data.

    x: (B, C, H, W) float. Raises DataCheckError with the reason and the usual cause.
    """
    if x.ndim != 4:
        raise DataCheckError(f"batch must be (B, C, H, W), got shape {tuple(x.shape)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite.flatten(1).all(1)).nonzero().flatten().tolist()
        raise DataCheckError(f"batch contains NaN/Inf in image(s) {bad[:8]}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - tol or hi > 1 + tol:
        hint = " — looks like [0, 255] pixels: divide by 127.5 and subtract 1" if hi > 2 else ""
        raise DataCheckError(f"batch values span [{lo:.4g}, {hi:.4g}], outside [-1, 1]{hint}")
    flat = x.flatten(1)
    constant = ((flat.amax(1) - flat.amin(1)) < 1e-6).nonzero().flatten().tolist()
    if constant:
        raise DataCheckError(f"constant image(s) {constant[:8]} in the batch (blank or broken files?)")
    notes: list[str] = []
    if lo >= -tol and x.shape[0] * flat.shape[1] >= 64:
        notes.append(f"batch values span [{lo:.3g}, {hi:.3g}]: data in [0, 1] instead of [-1, 1]?")
    elif hi - lo < 0.25:
        notes.append(f"batch values span only [{lo:.3g}, {hi:.3g}]: very low contrast data")
    return notes


class BatchStream:
    """Deterministic, resumable batches: a seeded permutation per epoch, sharded by rank, random flips.

    Every rank draws the same permutation (same generator) and takes its slice of each global batch,
    so ranks see disjoint images. ``state_dict`` captures everything needed to continue exactly.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype} {images.shape}")
        self.images = images
        self.batch_size = batch_size  # per rank
        self.rank, self.world_size, self.flip = rank, world_size, flip
        self.global_batch = batch_size * world_size
        if images.shape[0] < self.global_batch:
            raise DataError(
                f"{images.shape[0]} images are fewer than one global batch ({self.global_batch}): "
                "lower --batch-size"
            )
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.pos = 0
        self.perm = torch.randperm(images.shape[0], generator=self.generator)

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    def next_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, flip mask) of this rank's next batch."""
        if self.pos + self.global_batch > self.perm.numel():  # drop the ragged tail, new epoch
            self.epoch += 1
            self.pos = 0
            self.perm = torch.randperm(self.images.shape[0], generator=self.generator)
        chunk = self.perm[self.pos : self.pos + self.global_batch]
        flips = torch.rand(self.global_batch, generator=self.generator) < 0.5
        self.pos += self.global_batch
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return chunk[mine], flips[mine] & self.flip

    def next(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """This rank's next batch on ``device``: (B, 3, R, R) float32 in [-1, 1]."""
        idx, flips = self.next_indices()
        x = to_model_range(self.images[idx].to(device, non_blocking=True))
        flips = flips.to(x.device)
        return torch.where(flips[:, None, None, None], x.flip(3), x)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "pos": self.pos,
            "perm": self.perm.clone(),
            "n": int(self.images.shape[0]),
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n"]) != self.images.shape[0] or int(state["global_batch"]) != self.global_batch:
            raise DataError(
                f"checkpoint was trained on {state['n']} images with global batch {state['global_batch']}; "
                f"now {self.images.shape[0]} images with global batch {self.global_batch}: cannot resume "
                "the exact data order"
            )
        self.generator.set_state(state["generator"])
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.perm = state["perm"].clone()
