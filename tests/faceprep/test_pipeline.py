"""The library API: ``Pipeline.from_names(...)`` on real photos, the data it returns, errors, fallback."""

from __future__ import annotations

import multiprocessing
import pickle
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceprep import filters, plugins
from faceprep import pipeline as pipeline_mod
from faceprep.filters import FilterThresholds
from faceprep.geometry import ffhq_quad
from faceprep.hookspecs import StageSpec, hookimpl
from faceprep.imageio import load_image
from faceprep.pipeline import DetectorFallbackWarning, Pipeline, PipelineConfig, resolve_detector
from faceprep.rotation import RotationCorrectingDetector

PORTRAIT = "face_recognition/examples/obama-480p.jpg"
GROUP = "dlib_faces/2008_001009.jpg"


@pytest.fixture(scope="module")
def pipe(scrfd_model: Path) -> Pipeline:
    return Pipeline.from_names("scrfd", "ffhq", "mirror-blur", size=128, model=str(scrfd_model))


def test_portrait_gives_one_kept_ffhq_crop(pipe: Pipeline, photos_dir: Path) -> None:
    image = load_image(photos_dir / PORTRAIT)
    (crop,) = pipe(image, source="obama.jpg")
    assert crop.kept and crop.source == "obama.jpg" and crop.face_index == 0
    assert crop.image.shape == (128, 128, 3) and crop.image.dtype == np.uint8
    assert crop.detection.detector == "scrfd" and crop.detection.score > 0.6
    np.testing.assert_allclose(crop.quad.corners, ffhq_quad(crop.detection.landmarks).corners)
    assert crop.filled_fraction == 0.0  # the face is far from the photo's edges
    values = {f.name: f.value for f in crop.filters}
    assert list(values) == ["score", "eye_distance", "filled", "blur", "yaw", "roll", "duplicate"]
    assert abs(values["yaw"]) < 15 and abs(values["roll"]) < 10 and values["blur"] > 30
    record = crop.record()
    assert record["filters"]["eye_distance"] == pytest.approx(crop.detection.eye_distance, abs=1e-3)
    assert record["rejected_by"] == []
    # the crop is the face: its centre rows are not flat fill
    assert crop.image[32:96, 32:96].std() > 20


def test_same_photo_twice_is_a_near_duplicate(scrfd_model: Path, photos_dir: Path) -> None:
    pipe = Pipeline.from_names("scrfd", size=64, model=str(scrfd_model), rotation_fix=False)
    image = load_image(photos_dir / PORTRAIT)
    first = pipe(image)
    second = pipe(image.copy())
    assert first[0].kept and second[0].rejected_by == ("duplicate",)
    assert second[0].filters[-1].value <= 2


def test_group_photo_faces_sorted_and_thresholds_applied(scrfd_model: Path, photos_dir: Path) -> None:
    strict = FilterThresholds(min_eye_dist=30.0, dedup_distance=None)
    pipe = Pipeline.from_names("scrfd", size=64, model=str(scrfd_model), thresholds=strict)
    crops = pipe(load_image(photos_dir / GROUP))
    assert len(crops) == 2
    scores = [c.detection.score for c in crops]
    assert scores == sorted(scores, reverse=True) and [c.face_index for c in crops] == [0, 1]
    for c in crops:
        assert ("eye_distance" in c.rejected_by) == (c.detection.eye_distance < 30.0)
    assert any(c.detection.eye_distance < 30.0 for c in crops)  # this photo has one small face


def test_rotated_photo_still_gives_an_upright_crop(pipe: Pipeline, photos_dir: Path) -> None:
    image = load_image(photos_dir / PORTRAIT)
    (upright,) = pipe(image)
    (turned,) = pipe(np.ascontiguousarray(np.rot90(image, k=-1)))  # photo turned 90° clockwise
    assert abs(abs(turned.quad.angle_deg) - 90) < 8
    # same face, same framing: the crops are near-duplicates and close in pixels
    assert filters.phash(upright.image) - filters.phash(turned.image) <= 8
    diff = np.abs(upright.image.astype(float) - turned.image.astype(float))[16:112, 16:112].mean()
    assert diff < 25


def test_process_file_reports_errors(pipe: Pipeline, tmp_path: Path, photos_dir: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    result = pipe.process_file(empty, source="empty.jpg")
    assert not result.ok and result.crops == ()
    assert result.error is not None and result.error.path == str(empty) and "empty" in result.error.reason
    missing = pipe.process_file(tmp_path / "nope.jpg")
    assert missing.error is not None and "no such file" in missing.error.reason
    ok = pipe.process_file(photos_dir / GROUP, source="g.jpg")
    assert ok.ok and ok.source == "g.jpg" and len(ok.crops) == 2 and ok.seconds > 0


def test_bad_image_array_and_config_rejected(pipe: Pipeline) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        pipe(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"size must be in 64\.\.1024"):
        PipelineConfig(size=2048)
    with pytest.raises(plugins.UnknownStageError, match="unknown aligner 'nope'"):
        Pipeline.from_names("scrfd", aligner="nope")


def test_auto_fallback_is_explained_once(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = {
        "best": StageSpec("best", object, "needs weights", available=lambda: "no model file", priority=10),
        "spare": StageSpec("spare", object, "ships its weights", priority=1),
        "worse": StageSpec("worse", object, "available but low priority", priority=0),
    }
    monkeypatch.setattr(plugins, "stages", lambda kind: specs)
    assert resolve_detector("auto") == ("spare", "best unavailable (no model file); using spare")
    assert resolve_detector("worse") == ("worse", None)
    specs["best"] = StageSpec("best", object, "now fine", priority=10)
    assert resolve_detector("auto") == ("best", None)


def test_from_names_warns_on_fallback(monkeypatch: pytest.MonkeyPatch, scrfd_model: Path) -> None:
    monkeypatch.setattr(
        pipeline_mod, "resolve_detector", lambda name: ("scrfd", "detector auto -> scrfd (x)")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Pipeline.from_names("auto", model=str(scrfd_model))
    fallback = [w for w in caught if issubclass(w.category, DetectorFallbackWarning)]
    assert len(fallback) == 1 and "auto -> scrfd" in str(fallback[0].message)


# ----------------------------------------------------------------------------- pickling, PIL input, options


def _small_portrait(photos_dir: Path) -> np.ndarray:
    image = Image.fromarray(load_image(photos_dir / PORTRAIT))
    return np.asarray(image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR))


def _summary(crops: list) -> list[tuple[int, tuple[float, ...], bool]]:
    return [(c.face_index, tuple(round(v, 1) for v in c.detection.box), c.kept) for c in crops]


def test_pipeline_pickles_as_its_config(scrfd_model: Path) -> None:
    pipe = Pipeline.from_names("scrfd", size=64, model=str(scrfd_model), num_threads=1, rotation_fix=False)
    copy = pickle.loads(pickle.dumps(pipe))
    assert isinstance(copy, Pipeline) and copy is not pipe and copy.config == pipe.config
    assert copy.detector is not pipe.detector  # rebuilt, not shared


@pytest.mark.slow  # two spawned interpreters import torch and load the model (~10 s on 2 cores)
def test_spawn_pool_maps_a_pipeline(scrfd_model: Path, photos_dir: Path) -> None:
    pipe = Pipeline.from_names("scrfd", size=64, model=str(scrfd_model), num_threads=1, dedup=False)
    small = _small_portrait(photos_dir)
    images: list[np.ndarray | Image.Image] = [small, Image.fromarray(np.ascontiguousarray(small[:, ::-1]))]
    expected = [_summary(pipe(im)) for im in images]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        got = pool.map(pipe, images)
    assert [_summary(c) for c in got] == expected and [len(c) for c in got] == [1, 1]


def test_pil_image_input_follows_load_image_rules(pipe: Pipeline, photos_dir: Path, tmp_path: Path) -> None:
    upright = _small_portrait(photos_dir)
    # stored turned 90° counter-clockwise with EXIF orientation 6 ("rotate 90° CW to display")
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "turned.png", exif=exif.tobytes())
    with Image.open(tmp_path / "turned.png") as opened:
        from_pil = pipe(opened)
    assert _summary(from_pil) == _summary(pipe(upright))
    grey = Image.fromarray(upright).convert("L")  # mode L -> RGB, as load_image does
    (crop,) = pipe(grey)
    assert crop.image.shape == (128, 128, 3) and (crop.image[..., 0] == crop.image[..., 2]).all()


class _NullDetector:
    def __init__(self, num_threads: int = 0) -> None:
        self.num_threads = num_threads

    def detect(self, image: object) -> list[object]:
        return []


class _TiltAligner:
    def __init__(self, tilt: float = 0.0, rotate: bool = True) -> None:
        self.tilt = tilt

    def align(self, detection: object, image_shape: tuple[int, int]) -> object:
        raise NotImplementedError


class _ModelAligner(_TiltAligner):
    def __init__(self, model: str = "") -> None:
        self.model = model


@hookimpl
def _routing_detectors() -> list[StageSpec]:
    return [StageSpec("test-null", _NullDetector, "finds nothing")]


@hookimpl
def _routing_aligners() -> list[StageSpec]:
    return [
        StageSpec("test-tilt", _TiltAligner, "takes tilt="),
        StageSpec("test-model-aligner", _ModelAligner, "takes model= like a detector"),
    ]


@pytest.fixture
def routing_plugin() -> Iterator[None]:
    module = types.SimpleNamespace(faceprep_detectors=_routing_detectors, faceprep_aligners=_routing_aligners)
    pm = plugins.get_plugin_manager()
    pm.register(module, name="test-routing")
    yield
    pm.unregister(module)


def test_options_routed_by_factory_parameters(routing_plugin: None, scrfd_model: Path) -> None:
    pipe = Pipeline.from_names("test-null", aligner="test-tilt", tilt=7.5, rotate=False, num_threads=1)
    assert pipe.config.aligner_options == {"tilt": 7.5, "rotate": False}
    assert pipe.config.detector_options == {"num_threads": 1}
    assert isinstance(pipe.detector, RotationCorrectingDetector)
    assert isinstance(pipe.detector.inner, _NullDetector) and pipe.detector.inner.num_threads == 1
    assert pipe.aligner.tilt == 7.5
    builtin = Pipeline.from_names(
        "scrfd", size=64, model=str(scrfd_model), scale=1.2, fill="constant", value=9
    )
    assert builtin.config.detector_options == {"model": str(scrfd_model)}
    assert builtin.config.aligner_options == {"scale": 1.2} and builtin.config.fill_options == {"value": 9}


def test_unknown_or_ambiguous_option_names_option_and_stages(routing_plugin: None) -> None:
    with pytest.raises(
        ValueError,
        match=r"^unknown option 'tilt': none of the stages takes it "
        r"\(detector 'test-null', aligner 'ffhq', fill 'mirror-blur'\)$",
    ):
        Pipeline.from_names("test-null", tilt=3.0)
    with pytest.raises(
        ValueError,
        match=r"^ambiguous option 'model': taken by detector 'scrfd', aligner 'test-model-aligner'; "
        r"pass it in detector_options= or aligner_options=$",
    ):
        Pipeline.from_names("scrfd", aligner="test-model-aligner", model="x.onnx")
    explicit = Pipeline.from_names("test-null", aligner="test-model-aligner", aligner_options={"model": "m"})
    assert explicit.aligner.model == "m" and explicit.config.detector_options == {}
