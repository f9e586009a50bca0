"""Inception feature extractor: pinned weights, NVIDIA's resize and scaling, TorchScript vs eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffengine.data import decode_image
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
