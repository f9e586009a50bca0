"""``faceprep.ray_engine`` on a local Ray (2 CPUs) against the local engine: the same crops and records.

What needs no Ray (the actor class in-process, the ordering) runs without it."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from faceprep.cli import WorkerStartError, _results, worker_config
from faceprep.dataset import ERRORS, METADATA, REJECTED, DatasetWriter, read_jsonl
from faceprep.pipeline import FileResult, PipelineConfig
from faceprep.ray_engine import CropActor, _ordered, iter_results_ray, ray_available

# Ray copies its DataContext per dataset, touching its own deprecated fields on the way.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
PHOTOS = {
    "a/obama-480p.jpg": "face_recognition/examples/obama-480p.jpg",  # one face
    "a/obama-copy.jpg": "face_recognition/examples/obama-480p.jpg",  # its near-duplicate: order matters
    "b/2008_001009.jpg": "dlib_faces/2008_001009.jpg",  # two faces
    "b/john2.jpeg": "face_recognition/examples/knn_examples/train/kit_harington/john2.jpeg",  # one face
}


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One local Ray for the module (it takes seconds to start); iter_results_ray reuses it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'faceprep-diffengine[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def todo(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> list[tuple[str, str]]:
    src = tmp_path_factory.mktemp("src")
    for name, rel in PHOTOS.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos_dir / rel, src / name)
    (src / "b" / "truncated.jpg").write_bytes((photos_dir / PHOTOS["a/obama-480p.jpg"]).read_bytes()[:300])
    names = [*PHOTOS, "b/truncated.jpg"]
    return [(str(src / name), name) for name in names]


@pytest.fixture(scope="module")
def config(scrfd_model: Path) -> PipelineConfig:
    return PipelineConfig(
        detector="scrfd", size=128, detector_options={"model": str(scrfd_model)}, dedup=False
    )


def _write(dst: Path, results: Iterator[FileResult]) -> list[str]:
    sources = []
    with DatasetWriter(dst, options=None) as writer:
        for result in results:
            writer.write(result)
            sources.append(result.source)
        writer.finish(contact_sheet=False)
    return sources


def _dataset(dst: Path) -> tuple[dict[str, list[dict]], dict[str, bytes]]:
    records = {name: read_jsonl(dst / name) for name in (METADATA, REJECTED, ERRORS)}
    return records, {p.name: p.read_bytes() for p in sorted(dst.glob("*.png"))}


def test_ray_matches_local_engine(
    ray_session: None, todo: list[tuple[str, str]], config: PipelineConfig, tmp_path: Path
) -> None:
    ray_sources = _write(tmp_path / "ray", iter_results_ray(todo, config, workers=2))
    assert ray_sources == [source for _, source in todo]  # in input order
    _write(tmp_path / "local", _results(todo, None, config, 2))  # the local engine's 2-process pool

    ray_records, ray_images = _dataset(tmp_path / "ray")
    local_records, local_images = _dataset(tmp_path / "local")
    assert ray_records == local_records
    assert ray_images == local_images  # the crops, byte for byte
    kept = ray_records[METADATA]
    assert {r["source"] for r in kept} == {"a/obama-480p.jpg", "b/2008_001009.jpg", "b/john2.jpeg"}
    assert len(ray_images) == len(kept) >= 3
    duplicate = [r for r in ray_records[REJECTED] if r["source"] == "a/obama-copy.jpg"]
    assert duplicate and duplicate[0]["rejected_by"] == ["duplicate"]  # the later copy loses
    errors = ray_records[ERRORS]
    assert [e["source"] for e in errors] == ["b/truncated.jpg"]  # an error record, not a failed job


def test_start_failure_is_a_worker_start_error(tmp_path: Path) -> None:
    """A pipeline an actor cannot build is reported like the local engine's (in-process: no Ray)."""
    bad = PipelineConfig(detector="scrfd", detector_options={"model": str(tmp_path / "missing.onnx")})
    actor = CropActor(worker_config(bad))
    assert actor.start_error is not None
    row = actor({"index": np.array([0]), "job": np.array([pickle.dumps(("x.jpg", "x.jpg"))], dtype=object)})
    with pytest.raises(WorkerStartError, match=r"missing\.onnx"):
        list(_ordered([("x.jpg", "x.jpg")], iter([{"index": 0, "result": row["result"][0]}])))


def test_an_exception_for_one_file_is_an_error_record(
    config: PipelineConfig, todo: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever escapes Pipeline.process_file becomes that file's error, never an exception for Ray."""
    actor = CropActor(worker_config(config))
    assert actor.pipeline is not None

    def boom(path: str, source: str) -> FileResult:
        raise RuntimeError("exploded")

    monkeypatch.setattr(actor.pipeline, "process_file", boom)
    rows = actor(
        {"index": np.array([3, 4]), "job": np.array([pickle.dumps(j) for j in todo[3:]], dtype=object)}
    )
    results = [pickle.loads(blob) for blob in rows["result"]]
    assert list(rows["index"]) == [3, 4]
    assert [r.source for r in results] == ["b/john2.jpeg", "b/truncated.jpg"]
    assert all(r.error is not None and "RuntimeError: exploded" in r.error.reason for r in results)


def test_results_come_back_in_job_order() -> None:
    rows = [{"index": i, "result": pickle.dumps(FileResult(str(i), str(i)))} for i in (1, 0, 2)]
    out = list(_ordered([("0", "0"), ("1", "1"), ("2", "2")], iter(rows)))
    assert [r.source for r in out] == ["0", "1", "2"]
    with pytest.raises(RuntimeError, match="2 of 3"):
        list(_ordered([("0", "0"), ("1", "1"), ("2", "2")], iter(rows[:2])))


def test_ray_available(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("ray") is not None:
        assert ray_available() is None
    for module in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    reason = ray_available()
    assert reason is not None and "\n" not in reason
    assert "pip install 'faceprep-diffengine[ray]'" in reason
