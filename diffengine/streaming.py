"""Training images read lazily by DataLoader workers, and ``make_stream``, which picks that or memory.

    stream = make_stream("faces/", 64, batch_size=32, seed=0, rank=dist.rank, world_size=dist.world_size)
    x = stream.next(device)          # (32, 3, 64, 64) float32 in [-1, 1]
    state = stream.state_dict()      # into the checkpoint; stream.load_state_dict(state) continues exactly

Sources: a faceprep folder (``metadata.jsonl``, review decisions applied), any image folder, a zip (the
EDM/StyleGAN ``dataset_tool`` layout included) — all map-style, read by index — and WebDataset shards
(``.tar`` files holding ``<key>.png`` + ``<key>.json``: a folder of them, one file, a glob, or a faceprep
folder written with ``--output wds``), read front to back with plain ``tarfile`` (no ``webdataset``
needed). Workers decode, centre-crop, resize (``decode_image``'s rules, antialiased) and flip; the main
process only moves uint8 batches to the device (pinned memory on CUDA) and scales them to [-1, 1].

Order. Map-style sources (and the in-memory path, :class:`MemoryStream`) share one order, a pure function
of ``(seed, epoch)``: epoch ``e`` is a permutation of the images and a flip per position drawn from a
generator seeded by a hash of ``(seed, e)``; global batch ``k`` of the epoch is positions ``[kG, (k+1)G)``
(the ragged tail is dropped) and rank ``r`` takes its ``r``-th slice of ``batch_size`` — a
DistributedSampler-style split whose global batches do not depend on the number of ranks. The state is
``(epoch, position)``; a resumed stream regenerates the epoch and skips exactly the consumed positions,
whether it reads from memory or from workers (the two give identical batches, so a run may resume in
the other mode).

WebDataset shards are split, per epoch, across every rank and worker ("consumers"): the shards (cut into
interleaved parts when there are fewer shards than consumers) are permuted by ``(seed, epoch)`` and
dealt out; each consumer reads its parts sequentially through a seeded shuffle buffer and yields whole
batches; the DataLoader takes batches from its workers in turn. The order is a pure function of ``(seed,
epoch, consumer)`` and the state is the number of batches the rank consumed: each worker skips whole
epochs by count (the shards are indexed once when the stream opens) and then the samples it already gave,
without decoding them. Resuming needs the same ranks and ``workers`` (else a DataError says so).

A broken image met while streaming stops training with the same one-line DataError naming the file as
the in-memory path's up-front decode (not a skipped sample): skipping would make the batches depend on
which reads happened to fail, so a resumed run would no longer equal an uninterrupted one, and a damaged
dataset would train on silently. ``diffengine doctor DATA`` finds such files before a long run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import random
import tarfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from diffengine.data import (
    FEW_IMAGES,
    IMAGE_EXTS,
    BatchStream,
    DataError,
    ImageSource,
    _is_image,
    decode_image,
    is_heldout,
    kept_records,
    load_images,
    open_source,
    to_model_range,
)

# In memory when the decoded set (N x 3 x R x R bytes, per rank) is at most this: it is decoded once and
# batches cost nothing; above it the workers stream (RSS flat in N). bench/data_pipeline.py: see README.
MEMORY_LIMIT_BYTES = 1 << 30
SHUFFLE_BUFFER = 1000  # samples each WebDataset consumer shuffles over (encoded bytes: ~10 MB at 10 kB)
ORDER = "epoch-hash-v1"  # the state format of the map-style order
WDS_ORDER = "wds-consumers-v1"


class Stream(Protocol):
    """What the training loop needs from its data: BatchStream's interface."""

    batch_size: int
    global_batch: int

    @property
    def n_images(self) -> int: ...

    def next(self, device: torch.device | str = "cpu") -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_stream(
    source_path: str | os.PathLike[str],
    resolution: int,
    batch_size: int,
    seed: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    heldout_fraction: float = 0.1,
    streaming: bool | None = None,
    workers: int = 2,
    flip: bool = True,
) -> Stream:
    """This rank's batches of ``source_path`` (see the module docstring). ``split``: all | train | heldout
    of the fixed file-name-hash split. ``streaming`` None: in memory when the decoded set is at most
    ``MEMORY_LIMIT_BYTES``, else streamed; WebDataset shards are always streamed. ``workers``: DataLoader
    processes (0: decode in this process). Raises DataError (one line, naming the file)."""
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need batch_size >= 1 and 0 <= rank < world_size: {batch_size}, {rank}, {world_size}"
        )
    shards = find_shards(source_path)
    if shards is not None:
        if streaming is False:
            raise DataError(f"{source_path}: WebDataset shards are always streamed (streaming=False given)")
        index = index_shards(shards, split, heldout_fraction)
        _warn_few(source_path, index.n_images)
        return ShardStream(index, resolution, batch_size, seed, rank, world_size, workers, flip)
    source = open_source(source_path)
    names = source.split(split, heldout_fraction)
    if not names:
        raise DataError(f"{source_path}: no images in the {split!r} split")
    _warn_few(source_path, len(names))
    if streaming is None:
        streaming = len(names) * 3 * resolution * resolution > MEMORY_LIMIT_BYTES
    if not streaming:
        return MemoryStream(load_images(source, resolution, names), batch_size, seed, rank, world_size, flip)
    dataset = ImageDataset(source, tuple(names), resolution)
    return LoaderStream(dataset, batch_size, seed, rank, world_size, workers, flip)


def _warn_few(path: str | os.PathLike[str], n: int) -> None:
    if n < FEW_IMAGES:
        warnings.warn(
            f"{path}: only {n} images; under ~{FEW_IMAGES} a diffusion model memorises them", stacklevel=3
        )


# ---------------------------------------------------------------------------------------------------
# The map-style order: a pure function of (seed, epoch)


def epoch_seed(seed: int, epoch: int, *extra: int) -> int:
    digest = hashlib.sha256(f"diffengine-data:{seed}:{epoch}:{extra}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds are < 2**63


class EpochOrder:
    """Epoch ``e``: a permutation of ``n`` images and a flip per position, from a generator seeded by
    ``(seed, e)``; the last epoch drawn is cached."""

    def __init__(self, n: int, global_batch: int, seed: int) -> None:
        if n < global_batch:
            raise DataError(
                f"{n} images are fewer than one global batch ({global_batch}): lower --batch-size"
            )
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self._cached: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def epoch(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached is None or self._cached[0] != e:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, e))
            perm = torch.randperm(self.n, generator=g)
            self._cached = (e, perm, torch.rand(self.n, generator=g) < 0.5)
        return self._cached[1], self._cached[2]

    def batch(self, e: int, pos: int, rank: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank ``rank``'s (indices, flips) of the global batch at position ``pos`` of epoch ``e``."""
        perm, flips = self.epoch(e)
        lo = pos + rank * batch_size
        return perm[lo : lo + batch_size], flips[lo : lo + batch_size]

    def advance(self, e: int, pos: int) -> tuple[int, int]:
        """(epoch, position) after one global batch; an epoch ends when another would not fit."""
        pos += self.global_batch
        return (e + 1, 0) if pos + self.global_batch > self.n else (e, pos)


class _OrderedStream:
    """The (epoch, position) state shared by MemoryStream and LoaderStream."""

    order: EpochOrder
    epoch: int
    pos: int

    def _state(self) -> dict[str, Any]:
        return {
            "order": ORDER,
            "seed": self.order.seed,
            "epoch": self.epoch,
            "pos": self.pos,
            "n": self.order.n,
            "global_batch": self.order.global_batch,
        }

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("order") != ORDER:
            raise DataError(
                f"the checkpoint's data order is {state.get('order', 'the in-memory BatchStream one')!r}, "
                f"not {ORDER!r}: resume it in memory (streaming=False) or with the data it was trained on"
            )
        if int(state["n"]) != self.order.n or int(state["global_batch"]) != self.order.global_batch:
            raise DataError(
                f"checkpoint was trained on {state['n']} images with global batch {state['global_batch']}; "
                f"now {self.order.n} images with global batch {self.order.global_batch}: cannot resume "
                "the exact data order"
            )
        self.order = EpochOrder(self.order.n, self.order.global_batch, int(state["seed"]))
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class MemoryStream(BatchStream, _OrderedStream):
    """The in-memory path of ``make_stream``: a decoded uint8 tensor, in the (seed, epoch) order.

    A checkpoint written by a plain :class:`BatchStream` (before ``make_stream``) is continued in
    BatchStream's own order, exactly."""

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
    ) -> None:
        super().__init__(images, batch_size, seed, rank, world_size, flip)
        self.order = EpochOrder(self.n_images, self.global_batch, seed)
        self.legacy = False

    def next_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.legacy:
            return super().next_indices()
        idx, flips = self.order.batch(self.epoch, self.pos, self.rank, self.batch_size)
        self.epoch, self.pos = self.order.advance(self.epoch, self.pos)
        return idx, flips & self.flip

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() if self.legacy else self._state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "order" not in state and "generator" in state:  # a BatchStream checkpoint
            super().load_state_dict(state)
            self.legacy = True
            return
        self._load(state)
        self.legacy = False


# ---------------------------------------------------------------------------------------------------
# Map-style sources read by DataLoader workers


class ImageDataset(Dataset[torch.Tensor | str]):
    """``dataset[(i, flip)]``: image ``i`` of ``names`` decoded to (3, R, R) uint8, mirrored if ``flip``;
    a broken file gives its one-line DataError message (a str) for the main process to raise."""

    def __init__(self, source: ImageSource, names: tuple[str, ...], resolution: int) -> None:
        self.source, self.names, self.resolution = source, names, resolution
        self._archive: zipfile.ZipFile | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict[str, Any]:  # no open zip handle into a spawned worker
        return {**self.__dict__, "_archive": None, "_pid": -1}

    def _zip(self) -> zipfile.ZipFile | None:
        if not self.source.is_zip:
            return None
        if self._archive is None or self._pid != os.getpid():  # a forked worker opens its own handle
            self._archive = zipfile.ZipFile(self.source.path)
            self._pid = os.getpid()
        return self._archive

    def __getitem__(self, item: tuple[int, bool]) -> torch.Tensor | str:
        i, flip = item
        name = self.names[i]
        try:
            with warnings.catch_warnings():  # decode_image refuses huge images itself, naming the file
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                data = self.source.read_bytes(name, self._zip())
                img = decode_image(data, self.resolution, self.source.describe(name))
        except DataError as exc:
            return str(exc)
        return _checked(img, self.source.describe(name), flip)


def _checked(img: torch.Tensor, where: str, flip: bool) -> torch.Tensor | str:
    if int(img.max()) == int(img.min()):
        return f"1 constant (single-colour) image(s), e.g. {where}: remove them"
    return img.flip(2) if flip else img


def _collate(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    for item in items:
        if isinstance(item, str):
            return item
    return torch.stack(items)  # type: ignore[arg-type]


class _Plan:
    """The batch sampler: this rank's ``[(index, flip), ...]`` from (epoch, pos) on, forever."""

    def __init__(
        self, order: EpochOrder, epoch: int, pos: int, rank: int, batch_size: int, flip: bool
    ) -> None:
        self.order, self.epoch, self.pos = order, epoch, pos
        self.rank, self.batch_size, self.flip = rank, batch_size, flip

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        order = EpochOrder(self.order.n, self.order.global_batch, self.order.seed)  # its own cache
        epoch, pos = self.epoch, self.pos
        while True:
            idx, flips = order.batch(epoch, pos, self.rank, self.batch_size)
            yield list(zip(idx.tolist(), (flips & self.flip).tolist(), strict=True))
            epoch, pos = order.advance(epoch, pos)


def _loader(dataset: Any, workers: int, pin: bool, **kwargs: Any) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        # Its own generator: an iterator draws a base seed, which must not come from the global RNG (a
        # resumed run restores that RNG, then starts its loader at another step than the straight run).
        generator=torch.Generator().manual_seed(0),
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,  # the iterator is infinite: workers start once, at the first batch
        prefetch_factor=4 if workers > 0 else None,
        **kwargs,
    )


class LoaderStream(_OrderedStream):
    """Map-style images decoded by ``workers`` DataLoader processes, in the (seed, epoch) order."""

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        flip: bool = True,
    ) -> None:
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.workers, self.flip = workers, flip
        self.global_batch = batch_size * world_size
        self.order = EpochOrder(len(dataset), self.global_batch, seed)
        self.epoch = self.pos = 0
        self._it: Iterator[torch.Tensor | str] | None = None
        self._pin: bool | None = None

    @property
    def n_images(self) -> int:
        return len(self.dataset)

    def next(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """This rank's next batch on ``device``: (B, 3, R, R) float32 in [-1, 1]."""
        device = torch.device(device)
        pin = device.type == "cuda"
        if self._it is None or self._pin != pin:
            self.close()
            plan = _Plan(self.order, self.epoch, self.pos, self.rank, self.batch_size, self.flip)
            self._it = iter(_loader(self.dataset, self.workers, pin, batch_sampler=plan, collate_fn=_collate))
            self._pin = pin
        batch = next(self._it)
        if isinstance(batch, str):
            self.close()
            raise DataError(batch)
        self.epoch, self.pos = self.order.advance(self.epoch, self.pos)
        return to_model_range(batch.to(device, non_blocking=True))

    def state_dict(self) -> dict[str, Any]:
        return self._state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load(state)
        self.close()  # the next batch restarts the workers at the restored position

    def close(self) -> None:
        """Stop the workers (they also stop when the stream is garbage-collected)."""
        self._it = None


# ---------------------------------------------------------------------------------------------------
# WebDataset shards


def find_shards(path: str | os.PathLike[str]) -> list[Path] | None:
    """The sorted ``.tar`` shards ``path`` names (a glob, one file, a folder of shards, or a faceprep folder
    written with ``--output wds``), or None when it is not a WebDataset source."""
    text = os.fspath(path)
    if any(c in text for c in "*?[") and not Path(text).exists():
        found = sorted(Path(p) for p in glob.glob(text) if p.endswith(".tar"))
        if not found:
            raise DataError(f"{text}: no .tar shards match")
        return found
    root = Path(text)
    if root.is_file():
        return [root] if tarfile.is_tarfile(root) and not zipfile.is_zipfile(root) else None
    if not root.is_dir():
        return None
    folder = root / "shards" if (root / "metadata.jsonl").is_file() and (root / "shards").is_dir() else root
    tars = sorted(folder.glob("*.tar"))
    tars = [t for t in tars if not t.name.startswith(".")]  # faceprep's .faceprep-tmp-* while packing
    if not tars or (folder is root and any(p.is_file() and _is_image(p.name) for p in root.iterdir())):
        return None  # a folder of images (which may hold a stray .tar)
    return tars


@dataclass(frozen=True)
class ShardIndex:
    """The shards and, per shard, which of its samples (in tar order) are in the split."""

    shards: tuple[Path, ...]
    selected: tuple[np.ndarray, ...]  # bool per sample of each shard

    @property
    def n_images(self) -> int:
        return int(sum(int(s.sum()) for s in self.selected))


def _key(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: (key, extension) at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


@dataclass
class _Sample:
    key: str
    image: tarfile.TarInfo | None = None
    meta: tarfile.TarInfo | None = None


def _samples(tar: tarfile.TarFile, where: Path) -> Iterator[_Sample]:
    """The samples of an open shard in tar order: consecutive regular members sharing a key."""
    current: _Sample | None = None
    try:
        end = where.stat().st_size
        for info in tar:
            if not info.isfile():
                continue
            if info.offset_data + info.size > end:  # tarfile stops quietly at a cut: say so
                raise DataError(f"{where}!{info.name}: truncated shard (the file ends inside this member)")
            key, ext = _key(info.name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = _Sample(key)
            if f".{ext}" in IMAGE_EXTS and current.image is None:
                current.image = info
            elif ext == "json":
                current.meta = info
        # tarfile also ends quietly at a damaged or cut header: the archive must end with a zero block.
        assert tar.fileobj is not None
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(512) != bytes(512):
            raise DataError(f"{where}: damaged or truncated tar shard (no valid header at byte {tar.offset})")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{where}: damaged tar shard ({exc})") from exc
    if current is not None:
        yield current


def _open_tar(shard: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{shard}: cannot read tar shard ({exc})") from exc


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo, where: Path) -> bytes:
    try:
        fh = tar.extractfile(info)
        if fh is None:
            raise OSError("not a regular file")
        data = fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{where}!{info.name}: cannot read ({exc})") from exc
    if len(data) != info.size:
        raise DataError(f"{where}!{info.name}: truncated ({len(data)} of {info.size} bytes)")
    return data


def _split_name(tar: tarfile.TarFile, sample: _Sample, where: Path) -> str:
    """What the held-out split hashes: the JSON's ``file_name`` (faceprep's crop name, so the split is
    that of the same run written as a folder), else the image member's base name."""
    assert sample.image is not None
    if sample.meta is not None:
        raw = _read(tar, sample.meta, where)
        try:
            meta = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad = raw[exc.start]
            raise DataError(f"{where}!{sample.meta.name}: not UTF-8 text (byte 0x{bad:02x})") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}!{sample.meta.name}: not JSON ({exc})") from exc
        if isinstance(meta, dict) and isinstance(meta.get("file_name"), str):
            return meta["file_name"]
    return Path(sample.image.name).name


def index_shards(shards: Sequence[Path], split: str = "all", fraction: float = 0.1) -> ShardIndex:
    """Read every shard's member headers once (and its JSONs when the split needs them): which samples
    of each are in ``split``. A faceprep folder's review decisions select samples by key."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"split must be all, train or heldout, not {split!r}")
    folder = shards[0].parent
    allowed = _reviewed_keys(folder.parent) if folder.name == "shards" else None
    selected: list[np.ndarray] = []
    for shard in shards:
        with _open_tar(shard) as tar:
            marks: list[bool] = []
            for sample in _samples(tar, shard):
                keep = sample.image is not None and (allowed is None or sample.key in allowed)
                if keep and split != "all":
                    keep = is_heldout(_split_name(tar, sample, shard), fraction) == (split == "heldout")
                marks.append(keep)
        selected.append(np.array(marks, dtype=bool))
    index = ShardIndex(tuple(shards), tuple(selected))
    if index.n_images == 0:
        raise DataError(f"{shards[0].parent}: no images in the {split!r} split of {len(shards)} shard(s)")
    return index


def _reviewed_keys(root: Path) -> set[str] | None:
    """Keys of the samples to train on when ``root`` is a faceprep folder written with ``--output wds``
    (its records, review decisions applied); None otherwise."""
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        return None
    records = kept_records(meta)
    keys = {str(r["key"]) for r in records if r.get("key") is not None}
    if not keys:
        return None  # not written with --output wds: the shards are someone else's
    loose = len(records) - len(keys)
    if loose:
        warnings.warn(f"{root}: {loose} kept face(s) are not in the shards and are left out", stacklevel=4)
    return keys


class ShardDataset(IterableDataset[torch.Tensor | str]):
    """One consumer's (rank, worker) endless batches of WebDataset shards (see the module docstring)."""

    def __init__(
        self,
        index: ShardIndex,
        resolution: int,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        workers: int,
        flip: bool,
    ) -> None:
        self.index, self.resolution, self.batch_size, self.seed = index, resolution, batch_size, seed
        self.rank, self.world_size, self.flip = rank, world_size, flip
        self.per_rank = max(workers, 1)
        self.consumers = world_size * self.per_rank
        self.parts = math.ceil(self.consumers / len(index.shards))
        counts = []  # samples of each unit (shard, part); part = position among the selected % parts
        for s, sel in enumerate(index.selected):
            n = int(sel.sum())
            counts += [((s, p), len(range(p, n, self.parts))) for p in range(self.parts)]
        self.units = [u for u, c in counts if c > 0]
        self.counts = {u: c for u, c in counts if c > 0}
        if len(self.units) < self.consumers:
            raise DataError(
                f"{index.shards[0].parent}: {index.n_images} images in {len(index.shards)} shard(s) are too "
                f"few for {world_size} rank(s) x {self.per_rank} worker(s): use fewer workers or more data"
            )
        self.first = 0  # batches the rank consumed before these workers start: set by ShardStream
        self.skip_batches = [0] * self.per_rank  # each logical worker's consumed batches (from first)

    def units_of(self, consumer: int, epoch: int) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, -1))
        perm = torch.randperm(len(self.units), generator=g).tolist()
        return [self.units[i] for i in perm[consumer :: self.consumers]]

    def epoch_length(self, consumer: int, epoch: int) -> int:
        return sum(self.counts[u] for u in self.units_of(consumer, epoch))

    def samples(self, consumer: int, epoch: int) -> Iterator[tuple[Path, str, bytes, bool]]:
        """(shard, member name, image bytes, flip) of one consumer's epoch, shuffled through a buffer."""
        rng = random.Random(epoch_seed(self.seed, epoch, consumer))
        buffer: list[tuple[Path, str, bytes]] = []
        for s, part in self.units_of(consumer, epoch):
            shard, sel = self.index.shards[s], self.index.selected[s]
            with _open_tar(shard) as tar:
                rank_in_sel = 0
                for j, sample in enumerate(_samples(tar, shard)):
                    if j >= len(sel):
                        raise DataError(f"{shard}: changed since the stream opened (more samples)")
                    if not sel[j]:
                        continue
                    mine = rank_in_sel % self.parts == part
                    rank_in_sel += 1
                    if not mine or sample.image is None:
                        continue
                    buffer.append((shard, sample.image.name, _read(tar, sample.image, shard)))
                    if len(buffer) >= SHUFFLE_BUFFER:
                        k = rng.randrange(len(buffer))
                        buffer[k], buffer[-1] = buffer[-1], buffer[k]
                        yield (*buffer.pop(), rng.random() < 0.5)
        while buffer:
            k = rng.randrange(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield (*buffer.pop(), rng.random() < 0.5)

    def consumer_stream(self, consumer: int, skip: int) -> Iterator[tuple[Path, str, bytes, bool]]:
        """A consumer's endless samples, epoch after epoch, from sample number ``skip`` on."""
        epoch = 0
        while skip >= (length := self.epoch_length(consumer, epoch)):
            skip -= length
            epoch += 1
        while True:
            for item in self.samples(consumer, epoch):
                if skip:
                    skip -= 1
                    continue
                yield item
            epoch += 1

    def __iter__(self) -> Iterator[torch.Tensor | str]:
        info = get_worker_info()
        # The loader asks its workers in turn from worker 0 on; after ``first`` batches the turn is at
        # logical worker ``first % per_rank``, so loader worker ``i`` plays logical worker ``i + first``.
        worker = ((info.id if info is not None else 0) + self.first) % self.per_rank
        consumer = self.rank * self.per_rank + worker
        stream = self.consumer_stream(consumer, self.skip_batches[worker] * self.batch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            while True:
                batch: list[torch.Tensor] = []
                try:
                    while len(batch) < self.batch_size:
                        shard, name, data, flip = next(stream)
                        where = f"{shard}!{name}"
                        img = _checked(decode_image(data, self.resolution, where), where, flip and self.flip)
                        if isinstance(img, str):
                            raise DataError(img)
                        batch.append(img)
                except DataError as exc:
                    yield str(exc)
                    return
                yield torch.stack(batch)


class ShardStream:
    """WebDataset shards streamed by ``workers`` DataLoader processes (see the module docstring)."""

    def __init__(
        self,
        index: ShardIndex,
        resolution: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        flip: bool = True,
    ) -> None:
        self.dataset = ShardDataset(index, resolution, batch_size, seed, rank, world_size, workers, flip)
        self.batch_size, self.rank, self.world_size, self.workers = batch_size, rank, world_size, workers
        self.global_batch = batch_size * world_size
        self.batches = 0  # consumed by this rank
        self._it: Iterator[torch.Tensor | str] | None = None
        self._pin: bool | None = None

    @property
    def n_images(self) -> int:
        return self.dataset.index.n_images

    def next(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """This rank's next batch on ``device``: (B, 3, R, R) float32 in [-1, 1]."""
        device = torch.device(device)
        pin = device.type == "cuda"
        if self._it is None or self._pin != pin:
            self.close()
            k = self.dataset.per_rank  # the loader takes batches from its workers in turn
            self.dataset.first = self.batches
            self.dataset.skip_batches = [len(range(w, self.batches, k)) for w in range(k)]
            self._it = iter(_loader(self.dataset, self.workers, pin, batch_size=None))
            self._pin = pin
        batch = next(self._it)
        if isinstance(batch, str):
            self.close()
            raise DataError(batch)
        self.batches += 1
        return to_model_range(batch.to(device, non_blocking=True))

    def state_dict(self) -> dict[str, Any]:
        d = self.dataset
        return {
            "order": WDS_ORDER,
            "seed": d.seed,
            "batches": self.batches,
            "n": self.n_images,
            "shards": len(d.index.shards),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "workers": d.per_rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        if state.get("order") != WDS_ORDER:
            raise DataError(
                f"the checkpoint's data order is {state.get('order', 'BatchStream')!r}: it was not "
                "trained on these WebDataset shards"
            )
        keys = ("n", "shards", "batch_size", "world_size", "workers")
        differ = [k for k in keys if int(state[k]) != mine[k]]
        if differ:
            said = ", ".join(f"{k} {state[k]} (now {mine[k]})" for k in differ)
            raise DataError(
                f"checkpoint's data stream had {said}: resume with the same data, ranks and --workers"
            )
        self.dataset.seed = int(state["seed"])
        self.batches = int(state["batches"])
        self.close()

    def close(self) -> None:
        """Stop the workers (they also stop when the stream is garbage-collected)."""
        self._it = None


__all__ = [
    "MEMORY_LIMIT_BYTES",
    "EpochOrder",
    "ImageDataset",
    "LoaderStream",
    "MemoryStream",
    "ShardIndex",
    "ShardStream",
    "Stream",
    "find_shards",
    "index_shards",
    "make_stream",
]
