"""``faceprep crop`` never loses or mixes a user's files: DST == SRC, two runs at once, a resume with other
options, crops deleted by hand, odd file names, a full disk, workers that cannot start."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from faceprep import plugins
from faceprep.cli import WorkerStartError, _results, main, worker_config
from faceprep.hookspecs import StageSpec, hookimpl
from faceprep.pipeline import PipelineConfig
from faceprep.run_lock import DatasetLock
from faceprep.types import Detection

PORTRAITS = (
    "face_recognition/examples/obama-240p.jpg",
    "face_recognition/examples/obama_small.jpg",
    "face_recognition/examples/knn_examples/train/kit_harington/john2.jpeg",
    "insightface/Tom_Hanks_54745.png",
)
CAMERA_NAMES = ("DSC_0001.jpg", "IMG_20190101_123456.jpg", "PXL_20230704_101112345.jpg", "holiday_01.jpg")


def _crop(src: Path, dst: Path, model: Path, *extra: str) -> Result:
    args = ["crop", str(src), str(dst), "--model", str(model), "--workers", "1", "--size", "64"]
    return CliRunner().invoke(main, [*args, "--no-rotation-fix", *extra])


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` but the lock file (which records each run's pid)."""
    files = (p for p in folder.iterdir() if p.is_file() and p.name != ".faceprep.lock")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def camera_roll(tmp_path: Path, photos_dir: Path) -> Path:
    """Four real portraits under camera-style names that look like crop names to a pattern match."""
    folder = tmp_path / "pics"
    folder.mkdir()
    for rel, name in zip(PORTRAITS, CAMERA_NAMES, strict=True):
        suffix = Path(rel).suffix
        shutil.copy(photos_dir / rel, folder / (name if suffix == ".jpg" else Path(name).stem + suffix))
    return folder


def test_dst_equal_to_src_is_refused(camera_roll: Path, scrfd_model: Path) -> None:
    before = _digests(camera_roll)
    result = _crop(camera_roll, camera_roll, scrfd_model)
    assert result.exit_code == 2
    assert "DST is SRC" in result.output and "--same-folder" in result.output
    assert _digests(camera_roll) == before  # nothing written


def test_same_folder_twice_keeps_every_photo(camera_roll: Path, scrfd_model: Path) -> None:
    originals = _digests(camera_roll)
    first = _crop(camera_roll, camera_roll, scrfd_model, "--same-folder", "--limit", "3")
    assert first.exit_code == 0, first.output
    second = _crop(camera_roll, camera_roll, scrfd_model, "--same-folder")  # the old code deleted all four
    assert second.exit_code == 0, second.output
    now = _digests(camera_roll)
    assert {n: now.get(n) for n in originals} == originals  # never-input photo (limit) kept too
    sources = [j["source"] for j in _jsonl(camera_roll / "done.jsonl") if "faces" in j]
    assert sorted(sources) == sorted(originals)  # every photo once; no crop, no contact sheet ingested
    crops = [m["file_name"] for m in _jsonl(camera_roll / "metadata.jsonl")]
    assert len(crops) >= 2 and all((camera_roll / c).is_file() for c in crops)
    assert (camera_roll / "preview" / "contact_sheet.png").is_file()


def test_second_run_on_a_locked_folder_exits_naming_the_holder(
    camera_roll: Path, tmp_path: Path, scrfd_model: Path
) -> None:
    dst = tmp_path / "out"
    dst.mkdir()
    with DatasetLock(dst):
        result = _crop(camera_roll, dst, scrfd_model)
    assert result.exit_code == 1
    assert f"in use by another faceprep run (pid {os.getpid()} on " in result.output
    assert "Traceback" not in result.output
    assert not (dst / "metadata.jsonl").exists() and not (dst / "done.jsonl").exists()
    ok = _crop(camera_roll, dst, scrfd_model, "--limit", "1")  # the lock is gone with its holder
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (["--size", "128"], "--size was 64, now 128"),
        (["--format", "jpg"], '--format was "png", now "jpg"'),
        (["--fill", "edge"], '--fill was "mirror-blur", now "edge"'),
        (["--max-yaw", "20"], "--max-yaw was 50.0, now 20.0"),
    ],
)
def test_resume_with_other_options_is_refused(
    camera_roll: Path, tmp_path: Path, scrfd_model: Path, changed: list[str], message: str
) -> None:
    dst = tmp_path / "out"
    first = _crop(camera_roll, dst, scrfd_model, "--limit", "1")
    assert first.exit_code == 0, first.output
    recorded = json.loads((dst / "faceprep.json").read_text())
    assert recorded["options"]["size"] == 64 and recorded["detector"]["model_sha256"]
    before = _digests(dst)
    again = _crop(camera_roll, dst, scrfd_model, *changed)
    assert again.exit_code == 2, again.output
    assert message in again.output and "Traceback" not in again.output
    assert _digests(dst) == before
    same = _crop(camera_roll, dst, scrfd_model, "--limit", "2", "--workers", "1")  # other limit: fine
    assert same.exit_code == 0, same.output


def test_resume_after_deleting_a_crop_by_hand(camera_roll: Path, tmp_path: Path, scrfd_model: Path) -> None:
    dst = tmp_path / "out"
    assert _crop(camera_roll, dst, scrfd_model, "--limit", "2").exit_code == 0
    gone = _jsonl(dst / "metadata.jsonl")[0]["file_name"]
    (dst / gone).unlink()
    result = _crop(camera_roll, dst, scrfd_model)  # the old code failed in the contact sheet
    assert result.exit_code == 0, result.output
    assert "1 kept crop(s) were deleted by hand" in result.output
    assert [r["file_name"] for r in _jsonl(dst / "deleted.jsonl")] == [gone]
    assert gone not in {m["file_name"] for m in _jsonl(dst / "metadata.jsonl")}
    assert not (dst / gone).exists()  # the face is not cropped again


def test_non_utf8_file_name_does_not_stop_the_batch(
    tmp_path: Path, photos_dir: Path, scrfd_model: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    odd = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(photos_dir / PORTRAITS[0], src / odd)
    shutil.copy(photos_dir / PORTRAITS[1], src / "plain.jpg")
    dst = tmp_path / "out"
    first = _crop(src, dst, scrfd_model)
    assert first.exit_code == 0, first.output
    assert {j["source"] for j in _jsonl(dst / "done.jsonl") if "faces" in j} == {odd, "plain.jpg"}
    assert odd in {m["source"] for m in _jsonl(dst / "metadata.jsonl")}
    again = _crop(src, dst, scrfd_model)
    assert again.exit_code == 0 and "0 processed, 2 skipped" in again.output


def test_disk_full_says_so_in_one_line_and_keeps_the_dataset(
    camera_roll: Path, tmp_path: Path, scrfd_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceprep.dataset import DatasetWriter

    dst = tmp_path / "out"
    assert _crop(camera_roll, dst, scrfd_model, "--limit", "1").exit_code == 0
    before = _digests(dst)

    def full(self: DatasetWriter, crop: object, file_name: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.dst / file_name))

    monkeypatch.setattr(DatasetWriter, "_save_image", full)
    result = _crop(camera_roll, dst, scrfd_model)
    assert result.exit_code == 1
    assert "no space left on the disk while writing" in result.output and "Traceback" not in result.output
    monkeypatch.undo()
    after = _digests(dst)
    assert {n: after[n] for n in before if n.endswith(".png")} == {
        n: d for n, d in before.items() if n.endswith(".png")
    }
    resumed = _crop(camera_roll, dst, scrfd_model)
    assert resumed.exit_code == 0, resumed.output
    assert sorted(j["source"] for j in _jsonl(dst / "done.jsonl") if "faces" in j) == sorted(
        p.name for p in camera_roll.iterdir()
    )


# --- stage options and workers ------------------------------------------------------------------------


class _Fixed:
    """A detector that finds one fixed face; its factory takes no ``num_threads``."""

    name = "fixed"

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        pts = np.array([[0.4, 0.4], [0.6, 0.4], [0.5, 0.5], [0.42, 0.62], [0.58, 0.62]]) * [w, h]
        return [Detection((0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h), 0.99, pts + self.offset, "fixed")]


@pytest.fixture
def fixed_detector() -> object:
    plugin = types.SimpleNamespace()

    @hookimpl
    def faceprep_detectors() -> list[StageSpec]:
        return [StageSpec("fixed", lambda offset=0.0: _Fixed(offset), "test detector")]

    plugin.faceprep_detectors = faceprep_detectors
    plugins.register(plugin, "test-fixed")
    yield plugin
    plugins.unregister("test-fixed")


def test_workers_pass_num_threads_only_to_factories_that_take_it(fixed_detector: object) -> None:
    assert "num_threads" not in worker_config(PipelineConfig(detector="fixed")).detector_options
    assert worker_config(PipelineConfig(detector="scrfd")).detector_options["num_threads"] == 1


def test_detector_opt_reaches_the_factory(fixed_detector: object, camera_roll: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    args = ["crop", str(camera_roll), str(dst), "--detector", "fixed", "--workers", "1", "--size", "64"]
    result = CliRunner().invoke(main, [*args, "--detector-opt", "offset=3.5", "--limit", "1"])
    assert result.exit_code == 0, result.output
    (record,) = _jsonl(dst / "metadata.jsonl") or _jsonl(dst / "rejected.jsonl")
    assert record["landmarks"][0][0] == pytest.approx(np.array(record["box"])[0] / 0.3 * 0.4 + 3.5, abs=1)
    assert json.loads((dst / "faceprep.json").read_text())["options"]["detector_options"] == {"offset": 3.5}
    bad = CliRunner().invoke(main, [*args, "--detector-opt", "offset"])
    assert bad.exit_code == 2 and "is not KEY=VALUE" in bad.output


def test_a_worker_that_cannot_start_ends_the_run(tmp_path: Path) -> None:
    config = PipelineConfig(detector="scrfd", detector_options={"model": str(tmp_path / "missing.onnx")})
    with pytest.raises(WorkerStartError, match=r"missing\.onnx"):
        list(_results([("a.jpg", "a.jpg"), ("b.jpg", "b.jpg")], None, config, 2))


# --- the other commands: review, refilter, --engine ---------------------------------------------------


def test_review_serves_the_dataset_until_stopped(
    camera_roll: Path, tmp_path: Path, scrfd_model: Path
) -> None:
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    dst = tmp_path / "out"
    assert _crop(camera_roll, dst, scrfd_model).exit_code == 0
    assert json.loads((dst / "faceprep.json").read_text())["src"] == str(camera_roll.resolve())
    cmd = [sys.executable, "-m", "faceprep", "review", str(dst), "--port", "0", "--no-browser"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            if found := re.search(r"serving (http://127\.0\.0\.1:\d+/)", line):
                url = found.group(1)
                break
        assert url, "no URL printed"
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"faceprep review" in page.read()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    not_a_dataset = CliRunner().invoke(main, ["review", str(tmp_path), "--no-browser"])
    assert not_a_dataset.exit_code == 2 and "Traceback" not in not_a_dataset.output


def test_refilter_moves_faces_by_the_new_threshold(
    camera_roll: Path, tmp_path: Path, scrfd_model: Path
) -> None:
    dst = tmp_path / "out"
    assert _crop(camera_roll, dst, scrfd_model, "--max-yaw", "off").exit_code == 0
    kept = _jsonl(dst / "metadata.jsonl")
    yaws = {m["file_name"]: m["filters"]["yaw"] for m in kept}
    cut = sorted(abs(v) for v in yaws.values())[len(yaws) // 2]  # about half of the faces go
    result = CliRunner().invoke(main, ["refilter", str(dst), "--max-yaw", str(cut)])
    assert result.exit_code == 0, result.output
    now = {m["file_name"] for m in _jsonl(dst / "metadata.jsonl")}
    assert now == {name for name, yaw in yaws.items() if abs(yaw) <= cut}
    assert all(not (dst / name).exists() for name in set(yaws) - now)  # out of the image set
    nothing = CliRunner().invoke(main, ["refilter", str(dst)])
    assert nothing.exit_code == 2 and "give at least one threshold" in nothing.output


def test_engine_ray_without_ray_is_a_usage_error(
    camera_roll: Path, tmp_path: Path, scrfd_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faceprep.ray_engine

    monkeypatch.setattr(faceprep.ray_engine, "ray_available", lambda: "ray is not installed: install it")
    result = _crop(camera_roll, tmp_path / "out", scrfd_model, "--engine", "ray")
    assert result.exit_code == 2 and "ray is not installed" in result.output
