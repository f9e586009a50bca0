"""Fills: only outside pixels change; each fill does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kornia.filters import gaussian_blur2d

from faceprep import fill as F
from faceprep import plugins

FILLS = ("mirror-blur", "reflect", "edge", "constant")


@st.composite
def canvases(draw: st.DrawFn) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    h, w = draw(st.integers(2, 40)), draw(st.integers(2, 40))
    top = draw(st.integers(0, h - 1))
    bottom = draw(st.integers(0, h - 1 - top))
    left = draw(st.integers(0, w - 1))
    right = draw(st.integers(0, w - 1 - left))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.rand(3, h, w, generator=gen) * 255, (left, top, right, bottom)


@settings(max_examples=60, deadline=None)
@given(case=canvases(), name=st.sampled_from(FILLS), side=st.floats(1, 400))
def test_fill_touches_only_outside_pixels(
    case: tuple[torch.Tensor, tuple[int, int, int, int]], name: str, side: float
) -> None:
    canvas, pad = case
    before = canvas.clone()
    out = plugins.create("fill", name)(canvas, pad, side)
    assert out.shape == canvas.shape and out.dtype == torch.float32
    assert torch.equal(canvas, before), "the input canvas must not be modified"
    left, top, right, bottom = pad
    h, w = canvas.shape[1:]
    assert torch.equal(
        out[:, top : h - bottom, left : w - right], canvas[:, top : h - bottom, left : w - right]
    )
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 255


@settings(max_examples=60, deadline=None)
@given(case=canvases())
def test_reflect_and_edge_match_numpy_pad(case: tuple[torch.Tensor, tuple[int, int, int, int]]) -> None:
    canvas, (left, top, right, bottom) = case
    h, w = canvas.shape[1:]
    inner = canvas[:, top : h - bottom, left : w - right].numpy()
    pad_width = ((0, 0), (top, bottom), (left, right))
    for fn, expected in (
        (F.fill_reflect, np.pad(inner, pad_width, mode="reflect")),
        (F.fill_edge, np.pad(inner, pad_width, mode="edge")),
    ):
        np.testing.assert_array_equal(fn(canvas, (left, top, right, bottom)).numpy(), expected)


def test_constant_fill_value_and_validation() -> None:
    canvas = torch.full((3, 6, 8), 7.0)
    out = plugins.create("fill", "constant", value=(10.0, 20.0, 30.0))(canvas, (2, 1, 0, 0), 5.0)
    assert out[:, 0, :].tolist() == [[10.0] * 8, [20.0] * 8, [30.0] * 8]
    assert out[:, 3, :2].tolist() == [[10.0] * 2, [20.0] * 2, [30.0] * 2]
    assert torch.all(out[:, 1:, 2:] == 7.0)
    assert torch.all(plugins.create("fill", "constant")(canvas, (2, 1, 0, 0), 5.0)[:, 0] == 0.0)
    with pytest.raises(ValueError, match="0…255"):
        plugins.create("fill", "constant", value=300)


def test_fill_rejects_bad_canvases() -> None:
    with pytest.raises(ValueError, match="no inside pixel"):
        F.fill_reflect(torch.zeros(3, 4, 4), (2, 0, 2, 0))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        F.fill_edge(torch.zeros(4, 4, 3), (1, 0, 0, 0))
    with pytest.raises(ValueError, match="non-negative"):
        F.fill_mirror_blur(torch.zeros(3, 4, 4), (-1, 0, 0, 0), 4.0)


def test_mirror_blur_follows_the_ffhq_recipe() -> None:
    # a flat photo stays flat: blur and median of a constant are that constant
    flat = torch.full((3, 50, 60), 90.0)
    np.testing.assert_allclose(F.fill_mirror_blur(flat, (10, 5, 0, 20), 100.0).numpy(), 90.0, atol=1e-3)
    # a checkerboard photo: the outside is blurred and fades toward the median colour (127.5)
    y, x = torch.meshgrid(torch.arange(120), torch.arange(120), indexing="ij")
    board = (((x // 2 + y // 2) % 2) * 255.0).expand(3, -1, -1).contiguous()
    pad = (40, 0, 0, 0)
    out = F.fill_mirror_blur(board, pad, quad_side=200.0)  # σ = 4 px
    outside = out[:, :, :40]
    assert outside.std() < 0.05 * board.std()
    assert float((outside - 127.5).abs().max()) < 10
    # the fade mask: 1/width at the first outside pixel, growing outwards, <= 0 inside
    mask = F.fade_mask(120, 120, pad, 200.0)
    width = max(40 + 0.1 * 200, 0.3 * 200)
    assert float(mask[0, 39]) == pytest.approx(1 / width)
    assert float(mask[0, 0]) == pytest.approx(40 / width)
    assert float(mask[:, 40:].max()) <= 0


@pytest.mark.parametrize("sigma", [0.8, 2.5, 9.0, 23.0])
def test_gaussian_blur_matches_kornia(sigma: float) -> None:
    gen = torch.Generator().manual_seed(0)
    small = torch.rand(3, 12, 12, generator=gen) * 255
    image = torch.nn.functional.interpolate(small[None], size=(180, 200), mode="bicubic")[0]
    k = 2 * int(np.ceil(3 * sigma)) + 1
    reference = gaussian_blur2d(image[None], (k, k), (sigma, sigma), border_type="reflect")[0]
    err = (F.gaussian_blur(image, sigma) - reference)[:, 20:-20, 20:-20].abs()
    assert float(err.mean()) < 0.02 * float(image.std())


@pytest.mark.parametrize(
    ("pad", "side"), [((37, 0, 55, 80), 600.0), ((0, 30, 0, 0), 1000.0), ((5, 6, 7, 8), 40.0)]
)
def test_mirror_blur_equals_the_full_size_ffhq_formula(pad: tuple[int, int, int, int], side: float) -> None:
    """The fast path (blur on a reduced copy, upsampled only outside) against the script's formula."""
    gen = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, 20, 20, generator=gen) * 255
    canvas = torch.nn.functional.interpolate(small, size=(300, 340), mode="bicubic")[0].clamp(0, 255)
    h, w = canvas.shape[1:]
    img = F.extend(canvas[:, pad[1] : h - pad[3], pad[0] : w - pad[2]], pad, reflect=True)
    mask = F.fade_mask(h, w, pad, side)
    img = img + (F.gaussian_blur(img, 0.02 * side) - img) * (mask * 3 + 1).clamp(0, 1)
    median = img.flatten(1).median(dim=1).values
    expected = img + (median[:, None, None] - img) * mask.clamp(0, 1)
    outside = F.outside_mask(h, w, pad)
    err = (F.fill_mirror_blur(canvas, pad, side) - expected)[:, outside].abs()
    assert float(err.max()) < 1.5 and float(err.mean()) < 0.3
