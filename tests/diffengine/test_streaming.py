"""Streaming training data: every source kind streams the in-memory loader's pixels, ranks get disjoint
covering shares, the held-out split is today's, a resumed stream continues exactly, review decisions count."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffengine.data import DataError, heldout_split, load_images, open_source, split_names
from diffengine.streaming import (
    LoaderStream,
    MemoryStream,
    ShardDataset,
    ShardStream,
    Stream,
    find_shards,
    index_shards,
    make_stream,
)
from faceprep.dataset import DatasetWriter, face_file_name
from faceprep.outputs import OutputFormat, OutputKind
from faceprep.pipeline import FileResult
from faceprep.review.store import DecisionLog
from faceprep.types import Detection, FaceCrop, FilterResult, Quad

pytestmark = pytest.mark.filterwarnings("ignore:.*only \\d+ images")
N = 12  # faces in the faceprep datasets below


def _face(source: str, index: int, seed: int, *, passed: bool = True) -> FaceCrop:
    rng = np.random.default_rng(seed)
    image = np.kron(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    det = Detection((1.0, 2.0, 30.0, 40.0), 0.9, rng.uniform(0, 50, (5, 2)), "test")
    quad = Quad(np.array([[0.0, 0.0], [0.0, 64.0], [64.0, 64.0], [64.0, 0.0]]))
    return FaceCrop(image, det, quad, index, 0.0, (FilterResult("score", 0.9, passed, 0.5),), source)


def _faceprep(dst: Path, kind: OutputKind, n: int = N) -> Path:
    """A faceprep DST written by its own writer: per source, face 0 kept and face 1 rejected."""
    with DatasetWriter(dst, output=OutputFormat(kind)) as w:
        for i in range(n):
            s = f"s{i:02d}.jpg"
            w.write(FileResult(f"/p/{s}", s, (_face(s, 0, 2 * i), _face(s, 1, 2 * i + 1, passed=False))))
        w.finish()
    return dst


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faceprep")
    kinds: tuple[OutputKind, ...] = ("folder", "zip", "wds")
    return {kind: _faceprep(root / kind, kind) for kind in kinds}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shards(folder: Path, n: int, per_shard: int) -> list[Path]:
    """WebDataset shards written by hand: ``<key>.png`` + ``<key>.json`` with a ``file_name``."""
    folder.mkdir(parents=True)
    paths = []
    for s in range(-(-n // per_shard)):
        path = folder / f"part-{s:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                _add(tar, f"{i:06d}.png", _png(i))
                _add(tar, f"{i:06d}.json", json.dumps({"file_name": f"img{i}.png"}).encode())
        paths.append(path)
    return paths


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(img.numpy().tobytes() for img in x)


def _take(stream: Stream, k: int) -> list[torch.Tensor]:
    return [stream.next() for _ in range(k)]


# ---------------------------------------------------------------------------------------------------
# Same pixels from every source kind


@pytest.mark.parametrize("where", ["folder", "zip-dst", "zip-file", "wds-dst", "wds-folder", "wds-glob"])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_source_streams_the_in_memory_pixels(
    datasets: dict[str, Path], where: str, workers: int
) -> None:
    path = {
        "folder": datasets["folder"],
        "zip-dst": datasets["zip"],
        "zip-file": datasets["zip"] / "dataset.zip",
        "wds-dst": datasets["wds"],
        "wds-folder": datasets["wds"] / "shards",
        "wds-glob": datasets["wds"] / "shards" / "faces-*.tar",
    }[where]
    want = load_images(open_source(datasets["folder"]), 16)  # the crops as files, decoded in memory
    stream = make_stream(path, 16, 3, seed=4, split="all", streaming=True, workers=workers, flip=False)
    assert isinstance(stream, ShardStream if where.startswith("wds") else LoaderStream)
    assert stream.n_images == N
    got = torch.cat(_take(stream, N // 3))  # one epoch: every image once
    assert got.shape == (N, 3, 16, 16) and got.dtype == torch.float32
    assert float(got.min()) >= -1 and float(got.max()) <= 1
    assert _rows(((got + 1) * 127.5).round().to(torch.uint8)) == _rows(want)


def test_find_shards_tells_shards_from_images(datasets: dict[str, Path], tmp_path: Path) -> None:
    assert find_shards(datasets["folder"]) is None and find_shards(datasets["zip"]) is None
    assert find_shards(datasets["zip"] / "dataset.zip") is None
    assert find_shards(datasets["wds"]) == [datasets["wds"] / "shards" / "faces-000000.tar"]
    with pytest.raises(DataError, match=r"no \.tar shards match"):
        find_shards(tmp_path / "none-*.tar")
    with pytest.raises(DataError, match="always streamed"):
        make_stream(datasets["wds"], 16, 3, seed=0, streaming=False)


def test_webdataset_library_reads_the_same_keys(tmp_path: Path) -> None:
    webdataset = pytest.importorskip("webdataset")
    shards = _shards(tmp_path / "s", 10, 4)
    keys = [s["__key__"] for s in webdataset.WebDataset([str(p) for p in shards], shardshuffle=False)]
    index = index_shards(shards)
    assert [len(s) for s in index.selected] == [4, 4, 2] and keys == [f"{i:06d}" for i in range(10)]


# ---------------------------------------------------------------------------------------------------
# One order for memory and workers; ranks; the split


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_and_memory_give_identical_batches(datasets: dict[str, Path], workers: int) -> None:
    memory = make_stream(datasets["folder"], 16, 5, seed=3, split="all", streaming=False)
    loader = make_stream(datasets["folder"], 16, 5, seed=3, split="all", streaming=True, workers=workers)
    assert isinstance(memory, MemoryStream) and isinstance(loader, LoaderStream)
    for a, b in zip(_take(memory, 7), _take(loader, 7), strict=True):  # 2 per epoch: crosses 3 epochs
        assert torch.equal(a, b)
    assert memory.state_dict() == loader.state_dict()
    flipped = torch.stack(_take(memory, 4))
    assert bool((flipped != flipped.flip(-1)).any())  # flips happen (random per position)


def test_auto_mode_keeps_small_sets_in_memory(
    datasets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffengine import streaming

    assert isinstance(make_stream(datasets["folder"], 16, 3, seed=0, split="all"), MemoryStream)
    monkeypatch.setattr(streaming, "MEMORY_LIMIT_BYTES", N * 3 * 16 * 16 - 1)
    assert isinstance(make_stream(datasets["folder"], 16, 3, seed=0, split="all"), LoaderStream)


def test_map_style_ranks_get_disjoint_covering_shares(datasets: dict[str, Path]) -> None:
    per_rank = [
        torch.cat(
            _take(
                make_stream(
                    datasets["zip"],
                    16,
                    2,
                    seed=9,
                    rank=r,
                    world_size=3,
                    split="all",
                    flip=False,
                    streaming=True,
                    workers=0,
                ),
                2,
            )
        )
        for r in range(3)
    ]  # global batch 6: two batches are one epoch of 12
    rows = [set(_rows(x)) for x in per_rank]
    assert all(len(r) == 4 for r in rows)
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    one = torch.cat(_take(make_stream(datasets["zip"], 16, 6, seed=9, split="all", flip=False), 2))
    assert set(_rows(one)) == rows[0] | rows[1] | rows[2]  # the global batches do not depend on ranks


@pytest.mark.parametrize(("shards", "world", "workers"), [(5, 2, 2), (1, 2, 2), (3, 1, 0)])
def test_wds_ranks_and_workers_get_disjoint_covering_shares(
    tmp_path: Path, shards: int, world: int, workers: int
) -> None:
    paths = _shards(tmp_path / "s", 30, -(-30 // shards))
    index = index_shards(paths)
    for epoch in range(2):
        seen: list[str] = []
        for rank in range(world):
            ds = ShardDataset(index, 8, 2, seed=1, rank=rank, world_size=world, workers=workers, flip=True)
            for c in range(rank * ds.per_rank, (rank + 1) * ds.per_rank):
                seen += [name for _, name, _, _ in ds.samples(c, epoch)]
        assert sorted(seen) == [f"{i:06d}.png" for i in range(30)]  # each image once per epoch


def test_heldout_split_is_today_s(datasets: dict[str, Path], tmp_path: Path) -> None:
    source = open_source(datasets["folder"])
    for split in ("train", "heldout"):
        assert source.split(split, 0.3) == split_names(source.names, split, 0.3)
    train, held = heldout_split(source.names, 0.3)
    assert held and train
    zsource = open_source(datasets["zip"])  # zip entries, split by the crops' file names
    assert len(zsource.split("heldout", 0.3)) == len(held)
    want = load_images(source, 16, held)
    for path in (datasets["zip"], datasets["wds"]):
        stream = make_stream(
            path, 16, 1, seed=0, split="heldout", heldout_fraction=0.3, streaming=True, workers=0, flip=False
        )
        assert stream.n_images == len(held)
        got = torch.cat(_take(stream, len(held)))
        assert _rows(((got + 1) * 127.5).round().to(torch.uint8)) == _rows(want)
    # Hand-written shards split by their JSON file_name, like a folder of those names.
    index = index_shards(_shards(tmp_path / "s", 40, 15), "heldout", 0.25)
    chosen = [f"img{i}.png" for i, keep in enumerate(np.concatenate(index.selected)) if keep]
    assert chosen == heldout_split([f"img{i}.png" for i in range(40)], 0.25)[1]


# ---------------------------------------------------------------------------------------------------
# Resume


def _streams(kind: str, root: Path, workers: int) -> Iterator[Stream]:
    while True:
        if kind == "wds":
            yield make_stream(root, 8, 4, seed=2, split="all", workers=workers)
        else:
            yield make_stream(root, 8, 4, seed=2, split="all", streaming=kind == "stream", workers=workers)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["memory", "stream", "wds"])
def test_resume_mid_epoch_yields_the_uninterrupted_batches(tmp_path: Path, kind: str, workers: int) -> None:
    paths = _shards(tmp_path / "s", 22, 5)  # 22 images, global batch 4: epochs of 5 batches (map-style)
    if kind == "wds":
        root = tmp_path / "s"
    else:
        root = tmp_path / "images"
        root.mkdir()
        for p in paths:
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".png"):
                        member = tar.extractfile(m)
                        assert member is not None, m.name
                        (root / m.name).write_bytes(member.read())
    make = _streams(kind, root, workers)
    straight = _take(next(make), 13)
    first = next(make)
    assert [torch.equal(a, b) for a, b in zip(_take(first, 3), straight, strict=False)] == [True] * 3
    state = first.state_dict()
    again = next(make)
    again.load_state_dict(state)
    for want, got in zip(straight[3:], _take(again, 10), strict=True):
        assert torch.equal(want, got)
    if kind != "wds":  # one state format: a memory checkpoint resumes streaming and back
        other = make_stream(root, 8, 4, seed=2, split="all", streaming=kind == "memory", workers=workers)
        other.load_state_dict(state)
        assert torch.equal(other.next(), straight[3])
    else:
        wrong = make_stream(root, 8, 4, seed=2, split="all", workers=2 - workers)
        with pytest.raises(DataError, match="same data, ranks and --workers"):
            wrong.load_state_dict(state)


def test_memory_stream_resumes_a_batchstream_checkpoint(datasets: dict[str, Path]) -> None:
    from diffengine.data import BatchStream

    images = load_images(open_source(datasets["folder"]), 8)
    old = BatchStream(images, 3, seed=5)
    _take(old, 2)
    state = old.state_dict()
    want = _take(old, 5)
    new = MemoryStream(images, 3, seed=0)
    new.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(want, _take(new, 5), strict=True))
    loader = make_stream(datasets["folder"], 8, 3, seed=5, split="all", streaming=True, workers=0)
    with pytest.raises(DataError, match="resume it in memory"):
        loader.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------
# Review decisions and crops deleted by hand


def test_review_decisions_are_honoured(tmp_path: Path) -> None:
    dst = _faceprep(tmp_path / "dst", "folder", 4)
    log = DecisionLog(dst)  # what the review page writes into review.jsonl
    log.record(("s00.jpg", 0), "reject")
    log.record(("s01.jpg", 1), "keep")  # rescued: no crop rendered yet
    log.record(("s02.jpg", 1), "keep")
    log.record(("s02.jpg", 1), None)  # undone: back to faceprep's verdict
    with pytest.warns(
        UserWarning, match=r"1 face\(s\) kept in review have no crop yet .*materialise_rescued"
    ):
        names = open_source(dst).names
    assert names == ("s01_jpg_00.png", "s02_jpg_00.png", "s03_jpg_00.png")
    # Rendered (as materialise_rescued names it): now trained on, no warning.
    Image.fromarray(_face("s01.jpg", 1, 3).image).save(dst / face_file_name("s01.jpg", 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no crop yet")
        source = open_source(dst)
        assert source.names[-1] == "s01_jpg_01.png" and len(source.names) == 4
        stream = make_stream(dst, 16, 2, seed=0, split="all", streaming=True, workers=0, flip=False)
        assert stream.n_images == 4
    got = torch.cat(_take(stream, 2))
    assert _rows(((got + 1) * 127.5).round().to(torch.uint8)) == _rows(load_images(source, 16))


def test_review_decisions_select_wds_samples(tmp_path: Path) -> None:
    dst = _faceprep(tmp_path / "dst", "wds", 4)
    DecisionLog(dst).record(("s02.jpg", 0), "reject")
    stream = make_stream(dst, 16, 3, seed=0, split="all", workers=0, flip=False)
    assert stream.n_images == 3
    want = load_images(open_source(_faceprep(tmp_path / "plain", "folder", 4)), 16)
    got = ((stream.next() + 1) * 127.5).round().to(torch.uint8)
    assert _rows(got) == _rows(want[[0, 1, 3]])


def test_crops_deleted_by_hand_say_how_to_record_it(tmp_path: Path) -> None:
    dst = _faceprep(tmp_path / "dst", "folder", 3)
    (dst / "s01_jpg_00.png").unlink()
    with pytest.raises(DataError) as err:
        make_stream(dst, 16, 1, seed=0, split="all")
    msg = str(err.value)
    assert "1 listed file(s) missing" in msg and f"faceprep crop SRC {dst}" in msg and "deleted.jsonl" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_leaves_the_global_rng_alone(datasets: dict[str, Path], workers: int) -> None:
    """Starting the loader must not draw from torch's global RNG: a resumed run restores that RNG and
    starts its loader at another step than the uninterrupted run (dropout would then differ)."""
    for path in (datasets["folder"], datasets["wds"]):
        stream = make_stream(path, 8, 2, seed=0, split="all", streaming=True, workers=workers)
        before = torch.get_rng_state()
        stream.next()
        assert torch.equal(before, torch.get_rng_state())
