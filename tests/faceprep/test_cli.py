"""``faceprep crop`` end to end on real photos plus bad files, through click's runner (in-process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from faceprep.cli import main

PHOTOS = (
    "face_recognition/examples/obama-480p.jpg",  # one face
    "dlib_faces/2008_001009.jpg",  # two faces
    "face_recognition/examples/knn_examples/train/kit_harington/john2.jpeg",  # one face
)


def _jsonl(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    )


def _crop(args: list[str], scrfd_model: Path, detector: str = "scrfd") -> Result:
    return CliRunner().invoke(
        main, ["crop", *args, "--detector", detector, "--model", str(scrfd_model), "--workers", "1"]
    )


@pytest.fixture
def photo_tree(tmp_path: Path, photos_dir: Path) -> Path:
    """SRC with real photos in sub-folders and one of every kind of bad input."""
    src = tmp_path / "src"
    for i, rel in enumerate(PHOTOS):
        dest = src / f"set{i % 2}" / Path(rel).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos_dir / rel, dest)
    bad = src / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("this is not an image\n")
    jpeg = (photos_dir / PHOTOS[0]).read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[:300])
    Image.new("1", (12_000, 10_000)).save(bad / "bomb.png")  # 120 MP: over the decompression limit
    return src


def test_crop_end_to_end_with_bad_input(photo_tree: Path, tmp_path: Path, scrfd_model: Path) -> None:
    dst = tmp_path / "out"
    result = _crop([str(photo_tree), str(dst), "--size", "128", "--no-rotation-fix"], scrfd_model)
    assert result.exit_code == 0, result.output

    meta = _jsonl(dst / "metadata.jsonl")
    assert len(meta) >= 3  # obama, john and at least one of the two faces of 2008_001009
    sources = {m["source"] for m in meta}
    assert sources == {"set0/obama-480p.jpg", "set1/2008_001009.jpg", "set0/john2.jpeg"}
    for m in meta:
        assert next(iter(m)) == "file_name"  # imagefolder wants it; we put it first
        with Image.open(dst / m["file_name"]) as im:
            assert im.size == (128, 128) and im.mode == "RGB"
        assert set(m["filters"]) == {"score", "eye_distance", "filled", "blur", "yaw", "roll", "duplicate"}
        assert m["rejected_by"] == [] and 0.6 <= m["score"] <= 1
        assert np.asarray(m["landmarks"]).shape == (5, 2) and np.asarray(m["quad"]).shape == (4, 2)
        assert len(m["phash"]) == 16
    assert {m["file_name"] for m in meta} >= {"set0__obama-480p_jpg_00.png", "set0__john2_jpeg_00.png"}
    images = sorted(p.name for p in dst.glob("*.png"))
    assert images == sorted(m["file_name"] for m in meta)

    errors = {Path(e["file"]).name: e["reason"] for e in _jsonl(dst / "errors.jsonl")}
    assert set(errors) == {"empty.jpg", "notes.png", "truncated.jpg", "bomb.png"}
    assert "empty" in errors["empty.jpg"] and "too large" in errors["bomb.png"]
    assert "warning:" in result.output and "truncated.jpg" in result.output
    assert "7 processed" in result.output and "4 errors" in result.output

    with Image.open(dst / "preview" / "contact_sheet.png") as sheet:
        assert sheet.width > 128 and sheet.height >= 128


def test_jpeg_output_and_single_file_src(
    photos_dir: Path, tmp_path: Path, scrfd_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACEPREP_SCRFD_MODEL")  # only --model says where SCRFD is
    monkeypatch.setenv("FACEPREP_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "one.jpg"
    shutil.copy(photos_dir / PHOTOS[0], src)
    dst = tmp_path / "out"
    args = [
        str(src),
        str(dst),
        "--format",
        "jpg",
        "--jpeg-quality",
        "90",
        "--no-rotation-fix",
        "--size",
        "64",
    ]
    result = _crop(args, scrfd_model, detector="auto")  # --model makes auto mean scrfd, no fallback
    assert result.exit_code == 0, result.output
    assert "unavailable" not in result.output
    (meta,) = _jsonl(dst / "metadata.jsonl")
    assert meta["file_name"] == "one_jpg_00.jpg" and meta["source"] == "one.jpg"
    assert meta["detector"] == "scrfd"
    with Image.open(dst / meta["file_name"]) as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def test_all_inputs_bad_exits_nonzero(tmp_path: Path, scrfd_model: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"")
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dst = tmp_path / "out"
    result = _crop([str(src), str(dst)], scrfd_model)
    assert result.exit_code == 1
    assert "every input failed" in result.output
    assert len(_jsonl(dst / "errors.jsonl")) == 2


def test_empty_source_folder_is_an_error(tmp_path: Path, scrfd_model: Path) -> None:
    (tmp_path / "src").mkdir()
    result = _crop([str(tmp_path / "src"), str(tmp_path / "out")], scrfd_model)
    assert result.exit_code == 1 and "no image files found" in result.output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--size", "32"], "32 is not in the range 64<=x<=1024"),
        (["--min-score", "1.5"], "min_score must be in [0, 1]"),
        (["--max-yaw", "abc"], "'abc' is not a number"),
        (["--fill", "nope"], "unknown fill 'nope'"),
        (["--align", "nope"], "unknown aligner 'nope'"),
    ],
)
def test_invalid_options_exit_2_with_message(
    option: list[str], message: str, tmp_path: Path, scrfd_model: Path
) -> None:
    (tmp_path / "src").mkdir()
    result = _crop([str(tmp_path / "src"), str(tmp_path / "out"), *option], scrfd_model)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()  # nothing written for a bad command line


def test_threshold_off_keeps_value_and_disables_check(
    photos_dir: Path, tmp_path: Path, scrfd_model: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photos_dir / PHOTOS[1], src / "group.jpg")
    dst = tmp_path / "out"
    # an eye distance of 1000 px rejects every face; 'off' for score keeps the score check silent
    result = _crop(
        [str(src), str(dst), "--min-eye-dist", "1000", "--min-score", "off", "--no-rotation-fix"], scrfd_model
    )
    assert result.exit_code == 0, result.output
    assert _jsonl(dst / "metadata.jsonl") == []
    rejected = _jsonl(dst / "rejected.jsonl")
    assert len(rejected) >= 2
    assert all("eye_distance" in r["rejected_by"] and "score" not in r["rejected_by"] for r in rejected)
    assert all(0 < r["filters"]["eye_distance"] < 1000 for r in rejected)
    assert "eye_distance" in result.output  # the summary counts rejections by reason
