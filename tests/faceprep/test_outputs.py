"""``--output folder|zip|wds``: each format loads with the library that owns it, resumes and survives a
kill while packing; the dataset card and the preview folder."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceprep.dataset import DatasetWriter
from faceprep.outputs import OutputFormat, OutputKind
from faceprep.pipeline import FileResult
from faceprep.types import Detection, FaceCrop, FilterResult, Quad


def _face(source: str, index: int, seed: int, *, passed: bool = True) -> FaceCrop:
    rng = np.random.default_rng(seed)
    image = np.kron(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    det = Detection((1.0, 2.0, 30.0, 40.0), 0.9, rng.uniform(0, 50, (5, 2)), "test")
    quad = Quad(np.array([[0.0, 0.0], [0.0, 64.0], [64.0, 64.0], [64.0, 0.0]]))
    return FaceCrop(image, det, quad, index, 0.0, (FilterResult("score", 0.9, passed, 0.5),), source)


def _write(dst: Path, kind: OutputKind, sources: list[str], seed0: int = 0) -> None:
    with DatasetWriter(dst, output=OutputFormat(kind)) as w:
        for i, source in enumerate(sources):
            faces = (_face(source, 0, seed0 + 2 * i), _face(source, 1, seed0 + 2 * i + 1, passed=False))
            w.write(FileResult(f"/p/{source}", source, faces))
        w.finish()


def _meta(dst: Path) -> list[dict]:
    return [json.loads(line) for line in (dst / "metadata.jsonl").read_text().splitlines()]


def _edm_images(path: Path) -> list[np.ndarray]:
    """Read a zip by the rules of NVlabs' dataset_tool / ImageFolderDataset: stored entries, sorted image
    names, dataset.json with labels null, square images of one size."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
        names = sorted(i.filename for i in infos if i.filename.endswith(".png"))
        images = [np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in names]
    assert names == [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(names))]
    assert len({im.shape for im in images}) == 1 and images[0].shape[0] == images[0].shape[1]
    return images


def test_zip_follows_the_edm_layout_and_resumes(tmp_path: Path) -> None:
    dst = tmp_path / "zip"
    _write(dst, "zip", ["a.jpg", "b.jpg"])
    _write(dst, "zip", ["a.jpg", "b.jpg", "c.jpg"], seed0=0)  # a resume adds c only
    images = _edm_images(dst / "dataset.zip")
    meta = _meta(dst)
    assert [m["archive_name"] for m in meta] == [f"00000/img{i:08d}.png" for i in range(3)]
    assert [m["source"] for m in meta] == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_array_equal(images[2], _face("c.jpg", 0, 4).image)
    assert not list((dst / ".faceprep-staging").iterdir())  # all packed
    assert not list(dst.glob("*.png"))  # nothing but the zip holds images
    assert (dst / "preview" / "contact_sheet.png").is_file()


def test_wds_shards_load_with_webdataset(tmp_path: Path) -> None:
    webdataset = pytest.importorskip("webdataset")
    dst = tmp_path / "wds"
    _write(dst, "wds", ["a.jpg", "b.jpg"])
    _write(dst, "wds", ["a.jpg", "b.jpg", "c.jpg"])
    shards = sorted((dst / "shards").glob("*.tar"))
    assert [s.name for s in shards] == ["faces-000000.tar"]
    samples = list(webdataset.WebDataset(str(shards[0]), shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    assert [s["json"]["source"] for s in samples] == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_array_equal(samples[1]["png"], _face("b.jpg", 0, 2).image)


def test_wds_and_folder_load_with_hf_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder, wds = tmp_path / "folder", tmp_path / "wds"
    _write(folder, "folder", ["a.jpg", "b.jpg"])
    _write(wds, "wds", ["a.jpg", "b.jpg"])
    cache = str(tmp_path / "hf-cache")
    imagefolder = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=cache)
    assert len(imagefolder) == 2 and sorted(imagefolder["source"]) == ["a.jpg", "b.jpg"]
    assert imagefolder[0]["image"].size == (64, 64)
    shards = [str(p) for p in sorted((wds / "shards").glob("*.tar"))]
    web = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train", cache_dir=cache)
    assert len(web) == 2 and sorted(r["source"] for r in web["json"]) == ["a.jpg", "b.jpg"]


def test_a_kill_while_packing_keeps_the_old_archive_and_the_staged_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dst = tmp_path / "zip"
    _write(dst, "zip", ["a.jpg"])
    before = (dst / "dataset.zip").read_bytes()
    real = os.replace

    def killed(src: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if str(target).endswith("dataset.zip"):
            raise KeyboardInterrupt  # the moment before the new archive is renamed into place
        real(src, target)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(dst, "zip", ["a.jpg", "b.jpg"])
    monkeypatch.undo()
    assert (dst / "dataset.zip").read_bytes() == before
    assert [p.name for p in (dst / ".faceprep-staging").iterdir() if not p.name.startswith(".")] == [
        "b_jpg_00.png"
    ]
    _write(dst, "zip", ["a.jpg", "b.jpg"])  # the next run packs what was staged
    assert len(_edm_images(dst / "dataset.zip")) == 2
    assert not list(dst.rglob(".faceprep-tmp-*"))


def test_a_full_shard_is_closed_and_never_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import faceprep.outputs

    monkeypatch.setattr(faceprep.outputs, "SHARD_SIZE", 2)
    dst = tmp_path / "wds"
    _write(dst, "wds", ["a.jpg", "b.jpg", "c.jpg"])
    first = dst / "shards" / "faces-000000.tar"
    stat = first.stat()
    _write(dst, "wds", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    assert first.stat().st_mtime_ns == stat.st_mtime_ns  # complete: untouched
    with tarfile.open(dst / "shards" / "faces-000001.tar") as tar:
        assert tar.getnames() == ["000000002.png", "000000002.json", "000000003.png", "000000003.json"]


def test_dataset_card_counts_and_never_replaces_a_users_readme(tmp_path: Path) -> None:
    dst = tmp_path / "folder"
    _write(dst, "folder", ["a.jpg", "b.jpg"])
    card = (dst / "README.md").read_text()
    assert "| kept by faceprep | 2 |" in card and "| rejected by score | 2 |" in card
    assert "| **in the dataset** | **2** |" in card
    assert "![contact sheet](preview/contact_sheet.png)" in card and "imagefolder" in card
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    _write(mine, "folder", ["a.jpg"])
    assert (mine / "README.md").read_text() == "my notes"


def test_card_and_contact_sheet_honour_review_decisions(tmp_path: Path) -> None:
    from faceprep.review.store import DecisionLog

    dst = tmp_path / "folder"
    _write(dst, "folder", ["a.jpg", "b.jpg", "c.jpg"])
    log = DecisionLog(dst)
    log.record(("b.jpg", 0), "reject")  # kept by faceprep, rejected by a person
    log.record(("a.jpg", 1), "keep")  # rejected by faceprep (score), rescued: no crop yet
    _write(dst, "folder", ["a.jpg", "b.jpg", "c.jpg"])  # a resume rewrites card and sheet
    card = (dst / "README.md").read_text()
    assert "| rejected in review (`review.jsonl`) | 1 |" in card
    assert "| rescued in review | 1 (1 without a crop yet) |" in card
    assert "| **in the dataset** | **2** |" in card
    with Image.open(dst / "preview" / "contact_sheet.png") as sheet:
        assert sheet.size == (2 * 130 + 2, 130 + 2)  # a and c only
