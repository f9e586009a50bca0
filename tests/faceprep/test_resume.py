"""Resume and crash safety of the dataset writer: unit level with hand-made crops, then the real CLI
re-run and a ``kill -9`` in the middle of a run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from faceprep.cli import main
from faceprep.dataset import DatasetWriter, face_file_name
from faceprep.pipeline import FileResult
from faceprep.types import Detection, FaceCrop, FilterResult, Quad, SourceError

ROOT = Path(__file__).resolve().parents[2]


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _face(source: str, index: int, seed: int, *, passed: bool = True) -> FaceCrop:
    rng = np.random.default_rng(seed)
    image = np.kron(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    det = Detection((1.0, 2.0, 30.0, 40.0), 0.9, rng.uniform(0, 50, (5, 2)), "test")
    quad = Quad(np.array([[0.0, 0.0], [0.0, 64.0], [64.0, 64.0], [64.0, 0.0]]))
    return FaceCrop(image, det, quad, index, 0.0, (FilterResult("score", 0.9, passed, 0.5),), source)


def _result(source: str, *faces: FaceCrop, error: str | None = None) -> FileResult:
    err = SourceError(f"/photos/{source}", error) if error else None
    return FileResult(f"/photos/{source}", source, tuple(faces), err)


# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a/b/img.jpg", r"a__b__img_jpg_03\.png"),
        ("img.PNG", r"img_PNG_03\.png"),
        ("noext", r"noext-[0-9a-f]{8}_03\.png"),
        ("my photos/a.jpg", r"my_photos__a_jpg-[0-9a-f]{8}_03\.png"),
    ],
)
def test_face_file_name_readable(source: str, expected: str) -> None:
    assert re.fullmatch(expected, face_file_name(source, 3))


def test_face_file_names_never_collide() -> None:
    tricky = ["a b.jpg", "a_b.jpg", "a/b.jpg", "a__b.jpg", "x.jpg", "x.png", "x_jpg", "a_b.c", "a.b_c"]
    tricky += ["é/ü.jpg", "_/ü.jpg", "a_/b.jpg", "a/_b.jpg", "a" * 300, "a" * 301]
    names = [face_file_name(s, 0) for s in tricky]
    assert len(set(names)) == len(names)
    assert all(len(n) < 200 and "/" not in n and n.isascii() for n in names)
    assert face_file_name("a b.jpg", 0) == face_file_name("a b.jpg", 0)  # deterministic


# --- writer -----------------------------------------------------------------------------------------


def test_writer_records_and_resume_skips_done(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path) as w:
        w.write(_result("p/a.jpg", _face("p/a.jpg", 0, 1), _face("p/a.jpg", 1, 2, passed=False)))
        w.write(_result("bad.jpg", error="empty file (0 bytes)"))
    meta, rej, err = (_lines(tmp_path / n) for n in ("metadata.jsonl", "rejected.jsonl", "errors.jsonl"))
    assert [m["file_name"] for m in meta] == ["p__a_jpg_00.png"] and next(iter(meta[0])) == "file_name"
    assert (tmp_path / "p__a_jpg_00.png").is_file()
    assert [r["face_index"] for r in rej] == [1] and rej[0]["rejected_by"] == ["score"]
    assert err == [{"file": "/photos/bad.jpg", "reason": "empty file (0 bytes)", "source": "bad.jpg"}]

    with DatasetWriter(tmp_path) as w:
        assert w.done == {"p/a.jpg", "bad.jpg"}
        assert len(w.duplicates) == 1  # kept hashes reloaded from metadata.jsonl
        assert w.write(_result("p/a.jpg", _face("p/a.jpg", 0, 1))) == []  # already done: ignored
        dup = w.write(_result("copy.jpg", _face("copy.jpg", 0, 1)))  # same pixels as p/a.jpg face 0
    assert dup[0].rejected_by == ("duplicate",) and dup[0].filters[-1].value == 0
    assert len(_lines(tmp_path / "metadata.jsonl")) == 1


def test_open_repairs_an_interrupted_run(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path) as w:
        w.write(_result("a.jpg", _face("a.jpg", 0, 1)))
    # What a kill -9 can leave: an image + metadata line of an unjournaled source, a temp file, partial lines.
    with DatasetWriter(tmp_path) as w:
        w.write(_result("b.jpg", _face("b.jpg", 0, 2)))
    journal = tmp_path / "done.jsonl"
    journal.write_text(journal.read_text().splitlines(keepends=True)[0] + '{"source": "b.j')
    with open(tmp_path / "metadata.jsonl", "a") as fh:
        fh.write('{"file_name": "c_jpg_00.png", "sou')
    (tmp_path / ".c_jpg_00.png.tmp").write_bytes(b"half an image")

    with DatasetWriter(tmp_path) as w:
        assert w.done == {"a.jpg"}
        assert len(w.duplicates) == 1
        w.write(_result("b.jpg", _face("b.jpg", 0, 2)))

    meta = _lines(tmp_path / "metadata.jsonl")
    assert [m["file_name"] for m in meta] == ["a_jpg_00.png", "b_jpg_00.png"]
    assert [j["source"] for j in _lines(journal)] == ["a.jpg", "b.jpg"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a_jpg_00.png", "b_jpg_00.png"]


def test_orphan_images_are_only_removed_in_a_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "holiday_01.png").write_bytes(b"user data")  # DST without a journal: never touched
    with DatasetWriter(tmp_path) as w:
        w.write(_result("a.jpg", _face("a.jpg", 0, 1)))
    assert (tmp_path / "holiday_01.png").exists()


# --- the real CLI ----------------------------------------------------------------------------------

RESUME_PHOTOS = (
    "face_recognition/examples/obama-240p.jpg",
    "face_recognition/examples/obama_small.jpg",
    "face_recognition/examples/knn_examples/train/kit_harington/john2.jpeg",
    "dlib_faces/2008_001009.jpg",
    "face_recognition/examples/knn_examples/test/kit_with_rose.jpg",
    "insightface/Tom_Hanks_54745.png",
    "face_recognition/examples/obama-480p.jpg",
    "dlib_faces/2008_002470.jpg",
)


@pytest.fixture
def src(tmp_path: Path, photos_dir: Path) -> Path:
    folder = tmp_path / "src"
    for rel in RESUME_PHOTOS:
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos_dir / rel, dest)
    return folder


def _args(src: Path, dst: Path, model: Path, workers: int = 1) -> list[str]:
    return [
        "crop", str(src), str(dst), "--size", "96", "--detector", "scrfd", "--model", str(model),
        "--workers", str(workers), "--no-contact-sheet",
    ]  # fmt: skip


def _check_consistent(dst: Path) -> list[str]:
    """No temp files, no duplicate lines, metadata and image files match exactly; returns file names."""
    assert not list(dst.glob(".*.tmp"))
    names = [m["file_name"] for m in _lines(dst / "metadata.jsonl")]
    assert len(names) == len(set(names))
    assert sorted(p.name for p in dst.glob("*.png")) == sorted(names)
    sources = [j["source"] for j in _lines(dst / "done.jsonl")]
    assert len(sources) == len(set(sources))
    for name in ("metadata.jsonl", "rejected.jsonl", "errors.jsonl", "done.jsonl"):
        path = dst / name
        assert not path.exists() or path.read_text().endswith("\n") or path.stat().st_size == 0
    return names


def test_rerun_skips_everything(src: Path, tmp_path: Path, scrfd_model: Path) -> None:
    dst = tmp_path / "out"
    first = CliRunner().invoke(main, _args(src, dst, scrfd_model))
    assert first.exit_code == 0, first.output
    before = {n: (dst / n).read_bytes() for n in ("metadata.jsonl", "rejected.jsonl", "done.jsonl")}
    names = _check_consistent(dst)
    assert len(names) >= 4

    again = CliRunner().invoke(main, _args(src, dst, scrfd_model))
    assert again.exit_code == 0, again.output
    assert "0 processed, 8 skipped" in again.output
    assert {n: (dst / n).read_bytes() for n in before} == before


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(src: Path, tmp_path: Path, scrfd_model: Path) -> None:
    reference = tmp_path / "reference"
    ref = CliRunner().invoke(main, _args(src, reference, scrfd_model))
    assert ref.exit_code == 0, ref.output
    expected = _check_consistent(reference)

    dst = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "faceprep", *_args(src, dst, scrfd_model, workers=2)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            meta = dst / "metadata.jsonl"
            if meta.exists() and meta.stat().st_size > 0:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, no clean-up
    finally:
        proc.wait(timeout=30)
    interrupted = len(_lines(dst / "done.jsonl"))
    assert 0 < interrupted < len(RESUME_PHOTOS)

    resumed = CliRunner().invoke(main, _args(src, dst, scrfd_model))
    assert resumed.exit_code == 0, resumed.output
    assert f"{interrupted} skipped" in resumed.output
    assert sorted(_check_consistent(dst)) == sorted(expected)
    strip = ("file_name", "phash")
    assert [{k: v for k, v in m.items() if k not in strip} for m in _lines(dst / "metadata.jsonl")] == [
        {k: v for k, v in m.items() if k not in strip} for m in _lines(reference / "metadata.jsonl")
    ]
