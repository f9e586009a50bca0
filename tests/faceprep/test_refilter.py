"""``faceprep.refilter``: new thresholds applied from the stored values, without re-detection."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from faceprep.dataset import DatasetWriter, face_file_name, read_jsonl
from faceprep.refilter import PARKED_DIR, RefilterError, refilter
from faceprep.review import effective_kept
from faceprep.run_lock import DatasetLock, DatasetLockedError


def _load_helper() -> Any:
    path = Path(__file__).with_name("review_data.py")
    spec = importlib.util.spec_from_file_location("faceprep_review_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_dataset = _load_helper().build_dataset


def keys(dst: Path, name: str) -> list[tuple[str, int]]:
    return [(r["source"], r["face_index"]) for r in read_jsonl(dst / name)]


def snapshot(dst: Path) -> dict[str, bytes]:
    """Every file of DST but the lock file (which the lock creates)."""
    files = (p for p in sorted(dst.rglob("*")) if p.is_file() and p.name != ".faceprep.lock")
    return {str(p.relative_to(dst)): p.read_bytes() for p in files}


def test_tightening_moves_faces_out_and_parks_their_crops(tmp_path: Path) -> None:
    _, dst = build_dataset(tmp_path)
    crop = face_file_name("sub/b.png", 1)
    summary = refilter(dst, {"max_yaw": 15})
    assert keys(dst, "metadata.jsonl") == [("a.jpg", 0)]
    moved = next(
        r for r in read_jsonl(dst / "rejected.jsonl") if (r["source"], r["face_index"]) == ("sub/b.png", 1)
    )
    assert moved["rejected_by"] == ["yaw"] and "file_name" not in moved
    assert moved["filters"]["yaw"] == 20.0 and moved["phash"] == "00000000ffffffff"
    assert not (dst / crop).exists() and (dst / PARKED_DIR / crop).is_file()
    assert (summary.kept_before, summary.kept_after, summary.parked) == (2, 1, 1)
    assert dict(summary.newly_rejected) == {"yaw": 1} and summary.newly_kept == 0
    assert "--max-yaw 50.0 -> 15" in summary.lines()[0]
    recorded = json.loads((dst / "faceprep.json").read_text())
    assert recorded["options"]["max_yaw"] == 15
    assert recorded["refiltered"][-1]["changed"] == {"max_yaw": [50.0, 15]}
    assert not list(dst.glob(".faceprep-tmp-*"))
    # loosening again brings the parked crop back, no source photo needed
    summary = refilter(dst, {"max_yaw": 50})
    assert keys(dst, "metadata.jsonl") == [("a.jpg", 0), ("sub/b.png", 1)]
    assert (dst / crop).is_file() and not (dst / PARKED_DIR / crop).exists()
    assert (summary.restored, summary.rendered, summary.newly_kept) == (1, 0, 1)


def test_loosening_renders_crops_from_the_source_photos(tmp_path: Path) -> None:
    src, dst = build_dataset(tmp_path)
    before = snapshot(dst)
    with pytest.raises(RefilterError, match="no SRC known"):
        refilter(dst, {"max_yaw": 70})
    assert snapshot(dst) == before  # nothing changed
    summary = refilter(dst, {"max_yaw": 70}, src=src)
    name = face_file_name("a.jpg", 1)
    assert summary.rendered == 1 and summary.newly_kept == 1
    assert ("a.jpg", 1) in keys(dst, "metadata.jsonl")
    assert ("a.jpg", 1) not in keys(dst, "rejected.jsonl")
    assert Image.open(dst / name).size == (64, 64)  # the dataset's size (faceprep.json)
    journal = read_jsonl(dst / "done.jsonl")
    assert {"source": "a.jpg", "writing": [name]} in journal  # the writer owns the file on resume
    # c.jpg #0 is still out: blur fails as well as yaw
    rec = next(
        r for r in read_jsonl(dst / "rejected.jsonl") if r["source"] == "c.jpg" and r["face_index"] == 0
    )
    assert rec["rejected_by"] == ["blur"]


def test_the_duplicate_check_is_replayed_in_run_order(tmp_path: Path) -> None:
    src, dst = build_dataset(tmp_path)
    # a.jpg #0 (what sub/b.png #0 duplicated) is rejected now, so sub/b.png #0 is no duplicate any more;
    # it stays out only because its own yaw fails too
    refilter(dst, {"max_yaw": 4})
    rec = next(
        r for r in read_jsonl(dst / "rejected.jsonl") if r["source"] == "sub/b.png" and r["face_index"] == 0
    )
    assert rec["rejected_by"] == ["yaw"] and rec["filters"]["duplicate"] == 64.0
    # with a smaller dedup distance the duplicate (2 bits from a.jpg #0) is kept
    refilter(dst, {"max_yaw": 50, "dedup_distance": 1}, src=src)
    kept = {(r["source"], r["face_index"]): r for r in read_jsonl(dst / "metadata.jsonl")}
    assert kept[("sub/b.png", 0)]["filters"]["duplicate"] == 2.0
    assert kept[("sub/b.png", 0)]["rejected_by"] == []


def test_dry_run_and_bad_options_change_nothing(tmp_path: Path) -> None:
    _, dst = build_dataset(tmp_path)
    before = snapshot(dst)
    summary = refilter(dst, {"min_blur": 100}, dry_run=True)
    assert summary.dry_run and summary.kept_after == 1 and dict(summary.newly_rejected) == {"blur": 1}
    assert "would change" in summary.lines()[2]
    with pytest.raises(ValueError, match="unknown threshold"):
        refilter(dst, {"max_pitch": 3})
    with pytest.raises(ValueError, match="max_filled"):
        refilter(dst, {"max_filled": 2.0})
    with pytest.raises(ValueError, match="not a faceprep dataset"):
        refilter(tmp_path / "src", {"max_yaw": 3})
    assert snapshot(dst) == before


def test_refilter_waits_for_no_one_while_a_crop_run_holds_the_folder(tmp_path: Path) -> None:
    _, dst = build_dataset(tmp_path)
    with DatasetLock(dst), pytest.raises(DatasetLockedError):
        refilter(dst, {"max_yaw": 10})


def test_a_refiltered_dataset_resumes_cleanly_and_keeps_review_decisions(tmp_path: Path) -> None:
    _, dst = build_dataset(tmp_path)
    with open(dst / "review.jsonl", "w") as fh:
        fh.write(json.dumps({"source": "a.jpg", "face_index": 0, "decision": "reject"}) + "\n")
    refilter(dst, {"max_yaw": 15})
    with DatasetWriter(dst) as writer:  # what `faceprep crop` does on resume
        assert writer.deleted_by_hand == []  # a parked crop is not mistaken for one deleted by hand
        assert writer.done == {"a.jpg", "sub/b.png", "c.jpg"}
    assert effective_kept(dst) == []  # a.jpg #0 rejected in review, sub/b.png #1 by the new max_yaw
    refilter(dst, {"max_yaw": 15})  # the same again: nothing moves
    assert keys(dst, "metadata.jsonl") == [("a.jpg", 0)]
