"""Random "outside the photo" masks for training and testing inpainting, shaped like faceprep's real ones.

A faceprep crop is an oriented square; what falls outside the photo is the part of that square beyond
one or more of the photo's edges, which, seen from the crop, are straight lines at the face's roll
angle. So a mask is drawn the way it arises: a photo rectangle in the crop's frame, turned by a roll
angle, whose 1 to 3 edges cut into the square (a band on one side, a corner, an L or U shape, tilted
when the face was rolled), covering at most ``max_fraction`` of it. ``True`` marks the missing pixels.
"""

from __future__ import annotations

import math

import torch


def outside_mask(
    size: int,
    *,
    angle_deg: float,
    cuts: tuple[float | None, float | None, float | None, float | None],
) -> torch.Tensor:
    """(size, size) bool: pixels beyond the given edges of a photo turned by ``angle_deg``.

    ``cuts`` = (left, top, right, bottom): how far each photo edge reaches into the square, as a
    fraction of its side measured from that side of the square (None: the photo extends past it).
    """
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5  # pixel centres, square centred
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    a = math.radians(angle_deg)
    u = x * math.cos(a) + y * math.sin(a)  # the photo's axes, seen from the crop
    v = -x * math.sin(a) + y * math.cos(a)
    mask = torch.zeros(size, size, dtype=torch.bool)
    left, top, right, bottom = cuts
    if left is not None:
        mask |= u < -0.5 + left
    if top is not None:
        mask |= v < -0.5 + top
    if right is not None:
        mask |= u > 0.5 - right
    if bottom is not None:
        mask |= v > 0.5 - bottom
    return mask


def random_outside_mask(
    size: int,
    generator: torch.Generator,
    *,
    max_fraction: float = 0.5,
    max_angle_deg: float = 30.0,
    p_empty: float = 0.1,
) -> torch.Tensor:
    """One random mask: with probability ``p_empty`` none, else 1-3 cut sides covering ≤ ``max_fraction``.

    Cuts too deep for ``max_fraction`` are made shallower together (so the shape is kept)."""
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))

    if uniform(0, 1) < p_empty:
        return torch.zeros(size, size, dtype=torch.bool)
    angle = uniform(-max_angle_deg, max_angle_deg)
    n_sides = 1 + int(torch.randint(3, (), generator=generator))
    sides = torch.randperm(4, generator=generator)[:n_sides].tolist()
    depth = [uniform(0.02, 0.45) for _ in sides]

    def cut(scale: float) -> torch.Tensor:  # scale 0: every cut edge lies outside the (turned) square
        cuts: list[float | None] = [None, None, None, None]
        for side, d in zip(sides, depth, strict=True):
            cuts[side] = scale * d - (1.0 - scale) * 0.25
        return outside_mask(size, angle_deg=angle, cuts=(cuts[0], cuts[1], cuts[2], cuts[3]))

    mask = cut(1.0)
    if float(mask.float().mean()) <= max_fraction:
        return mask
    lo, hi = 0.0, 1.0  # coverage grows with the depth of the cuts: bisect for the deepest that fits
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(cut(mid).float().mean()) <= max_fraction else (lo, mid)
    return cut(lo)


def random_masks(n: int, size: int, generator: torch.Generator, *, max_fraction: float = 0.5) -> torch.Tensor:
    """(n, 1, size, size) float32 masks, 1 where the pixel is missing."""
    masks = [random_outside_mask(size, generator, max_fraction=max_fraction) for _ in range(n)]
    return torch.stack(masks)[:, None].to(torch.float32)
