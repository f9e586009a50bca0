"""The ``generated`` fill (a diffengine model outpaints what the photo lacks) and ``refill``.

Tiny diffengine runs are trained for a few steps here (an unconditional one through the training loop,
an inpaint one through ``diffengine train --task inpaint``'s loop), on eight UTKFace faces."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffengine.inpaint import Task
from faceprep import plugins
from faceprep.cli import main
from faceprep.fill import outside_mask
from faceprep.generated_fill import GeneratedFill, face_seed
from faceprep.imageio import load_image
from faceprep.pipeline import Pipeline
from faceprep.refill import JOURNAL, refill
from faceprep.types import FillContext, Quad
from faceprep.warp import extract_face

PORTRAIT = "face_recognition/examples/obama.jpg"
TINY_UNET = {
    "resolution": 16,
    "model_channels": 32,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (),
    "num_groups": 8,
    "head_dim": 16,
}
FAST: dict[str, Any] = {"steps": 2, "repeats": 1}  # fill options that keep the tests quick


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def faces_zip(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = shared_dir / "data" / "utkface"
    path = tmp_path_factory.mktemp("faces") / "eight.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(p.name for p in folder.iterdir())[:8]:
            zf.write(folder / name, name)
    return path


def _train(data: Path, out: Path, task: Task = "unconditional", **unet: Any) -> Path:
    from diffengine.train import TrainConfig, train

    cfg = TrainConfig(
        data=str(data), out=str(out), preset="faces32", max_steps=3, batch_size=4, log_every=1,
        sample_every=10**6, ckpt_every=10**6, num_samples=2, progress=False, unet={**TINY_UNET, **unet},
        task=task,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(cfg)
    return out


@pytest.fixture(scope="module")
def uncond_run(faces_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(faces_zip, tmp_path_factory.mktemp("runs") / "uncond16")


@pytest.fixture(scope="module")
def uncond32_run(faces_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(faces_zip, tmp_path_factory.mktemp("runs") / "uncond32", resolution=32)


@pytest.fixture(scope="module")
def inpaint_run(faces_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(faces_zip, tmp_path_factory.mktemp("runs") / "inpaint16", task="inpaint")


@pytest.fixture(scope="module")
def cut_photos(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SRC with three cuts of the portrait: the face near the left, top and right edge."""
    src = tmp_path_factory.mktemp("src")
    image = load_image(photos_dir / PORTRAIT)
    h, w = image.shape[:2]
    cuts = {
        "left.png": image[:, int(0.36 * w) :],
        "top.png": image[int(0.15 * h) :, :],
        "right.png": image[:, : int(0.62 * w)],
    }
    for name, pixels in cuts.items():
        Image.fromarray(np.ascontiguousarray(pixels)).save(src / name)
    return src


# --- the fill contract --------------------------------------------------------------------------------


class Spy:
    """Wraps a fill and keeps what it saw and returned."""

    wants_context = True

    def __init__(self, inner: GeneratedFill) -> None:
        self.inner = inner
        self.seen: list[tuple[torch.Tensor, tuple[int, int, int, int], torch.Tensor]] = []

    def __call__(
        self, canvas: torch.Tensor, pad: Any, quad_side: float, *, context: FillContext | None = None
    ) -> torch.Tensor:
        out = self.inner(canvas, pad, quad_side, context=context)
        self.seen.append((canvas.clone(), tuple(pad), out))
        return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(24, 70),
    w=st.integers(24, 70),
    cx=st.floats(0.0, 1.0),
    cy=st.floats(0.0, 1.0),
    side=st.floats(0.4, 1.4),
    angle=st.floats(-40, 40),
    seed=st.integers(0, 2**16),
)
def test_only_outside_pixels_change(
    uncond_run: Path, h: int, w: int, cx: float, cy: float, side: float, angle: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    s = side * min(h, w)
    a = np.radians(angle)
    ex, ey = np.array([np.cos(a), np.sin(a)]) * s, np.array([-np.sin(a), np.cos(a)]) * s
    c = np.array([cx * (w - 1), cy * (h - 1)])
    tl = c - ex / 2 - ey / 2
    quad = Quad(np.stack([tl, tl + ey, tl + ex + ey, tl + ex]))
    spy = Spy(GeneratedFill(uncond_run, **FAST))
    out, _ = extract_face(image, quad, 64, spy, source="p.jpg", face_index=seed % 3)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    if not spy.seen:
        return
    canvas, pad, filled_canvas = spy.seen[0]
    inside = ~outside_mask(canvas.shape[1], canvas.shape[2], pad)
    assert torch.equal(filled_canvas[:, inside], canvas[:, inside])  # not one inside value changes
    assert filled_canvas.isfinite().all() and filled_canvas.min() >= 0 and filled_canvas.max() <= 255
    # and the crop equals another fill's wherever it samples the photo away from its edge
    other, _ = extract_face(image, quad, 64, plugins.create("fill", "constant", value=128))
    from faceprep.geometry import output_to_source

    m = output_to_source(quad, 64)
    u = np.arange(64, dtype=np.float64)
    x = m[0, 0] * u[None, :] + m[0, 1] * u[:, None] + m[0, 2]
    y = m[1, 0] * u[None, :] + m[1, 1] * u[:, None] + m[1, 2]
    margin = 3.0 * max(1.0, quad.side / 64) + 2
    deep = (x > margin) & (x < w - 1 - margin) & (y > margin) & (y < h - 1 - margin)
    assert np.array_equal(out[deep], other[deep])


def test_face_inside_the_photo_skips_the_model(uncond_run: Path) -> None:
    image = np.full((80, 80, 3), 90, dtype=np.uint8)
    fill = GeneratedFill(uncond_run, **FAST)
    quad = Quad(np.array([[10.0, 10.0], [10.0, 70.0], [70.0, 70.0], [70.0, 10.0]]))  # canvas margin only
    _, filled = extract_face(image, quad, 64, fill)
    assert filled == 0 and fill.calls == 0
    shifted = Quad(quad.corners - 15)
    _, filled = extract_face(image, shifted, 64, fill)
    assert filled > 0 and fill.calls == 1


def test_same_seed_gives_identical_crops(uncond_run: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    quad = Quad(np.array([[-12.0, 5.0], [-12.0, 45.0], [28.0, 45.0], [28.0, 5.0]]))
    a, _ = extract_face(image, quad, 64, GeneratedFill(uncond_run, **FAST), source="a.jpg", face_index=0)
    b, _ = extract_face(image, quad, 64, GeneratedFill(uncond_run, **FAST), source="a.jpg", face_index=0)
    c, _ = extract_face(image, quad, 64, GeneratedFill(uncond_run, **FAST), source="a.jpg", face_index=1)
    d, _ = extract_face(
        image, quad, 64, GeneratedFill(uncond_run, seed=5, **FAST), source="a.jpg", face_index=0
    )
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert face_seed("a.jpg", 0) == face_seed("a.jpg", 0) != face_seed("a.jpg", 1)


def test_faces_of_one_photo_share_one_batched_model_call(
    uncond_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffengine.inpaint as inpainting
    from faceprep.warp import face_canvas, fill_canvases, warp_canvas

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    quads = [
        Quad(np.array([[-12.0, 5.0], [-12.0, 45.0], [28.0, 45.0], [28.0, 5.0]])),  # off the left edge
        Quad(np.array([[60.0, -10.0], [60.0, 30.0], [100.0, 30.0], [100.0, -10.0]])),  # off the top right
        Quad(np.array([[30.0, 15.0], [30.0, 45.0], [60.0, 45.0], [60.0, 15.0]])),  # inside: no model run
    ]
    one_by_one = [
        extract_face(image, q, 64, GeneratedFill(uncond_run, **FAST), source="p.jpg", face_index=i)[0]
        for i, q in enumerate(quads)
    ]
    calls: list[int] = []
    real = inpainting.inpaint

    def counting(model: Any, known: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(known.shape[0])
        return real(model, known, *args, **kwargs)

    monkeypatch.setattr(inpainting, "inpaint", counting)
    fill = GeneratedFill(uncond_run, **FAST)
    faces = [face_canvas(image, q, 64, source="p.jpg", face_index=i) for i, q in enumerate(quads)]
    batched = [warp_canvas(f, c) for f, c in zip(faces, fill_canvases(fill, faces), strict=True)]
    assert calls == [2] and fill.calls == 2  # the two faces that need the model, in one batch
    for a, b in zip(batched, one_by_one, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # a face does not depend on its batch
    assert np.array_equal(batched[2], one_by_one[2])


@pytest.mark.parametrize("run_name", ["uncond_run", "inpaint_run"])
def test_init_sigma_starts_from_mirror_blur_and_keeps_its_detail(run_name: str, request: Any) -> None:
    run = request.getfixturevalue(run_name)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    quad = Quad(np.array([[-20.0, 4.0], [-20.0, 52.0], [28.0, 52.0], [28.0, 4.0]]))  # 40% outside
    mirror, filled = extract_face(image, quad, 64, plugins.create("fill", "mirror-blur"))
    assert filled > 0.3
    near_fill = GeneratedFill(run, init_sigma=0.003, **FAST)
    near, _ = extract_face(image, quad, 64, near_fill, source="a.jpg")
    far, _ = extract_face(image, quad, 64, GeneratedFill(run, init_sigma=60.0, **FAST), source="a.jpg")
    # σ ≈ 0: the model has nothing to correct, so the crop is the mirror-blur crop (up to rounding)
    assert np.abs(near.astype(int) - mirror.astype(int)).max() <= 2
    black, _ = extract_face(image, quad, 64, plugins.create("fill", "constant", value=0))
    white, _ = extract_face(image, quad, 64, plugins.create("fill", "constant", value=255))
    outside = (white.astype(int) - black.astype(int)).max(axis=2) > 128  # wholly outside the photo
    assert np.abs(far[outside].astype(int) - mirror[outside].astype(int)).mean() > 3  # σ = 60 repaints
    assert near_fill.identity()["init"] == "mirror-blur" and near_fill.identity()["init_sigma"] == 0.003
    assert "init_sigma" not in GeneratedFill(run, **FAST).identity()
    with pytest.raises(ValueError, match="init_sigma must be > 0"):
        GeneratedFill(run, init_sigma=0.0)
    with pytest.raises(ValueError, match=r"init_sigma=1\.0: schedule 'vp' is a fixed timestep table"):
        GeneratedFill(run, init_sigma=1.0, schedule="vp")


@pytest.mark.parametrize("run_name", ["uncond_run", "uncond32_run", "inpaint_run"])
def test_library_pipeline_end_to_end(
    run_name: str, request: pytest.FixtureRequest, cut_photos: Path, scrfd_model: Path
) -> None:
    run = request.getfixturevalue(run_name)
    pipe = Pipeline.from_names(
        detector="scrfd", fill="generated", size=64, fill_options={"model": str(run), **FAST},
        detector_options={"model": str(scrfd_model), "num_threads": 1},
    )  # fmt: skip
    crops = pipe(load_image(cut_photos / "left.png"), source="left.png")
    assert crops and crops[0].filled_fraction > 0.05
    assert pipe.fill.calls >= 1
    rec = crops[0].record()["fill"]
    assert rec["fill"] == "generated" and rec["model"] == str(Path(run).resolve())
    assert rec["step"] == 3 and rec["sampler"] == "dpmpp2m" and rec["steps"] == 2
    assert rec["seed"] == face_seed("left.png", crops[0].face_index)
    assert rec["task"] == ("inpaint" if run_name == "inpaint_run" else "unconditional")
    assert rec["resolution"] == (32 if run_name == "uncond32_run" else 16)
    again = Pipeline.from_names(
        detector="scrfd", fill="generated", size=64, fill_options={"model": str(run), **FAST},
        detector_options={"model": str(scrfd_model), "num_threads": 1},
    )(load_image(cut_photos / "left.png"), source="left.png")  # fmt: skip
    assert np.array_equal(again[0].image, crops[0].image)
    mirror = Pipeline.from_names(
        detector="scrfd", fill="mirror-blur", size=64,
        detector_options={"model": str(scrfd_model), "num_threads": 1},
    )(load_image(cut_photos / "left.png"), source="left.png")  # fmt: skip
    assert "fill" not in mirror[0].record()  # built-in fills record nothing new
    assert not np.array_equal(mirror[0].image, crops[0].image)


def test_missing_or_corrupt_model_is_a_clear_error(uncond_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a model"):
        plugins.create("fill", "generated")
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"{missing}.*does not exist"):
        plugins.create("fill", "generated", model=str(missing))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(uncond_run, corrupt)
    for weights in corrupt.glob("checkpoints/step_*/*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"cannot load model run {corrupt}") as info:
        plugins.create("fill", "generated", model=str(corrupt))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="deterministic"):
        plugins.create("fill", "generated", model=str(uncond_run), sampler="euler_ancestral")


def test_plugins_lists_generated_as_unavailable_without_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEPREP_FILL_MODEL", raising=False)
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith("generated"))
    assert "unavailable" in lines[row] and "needs a diffengine run" in lines[row + 1]


# --- the CLI ---------------------------------------------------------------------------------------------


def _crop(src: Path, dst: Path, scrfd_model: Path, *extra: str) -> Any:
    args = ["crop", str(src), str(dst), "--size", "64", "--detector", "scrfd", "--model", str(scrfd_model)]
    keep_all = ["--min-blur", "off", "--max-filled", "off"]  # tiny 64 px crops of cut photos
    return CliRunner().invoke(main, [*args, "--workers", "1", *keep_all, *extra])


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("run_name", ["uncond_run", "inpaint_run"])
def test_cli_crop_with_generated_fill(
    run_name: str, request: pytest.FixtureRequest, cut_photos: Path, scrfd_model: Path, tmp_path: Path
) -> None:
    run = request.getfixturevalue(run_name)
    dst = tmp_path / "out"
    fast = [f"--fill-opt={k}={v}" for k, v in FAST.items()]
    result = _crop(cut_photos, dst, scrfd_model, "--fill", "generated", "--fill-opt", f"model={run}", *fast)
    assert result.exit_code == 0, result.output
    meta = _jsonl(dst / "metadata.jsonl")
    assert len(meta) == 3
    for rec in meta:
        assert rec["fill"]["model"] == str(Path(run).resolve()) and rec["fill"]["step"] == 3
        assert rec["fill"]["seed"] == face_seed(rec["source"], rec["face_index"])


def test_cli_missing_model_fails_before_any_photo(
    cut_photos: Path, scrfd_model: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out"
    result = _crop(
        cut_photos, dst, scrfd_model, "--fill", "generated", "--fill-opt", f"model={tmp_path / 'nope'}"
    )
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}" in result.output and "does not exist" in result.output
    assert not (dst / "metadata.jsonl").exists()


def test_cli_fill_model_option(
    inpaint_run: Path, cut_photos: Path, scrfd_model: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out"
    result = _crop(cut_photos, dst, scrfd_model, "--fill", "generated", "--fill-model", str(inpaint_run))
    assert result.exit_code == 0, result.output
    assert all(rec["fill"]["task"] == "inpaint" for rec in _jsonl(dst / "metadata.jsonl"))
    bad = _crop(
        cut_photos, tmp_path / "bad", scrfd_model, "--fill", "generated", "--fill-model", str(tmp_path)
    )
    assert bad.exit_code == 2 and str(tmp_path) in bad.output


def test_cli_refill(uncond_run: Path, cut_photos: Path, scrfd_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    assert _crop(cut_photos, dst, scrfd_model).exit_code == 0  # mirror-blur first
    before = {
        rec["file_name"]: (dst / rec["file_name"]).read_bytes() for rec in _jsonl(dst / "metadata.jsonl")
    }
    result = CliRunner().invoke(
        main, ["refill", str(dst), "--fill-model", str(uncond_run), "--min-filled", "0.01"]
    )
    assert result.exit_code == 0, result.output
    after = _jsonl(dst / "metadata.jsonl")
    filled = [rec for rec in after if rec["filled_fraction"] > 0.01]
    assert filled and all(rec["fill"]["model"] == str(uncond_run.resolve()) for rec in filled)
    assert all((dst / rec["file_name"]).read_bytes() != before[rec["file_name"]] for rec in filled)
    no_model = CliRunner().invoke(main, ["refill", str(dst)])
    assert no_model.exit_code == 2 and "Traceback" not in no_model.output


# --- refill ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror_dataset(cut_photos: Path, scrfd_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("datasets") / "mirror"
    result = _crop(cut_photos, dst, scrfd_model)
    assert result.exit_code == 0, result.output
    return dst


def _crops(dst: Path) -> dict[str, bytes]:
    return {rec["file_name"]: (dst / rec["file_name"]).read_bytes() for rec in _jsonl(dst / "metadata.jsonl")}


def test_refill_remakes_filled_crops_and_records_the_fill(
    mirror_dataset: Path, inpaint_run: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "ds"
    shutil.copytree(mirror_dataset, dst)
    before = _crops(dst)
    meta_before = {r["file_name"]: r for r in _jsonl(dst / "metadata.jsonl")}
    threshold = sorted(r["filled_fraction"] for r in meta_before.values())[0]  # the least filled stays
    summary = refill(dst, "generated", fill_options={"model": str(inpaint_run), **FAST}, min_filled=threshold)
    assert summary.refilled == 2 and summary.below == 1
    after = _crops(dst)
    for rec in _jsonl(dst / "metadata.jsonl"):
        name = rec["file_name"]
        if meta_before[name]["filled_fraction"] <= threshold:
            assert after[name] == before[name] and "fill" not in rec
        else:
            assert after[name] != before[name]
            assert rec["fill"]["task"] == "inpaint" and rec["fill"]["seed"] == face_seed(
                rec["source"], rec["face_index"]
            )
            assert {k: v for k, v in rec.items() if k != "fill"} == meta_before[name]
    assert not (dst / JOURNAL).exists() and not list(dst.glob(".faceprep-tmp-*"))
    assert json.loads((dst / "faceprep.json").read_text())["refilled"][-1]["faces"] == 2
    again = refill(dst, "generated", fill_options={"model": str(inpaint_run), **FAST}, min_filled=threshold)
    assert again.refilled == 0 and again.already == 2 and _crops(dst) == after


def _dying_replace(real: Any, kill_at: int) -> Any:
    """``os.replace`` that raises (a simulated kill) at its ``kill_at``-th call."""
    calls = [0]

    def replace(a: Any, b: Any) -> None:
        calls[0] += 1
        if calls[0] == kill_at:
            raise OSError("killed")
        real(a, b)

    return replace


def test_refill_is_atomic_and_resumable(
    mirror_dataset: Path, uncond_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"model": str(uncond_run), **FAST}
    reference = tmp_path / "reference"
    shutil.copytree(mirror_dataset, reference)
    refill(reference, "generated", fill_options=options, min_filled=0.0)
    final = _crops(reference)
    old = _crops(mirror_dataset)
    real_replace = os.replace
    for kill_at in (1, 2, 3, 4):  # the 4th os.replace is metadata.jsonl's
        dst = tmp_path / f"killed{kill_at}"
        shutil.copytree(mirror_dataset, dst)
        monkeypatch.setattr(os, "replace", _dying_replace(real_replace, kill_at))
        with pytest.raises(OSError, match="killed"):
            refill(dst, "generated", fill_options=options, min_filled=0.0)
        monkeypatch.setattr(os, "replace", real_replace)
        now = _crops(dst)
        assert all(now[name] in (old[name], final[name]) for name in now)  # old or new, never partial
        assert sum(now[n] == final[n] for n in now) == min(kill_at - 1, 3)
        summary = refill(dst, "generated", fill_options=options, min_filled=0.0)
        assert summary.refilled == 3 - min(kill_at - 1, 3)
        assert _crops(dst) == final
        assert _jsonl(dst / "metadata.jsonl") == _jsonl(reference / "metadata.jsonl")
        assert not (dst / JOURNAL).exists()


def test_refill_refuses_what_it_cannot_do(mirror_dataset: Path, uncond_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a faceprep dataset"):
        refill(tmp_path, "generated", fill_options={"model": str(uncond_run)})
    dst = tmp_path / "ds"
    shutil.copytree(mirror_dataset, dst)
    with pytest.raises(ValueError, match="does not exist"):
        refill(dst, "generated", fill_options={"model": str(tmp_path / "nope")})
    from faceprep.refill import RefillError

    with pytest.raises(RefillError, match="nothing changed"):
        refill(
            dst,
            "generated",
            fill_options={"model": str(uncond_run)},
            src=tmp_path / "elsewhere",
            min_filled=0.0,
        )
    assert _crops(dst) == _crops(mirror_dataset)


def test_direct_call_without_context(uncond_run: Path) -> None:
    fill = GeneratedFill(uncond_run, **FAST)
    canvas = torch.rand(3, 30, 30) * 255
    out = fill(canvas, (4, 0, 0, 6), 30.0)
    inside = ~outside_mask(30, 30, (4, 0, 0, 6))
    assert torch.equal(out[:, inside], canvas[:, inside]) and fill.calls == 1
    assert dataclasses.is_dataclass(FillContext)
