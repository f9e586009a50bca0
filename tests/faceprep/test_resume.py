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
from PIL import Image

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
    with DatasetWriter(tmp_path) as w:
        w.write(_result("b.jpg", _face("b.jpg", 0, 2)))
    # What a kill -9 can leave: b's image + metadata line with its "writing" journal line but not its
    # finished line, a temp file, partial lines.
    journal = tmp_path / "done.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert [json.loads(x).get("writing") for x in lines] == [["a_jpg_00.png"], None, ["b_jpg_00.png"], None]
    journal.write_text("".join(lines[:3]) + '{"source": "b.j')
    with open(tmp_path / "metadata.jsonl", "a") as fh:
        fh.write('{"file_name": "c_jpg_00.png", "sou')
    (tmp_path / ".faceprep-tmp-c_jpg_00.png").write_bytes(b"half an image")

    with DatasetWriter(tmp_path) as w:
        assert w.done == {"a.jpg"}
        assert not (tmp_path / "b_jpg_00.png").exists()  # ours, by the journal: removed to be redone
        assert len(w.duplicates) == 1
        w.write(_result("b.jpg", _face("b.jpg", 0, 2)))

    meta = _lines(tmp_path / "metadata.jsonl")
    assert [m["file_name"] for m in meta] == ["a_jpg_00.png", "b_jpg_00.png"]
    assert [j["source"] for j in _lines(journal) if "faces" in j] == ["a.jpg", "b.jpg"]
    assert not list(tmp_path.glob(".faceprep-tmp-*"))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a_jpg_00.png", "b_jpg_00.png"]


def test_repair_deletes_only_files_in_its_own_record(tmp_path: Path) -> None:
    """Names like a crop's (``holiday_01.jpg``, ``DSC_0001.jpg``) that faceprep did not write survive."""
    users = {"holiday_01.png": b"user 1", "DSC_0001.jpg": b"user 2", "x_jpg_00.png": b"user 3"}
    for name, data in users.items():
        (tmp_path / name).write_bytes(data)
    for _ in range(3):  # a new dataset, then resumes (the old code deleted these on the first resume)
        with DatasetWriter(tmp_path) as w:
            w.write(_result("a.jpg", _face("a.jpg", 0, 1)))
    assert {n: (tmp_path / n).read_bytes() for n in users} == users


def test_a_crop_name_taken_by_a_users_file_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "a_jpg_00.png").write_bytes(b"the user's own file")
    with DatasetWriter(tmp_path) as w:
        written = w.write(_result("a.jpg", _face("a.jpg", 0, 1)))
    assert written == [] and (tmp_path / "a_jpg_00.png").read_bytes() == b"the user's own file"
    (err,) = _lines(tmp_path / "errors.jsonl")
    assert err["source"] == "a.jpg" and "was not written by faceprep: not overwritten" in err["reason"]


def test_a_folder_with_someone_elses_metadata_is_refused(tmp_path: Path) -> None:
    from faceprep.dataset import DatasetError

    (tmp_path / "metadata.jsonl").write_text('{"file_name": "mine.png"}\n')
    with pytest.raises(DatasetError, match="is not a faceprep dataset"):
        DatasetWriter(tmp_path).open()
    assert (tmp_path / "metadata.jsonl").read_text() == '{"file_name": "mine.png"}\n'


def test_crops_deleted_by_hand_are_recorded_and_stay_deleted(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path) as w:
        w.write(_result("a.jpg", _face("a.jpg", 0, 1), _face("a.jpg", 1, 2)))
        w.write(_result("b.jpg", _face("b.jpg", 0, 3)))
    (tmp_path / "a_jpg_01.png").unlink()  # manual curation
    with DatasetWriter(tmp_path) as w:
        assert [r["file_name"] for r in w.deleted_by_hand] == ["a_jpg_01.png"]
        assert w.write(_result("a.jpg", _face("a.jpg", 1, 2))) == []  # the source stays done
        sheet = w.finish()
    assert [m["file_name"] for m in _lines(tmp_path / "metadata.jsonl")] == ["a_jpg_00.png", "b_jpg_00.png"]
    (gone,) = _lines(tmp_path / "deleted.jsonl")
    assert gone["file_name"] == "a_jpg_01.png" and gone["source"] == "a.jpg" and "deleted_found" in gone
    assert sheet is not None and Image.open(sheet).size == (2 * 130 + 2, 132)  # the two crops left
    with DatasetWriter(tmp_path) as w:  # recorded once, not again on every run
        assert w.deleted_by_hand == []
    assert len(_lines(tmp_path / "deleted.jsonl")) == 1


def test_contact_sheet_skips_a_crop_deleted_since_the_record(tmp_path: Path) -> None:
    from faceprep.dataset import write_contact_sheet

    with DatasetWriter(tmp_path) as w:
        w.write(_result("a.jpg", _face("a.jpg", 0, 1)))
        w.write(_result("b.jpg", _face("b.jpg", 0, 2)))
    (tmp_path / "b_jpg_00.png").unlink()
    sheet = write_contact_sheet(tmp_path, thumb=32)
    assert sheet is not None and Image.open(sheet).size == (36, 36)


def test_a_non_utf8_source_name_is_recorded_losslessly(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")  # as os.walk returns a Latin-1 name on a UTF-8 system
    with DatasetWriter(tmp_path) as w:
        w.write(_result(name, _face(name, 0, 1)))
        w.write(_result("next.jpg", _face("next.jpg", 0, 2)))  # the batch goes on
    with DatasetWriter(tmp_path) as w:
        assert w.done == {name, "next.jpg"}  # read back exactly: a re-run skips it
    meta = _lines(tmp_path / "metadata.jsonl")
    assert meta[0]["source"] == name and (tmp_path / meta[0]["file_name"]).is_file()
    assert meta[0]["file_name"].isascii()


def test_second_writer_on_one_folder_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    from faceprep.run_lock import DatasetLockedError

    with DatasetWriter(tmp_path) as w:
        w.write(_result("a.jpg", _face("a.jpg", 0, 1)))
        with pytest.raises(DatasetLockedError, match=rf"in use by another faceprep run \(pid {os.getpid()} "):
            DatasetWriter(tmp_path).open()
    with DatasetWriter(tmp_path) as w:  # released on close
        assert w.done == {"a.jpg"}
    assert len(_lines(tmp_path / "metadata.jsonl")) == 1


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
    assert not list(dst.glob(".faceprep-tmp-*"))
    names = [m["file_name"] for m in _lines(dst / "metadata.jsonl")]
    assert len(names) == len(set(names))
    assert sorted(p.name for p in dst.glob("*.png")) == sorted(names)
    sources = [j["source"] for j in _lines(dst / "done.jsonl") if "faces" in j]
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
    interrupted = sum("faces" in j for j in _lines(dst / "done.jsonl"))
    assert 0 < interrupted < len(RESUME_PHOTOS)

    resumed = CliRunner().invoke(main, _args(src, dst, scrfd_model))
    assert resumed.exit_code == 0, resumed.output
    assert f"{interrupted} skipped" in resumed.output
    assert sorted(_check_consistent(dst)) == sorted(expected)
    strip = ("file_name", "phash")
    assert [{k: v for k, v in m.items() if k not in strip} for m in _lines(dst / "metadata.jsonl")] == [
        {k: v for k, v in m.items() if k not in strip} for m in _lines(reference / "metadata.jsonl")
    ]
