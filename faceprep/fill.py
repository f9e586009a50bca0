"""Pure fills for the part of a crop canvas that lies outside the photo.

Every function takes ``canvas`` (3, H, W) float32 in [0, 255] and ``pad = (left, top, right, bottom)``,
the widths of the canvas border that lies outside the photo; the inside is ``canvas[:, top:H-bottom,
left:W-right]``. Each returns a new tensor equal to ``canvas`` inside and filled outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

Pad = tuple[int, int, int, int]

# The FFHQ script pads every side by at least 0.3·qsize and measures the fade from a crop border of
# 0.1·qsize beyond the quad; the blur is σ = 0.02·qsize.
FFHQ_MIN_PAD = 0.3
FFHQ_BORDER = 0.1
FFHQ_SIGMA = 0.02
_MAX_DIRECT_SIGMA = 2.0


def check_canvas(canvas: torch.Tensor, pad: Pad) -> None:
    """Raise ValueError unless ``canvas`` is (3, H, W) floating and ``pad`` leaves an inside pixel."""
    if canvas.ndim != 3 or canvas.shape[0] != 3 or not canvas.is_floating_point():
        raise ValueError(f"canvas must be a (3, H, W) float tensor, got {tuple(canvas.shape)} {canvas.dtype}")
    left, top, right, bottom = pad
    if min(pad) < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    _, h, w = canvas.shape
    if left + right >= w or top + bottom >= h:
        raise ValueError(f"pad {pad} leaves no inside pixel in a {h}x{w} canvas")


def outside_mask(height: int, width: int, pad: Pad) -> torch.Tensor:
    """(H, W) bool, True where the pixel lies in the padded (outside) border."""
    left, top, right, bottom = pad
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[top : height - bottom, left : width - right] = False
    return mask


def reflect_index(n: int, before: int, after: int) -> torch.Tensor:
    """Indices into a length-``n`` axis extended by ``before``/``after`` with mirror reflection that
    does not repeat the edge sample (numpy ``reflect``), repeating the pattern for pads longer than n."""
    i = torch.arange(-before, n + after)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - i)


def edge_index(n: int, before: int, after: int) -> torch.Tensor:
    """Indices that repeat the edge sample into the pads."""
    return torch.arange(-before, n + after).clamp(0, n - 1)


def extend(inner: torch.Tensor, pad: Pad, reflect: bool) -> torch.Tensor:
    """``inner`` (C, h, w) grown by ``pad`` with mirror (numpy ``reflect``) or edge extension.

    Uses torch's native padding when it can (reflect needs pads shorter than the side) and an index
    gather, which repeats the mirror pattern for any pad length, otherwise.
    """
    left, top, right, bottom = pad
    _, h, w = inner.shape
    if not reflect:
        return F.pad(inner[None], (left, right, top, bottom), mode="replicate")[0]
    if max(left, right) < w and max(top, bottom) < h:
        return F.pad(inner[None], (left, right, top, bottom), mode="reflect")[0]
    rows = reflect_index(h, top, bottom)
    cols = reflect_index(w, left, right)
    return inner.index_select(1, rows).index_select(2, cols)


def _inner(canvas: torch.Tensor, pad: Pad) -> torch.Tensor:
    left, top, right, bottom = pad
    _, h, w = canvas.shape
    return canvas[:, top : h - bottom, left : w - right]


def fill_reflect(canvas: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Mirror the inside into the outside (edge sample not repeated)."""
    check_canvas(canvas, pad)
    return extend(_inner(canvas, pad), pad, reflect=True) if any(pad) else canvas.clone()


def fill_edge(canvas: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Repeat the outermost inside pixels outwards."""
    check_canvas(canvas, pad)
    return extend(_inner(canvas, pad), pad, reflect=False) if any(pad) else canvas.clone()


def fill_constant(
    canvas: torch.Tensor, pad: Pad, value: float | tuple[float, float, float] = 0.0
) -> torch.Tensor:
    """Set the outside to a constant grey level or RGB colour."""
    check_canvas(canvas, pad)
    out = canvas.clone()
    colour = torch.as_tensor(value, dtype=canvas.dtype).reshape(-1, 1)
    mask = outside_mask(canvas.shape[1], canvas.shape[2], pad)
    out[:, mask] = colour.expand(3, -1) if colour.shape[0] == 3 else colour
    return out


def fade_mask(height: int, width: int, pad: Pad, quad_side: float) -> torch.Tensor:
    """(H, W) FFHQ fade mask: ``max`` over sides of distance-into-the-pad / that side's FFHQ pad width.

    The first outside pixel has distance 1 (the FFHQ script's ``1 - x / pad``); inside pixels are <= 0.
    The FFHQ pad width of a side is ``max(pad + 0.1·quad_side, 0.3·quad_side)``: the script pads by the
    outside extent plus a 0.1·qsize border, and by at least 0.3·qsize.
    """
    my, mx = _fade_axes(height, width, pad, quad_side)
    return torch.maximum(mx[None, :], my[:, None])


def _fade_axes(height: int, width: int, pad: Pad, quad_side: float) -> tuple[torch.Tensor, torch.Tensor]:
    widths = [max(p + FFHQ_BORDER * quad_side, FFHQ_MIN_PAD * quad_side, 1.0) for p in pad]
    left, top, right, bottom = pad
    x = torch.arange(width, dtype=torch.float32)
    y = torch.arange(height, dtype=torch.float32)
    mx = torch.maximum((left - x) / widths[0], (x - (width - 1 - right)) / widths[2])
    my = torch.maximum((top - y) / widths[1], (y - (height - 1 - bottom)) / widths[3])
    return my, mx


def _blur_plan(sigma: float, height: int, width: int) -> tuple[int, float]:
    """Downscale factor d and the σ left to apply after a d×d box average (box variance removed)."""
    d = max(1, min(int(sigma // _MAX_DIRECT_SIGMA), min(height, width) // 4))
    rest = math.sqrt(max(sigma**2 - (d**2 - 1) / 12.0, 0.25)) / d if d > 1 else sigma
    return d, rest


def _direct_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """kornia Gaussian blur (reflect borders) of a (1, C, H, W) tensor, kernel ±3σ clipped to the image."""
    k = min(2 * math.ceil(3.0 * sigma) + 1, 2 * ((min(x.shape[2], x.shape[3]) - 1) // 2) + 1)
    return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect") if k >= 3 else x


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (C, H, W) tensor with reflect borders; large σ runs on a downscaled copy.

    For σ above 2 px the image is box-averaged by ``d = floor(σ / 2)``, blurred with the remaining σ
    and upsampled bilinearly: smooth at that scale, and about as cheap as a small kernel.
    """
    if sigma <= 0.3:
        return image.clone()
    d, rest = _blur_plan(sigma, image.shape[1], image.shape[2])
    small = F.avg_pool2d(image[None], d, ceil_mode=True) if d > 1 else image[None]
    blurred = _direct_blur(small, rest)
    if d > 1:
        blurred = F.interpolate(blurred, scale_factor=float(d), mode="bilinear", align_corners=False)
    return blurred[0, :, : image.shape[1], : image.shape[2]]


def fill_mirror_blur(canvas: torch.Tensor, pad: Pad, quad_side: float) -> torch.Tensor:
    """The FFHQ / CelebA-HQ fill: reflect, blur (σ = 0.02·quad_side), fade toward the median colour.

    As in the FFHQ script: ``img += (blur − img)·clip(3·mask + 1, 0, 1)`` then
    ``img += (median − img)·clip(mask, 0, 1)`` with the distance-to-edge ``mask`` of :func:`fade_mask`.
    Outside the photo ``mask > 0``, so there the result is ``blur + (median − blur)·clip(mask, 0, 1)``.
    Unlike the script, pixels inside the photo are never changed (the script also blurs a band of
    width pad/3 just inside the photo edge).

    Speed: the blur runs on a box-averaged copy (see :func:`gaussian_blur`) and is upsampled only where
    it is used, the outside border; the median is taken at that resolution too (the script takes it over
    the whole padded image at full size).
    """
    check_canvas(canvas, pad)
    if not any(pad):
        return canvas.clone()
    _, h, w = canvas.shape
    img = extend(_inner(canvas, pad), pad, reflect=True)
    d, rest = _blur_plan(FFHQ_SIGMA * quad_side, h, w)
    small = F.avg_pool2d(img[None], d, ceil_mode=True)[0] if d > 1 else img
    blurred = _direct_blur(small[None], rest)[0] if FFHQ_SIGMA * quad_side > 0.3 else small
    small_pad = (round(pad[0] / d), round(pad[1] / d), round(pad[2] / d), round(pad[3] / d))
    mixed = torch.where(outside_mask(small.shape[1], small.shape[2], small_pad), blurred, small)
    sh, sw = small.shape[1], small.shape[2]
    median = mixed[:, :: max(1, sh // 128), :: max(1, sw // 128)].flatten(1).median(dim=1).values
    my, mx = _fade_axes(h, w, pad, quad_side)
    out = canvas.clone()
    for y0, y1, x0, x1 in outside_regions(h, w, pad):
        blur = _upsampled(blurred, d, (y0, x0), y1 - y0, x1 - x0)
        mask = torch.maximum(mx[None, x0:x1], my[y0:y1, None]).clamp_(0.0, 1.0)
        out[:, y0:y1, x0:x1] = blur + (median[:, None, None] - blur) * mask
    return out


def outside_regions(height: int, width: int, pad: Pad) -> list[tuple[int, int, int, int]]:
    """The outside border as up to four disjoint rectangles (y0, y1, x0, x1): top, bottom, left, right."""
    left, top, right, bottom = pad
    regions = [(0, top, 0, width), (height - bottom, height, 0, width)]
    regions += [(top, height - bottom, 0, left), (top, height - bottom, width - right, width)]
    return [r for r in regions if r[1] > r[0] and r[3] > r[2]]


def _upsampled(small: torch.Tensor, d: int, origin: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Rows/cols [origin, origin + size) of the ×d bilinear upsampling of (C, h, w) ``small`` (pixel-centre
    aligned, as ``F.interpolate(scale_factor=d)``), computed from the few small pixels they need."""
    if d == 1:
        return small[:, origin[0] : origin[0] + height, origin[1] : origin[1] + width]
    spans = []
    for start, size, n in ((origin[0], height, small.shape[1]), (origin[1], width, small.shape[2])):
        j0 = max(0, math.floor((start + 0.5) / d - 0.5))
        j1 = min(n, math.ceil((start + size) / d - 0.5) + 1)
        spans.append((j0, j1, start - j0 * d))
    (r0, r1, oy), (c0, c1, ox) = spans
    up = F.interpolate(
        small[None, :, r0:r1, c0:c1], scale_factor=float(d), mode="bilinear", align_corners=False
    )
    return up[0, :, oy : oy + height, ox : ox + width]
