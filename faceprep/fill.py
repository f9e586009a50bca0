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


def _remap(canvas: torch.Tensor, pad: Pad, reflect: bool) -> torch.Tensor:
    left, top, right, bottom = pad
    _, h, w = canvas.shape
    inner = canvas[:, top : h - bottom, left : w - right]
    make = reflect_index if reflect else edge_index
    rows = make(inner.shape[1], top, bottom)
    cols = make(inner.shape[2], left, right)
    return inner.index_select(1, rows).index_select(2, cols)


def fill_reflect(canvas: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Mirror the inside into the outside (edge sample not repeated)."""
    check_canvas(canvas, pad)
    return _remap(canvas, pad, reflect=True) if any(pad) else canvas.clone()


def fill_edge(canvas: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Repeat the outermost inside pixels outwards."""
    check_canvas(canvas, pad)
    return _remap(canvas, pad, reflect=False) if any(pad) else canvas.clone()


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
    widths = [max(p + FFHQ_BORDER * quad_side, FFHQ_MIN_PAD * quad_side, 1.0) for p in pad]
    left, top, right, bottom = pad
    x = torch.arange(width, dtype=torch.float32)
    y = torch.arange(height, dtype=torch.float32)
    mx = torch.maximum((left - x) / widths[0], (x - (width - 1 - right)) / widths[2])
    my = torch.maximum((top - y) / widths[1], (y - (height - 1 - bottom)) / widths[3])
    return torch.maximum(mx[None, :], my[:, None])


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (3, H, W) tensor with reflect borders; large σ runs on a downscaled copy.

    For σ above 2 px the image is box-averaged by ``d = floor(σ / 2)``, blurred with the remaining σ
    (variance of the box removed) and upsampled bilinearly: the result is smooth at that scale, and the
    cost stays near that of a 5σ-wide kernel on a small image.
    """
    if sigma <= 0.3:
        return image.clone()
    x = image[None]
    d = max(1, int(sigma // _MAX_DIRECT_SIGMA))
    d = min(d, max(1, min(image.shape[1], image.shape[2]) // 4))
    if d > 1:
        small = F.avg_pool2d(x, d, ceil_mode=True)
        rest = math.sqrt(max(sigma**2 - (d**2 - 1) / 12.0, 0.25)) / d
    else:
        small, rest = x, sigma
    k = 2 * math.ceil(3.0 * rest) + 1
    k = min(k, 2 * ((min(small.shape[2], small.shape[3]) - 1) // 2) + 1)
    blurred = gaussian_blur2d(small, (k, k), (rest, rest), border_type="reflect") if k >= 3 else small
    if d > 1:
        blurred = F.interpolate(blurred, scale_factor=float(d), mode="bilinear", align_corners=False)
        blurred = blurred[:, :, : image.shape[1], : image.shape[2]]
    return blurred[0]


def fill_mirror_blur(canvas: torch.Tensor, pad: Pad, quad_side: float) -> torch.Tensor:
    """The FFHQ / CelebA-HQ fill: reflect, blur (σ = 0.02·quad_side), fade toward the median colour.

    As in the FFHQ script: ``img += (blur − img)·clip(3·mask + 1, 0, 1)`` then
    ``img += (median − img)·clip(mask, 0, 1)`` with the distance-to-edge ``mask`` of :func:`fade_mask`.
    Unlike the script, pixels inside the photo are never changed (the script also blurs a band of
    width pad/3 just inside the photo edge); outside, where ``mask > 0``, the result is the script's.
    """
    check_canvas(canvas, pad)
    if not any(pad):
        return canvas.clone()
    img = _remap(canvas, pad, reflect=True)
    _, h, w = img.shape
    mask = fade_mask(h, w, pad, quad_side)
    blur = gaussian_blur(img, FFHQ_SIGMA * quad_side)
    img = img + (blur - img) * (mask * 3.0 + 1.0).clamp(0.0, 1.0)
    # The script takes the median of the whole padded image; a strided ~128² sample gives the same colour.
    median = img[:, :: max(1, h // 128), :: max(1, w // 128)].flatten(1).median(dim=1).values
    img = img + (median[:, None, None] - img) * mask.clamp(0.0, 1.0)
    outside = outside_mask(h, w, pad)
    return torch.where(outside, img, canvas)
