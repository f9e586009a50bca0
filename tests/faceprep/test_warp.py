"""extract_face: size validation, filled fraction, anti-aliasing, and equivariance on pixels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from faceprep import plugins
from faceprep.geometry import apply_affine, box_quad, ffhq_quad, invert_affine, similarity, transform_quad
from faceprep.hookspecs import Fill
from faceprep.types import FloatArray, ImageArray, Quad
from faceprep.warp import extract_face, filled_fraction


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Single-threaded torch: the shared 2-core test machine is oversubscribed otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reflect() -> Fill:
    fill: Fill = plugins.create("fill", "reflect")
    return fill


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def render(height: int, width: int, to_pattern: FloatArray) -> ImageArray:
    """A smooth analytic RGB image; pixel (x, y) shows the pattern at ``to_pattern @ (x, y, 1)``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    p = apply_affine(to_pattern, np.stack([x.ravel(), y.ravel()], axis=1))
    u, v = p[:, 0] / 8.0, p[:, 1] / 8.0
    rgb = np.stack(
        [
            128 + 90 * np.sin(u) * np.cos(0.7 * v),
            128 + 90 * np.cos(0.5 * u + 0.9 * v),
            128 + 90 * np.sin(0.8 * u - 0.6 * v + 1),
        ],
        axis=1,
    )
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(height, width, 3)


@pytest.mark.parametrize("size", [63, 1025, 0, -5, 256.0, True, "256"])
def test_output_size_is_validated(size: Any) -> None:  # Any: wrong types on purpose, rejected at run time
    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="64 to 1024"):
        extract_face(image, box_quad((10, 10, 90, 90)), size, reflect())


@pytest.mark.parametrize("size", [64, 97, 1024])
def test_any_size_in_range(size: int) -> None:
    image = render(120, 150, np.eye(2, 3))
    out, frac = extract_face(image, box_quad((20, 10, 120, 110)), size, reflect())
    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and frac == 0.0


def test_bad_image_and_quad_are_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        extract_face(np.zeros((50, 50, 3), np.float32), box_quad((0, 0, 9, 9)), 64, reflect())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        extract_face(np.zeros((50, 50), np.uint8), box_quad((0, 0, 9, 9)), 64, reflect())
    with pytest.raises(ValueError, match="finite"):
        extract_face(np.zeros((50, 50, 3), np.uint8), Quad(np.full((4, 2), np.nan)), 64, reflect())


def test_identity_quad_reproduces_the_image() -> None:
    image = render(96, 96, similarity(20, 1.3, (5, 9)))
    image[::7, ::5] = 255  # sharp detail must survive exactly
    out, frac = extract_face(image, box_quad((-0.5, -0.5, 95.5, 95.5)), 96, reflect())
    np.testing.assert_array_equal(out, image)
    assert frac == 0.0


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((-0.5, -0.5, 199.5, 199.5), 0.0),  # the whole photo
        ((99.5, -0.5, 299.5, 199.5), 0.5),  # half beyond the right edge
        ((-100.5, -100.5, 99.5, 99.5), 0.75),  # a quarter inside, at the top-left corner
    ],
)
def test_filled_fraction_on_constructed_cases(
    box: tuple[float, float, float, float], expected: float
) -> None:
    image = render(200, 200, np.eye(2, 3))
    quad = box_quad(box)
    out, frac = extract_face(image, quad, 128, plugins.create("fill", "mirror-blur"))
    assert frac == pytest.approx(expected, abs=1e-9)
    assert filled_fraction(quad, 128, image.shape) == frac
    assert out.shape == (128, 128, 3)


def test_quad_entirely_outside_the_photo() -> None:
    image = render(200, 200, np.eye(2, 3))
    quad = box_quad((400, 300, 500, 400))
    assert filled_fraction(quad, 128, image.shape) == 1.0
    with pytest.raises(ValueError, match="entirely outside the 200x200 photo"):
        extract_face(image, quad, 128, reflect())


def test_filled_fraction_of_a_rotated_quad_is_its_outside_area() -> None:
    # a 45° square centred on the right edge of a tall photo: half its area lies outside
    quad = transform_quad(box_quad((150, 150, 250, 250)), similarity(45, 1.0, center=(200, 200)))
    quad = Quad(quad.corners - [0.5, 0])  # centre exactly on the edge x = 199.5
    frac = filled_fraction(quad, 512, (1000, 200, 3))
    assert frac == pytest.approx(0.5, abs=0.005)


def test_downscale_is_antialiased() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    out, _ = extract_face(noise, box_quad((-0.5, -0.5, 1023.5, 1023.5)), 128, reflect())
    # 8× reduction averages ~64 pixels: std falls from ~74 to ≲ 10 (point sampling would keep ~74)
    assert out.std() < 12 and abs(out.mean() - 127.5) < 2
    y, x = np.mgrid[0:1024, 0:1024]
    board = np.repeat((((x + y) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    out, _ = extract_face(board, box_quad((-0.5, -0.5, 1023.5, 1023.5)), 128, reflect())
    assert np.abs(out.astype(float) - 127.5).max() < 3


@pytest.mark.parametrize("size", [256, 173])
def test_axis_aligned_matches_pil_lanczos(photos_dir: Path, size: int) -> None:
    path = photos_dir / "face_recognition" / "examples" / "obama.jpg"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    image = np.asarray(Image.open(path).convert("RGB"))
    h, w = image.shape[:2]
    side = min(h, w)
    box = (-0.5, -0.5, side - 0.5, side - 0.5)
    out, _ = extract_face(image, box_quad(box), size, reflect())
    ref = np.asarray(Image.fromarray(image[:side, :side]).resize((size, size), Image.Resampling.LANCZOS))
    assert psnr(out[4:-4, 4:-4], ref[4:-4, 4:-4]) > 35


@settings(max_examples=8, deadline=None)
@given(angle=st.floats(-180, 180), scale=st.floats(0.5, 2.0), tx=st.floats(-30, 30), ty=st.floats(-30, 30))
def test_crop_is_equivariant_under_similarity(angle: float, scale: float, tx: float, ty: float) -> None:
    """Landmarks moved with the photo give the same crop (the pattern is rendered exactly each time)."""
    lm = np.array([[90.0, 95], [130, 92], [110, 115], [95, 140], [128, 138]])
    image = render(220, 220, np.eye(2, 3))
    m = similarity(angle, scale, (tx, ty), center=(110, 110))
    big = int(np.ceil(250 * scale)) + 80  # holds the moved quad (radius < 125·scale + 30) at any angle
    m[:, 2] += (big - 220) / 2
    moved = render(big, big, invert_affine(m))  # the same scene seen through m
    out_a, frac_a = extract_face(image, ffhq_quad(lm), 128, reflect())
    out_b, frac_b = extract_face(moved, ffhq_quad(apply_affine(m, lm)), 128, reflect())
    assert frac_a == 0.0 and frac_b == 0.0
    # ~52 dB when equivariant; moving the landmarks by 1 source pixel gives ~33 dB
    assert psnr(out_a[8:-8, 8:-8], out_b[8:-8, 8:-8]) > 42
