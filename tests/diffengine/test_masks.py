"""The inpainting masks: coverage, shape, and the same geometry as faceprep's out-of-photo regions."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffengine.masks import outside_mask, random_masks, random_outside_mask
from faceprep.geometry import output_to_source
from faceprep.types import Quad


def _runs(line: torch.Tensor) -> int:
    """Number of contiguous runs of True in a 1-D bool tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.bool), line, torch.zeros(1, dtype=torch.bool)])
    return int((padded[1:] & ~padded[:-1]).sum())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.sampled_from([16, 32, 64]), cap=st.floats(0.05, 1.0))
def test_random_mask_coverage_and_shape(seed: int, size: int, cap: float) -> None:
    mask = random_outside_mask(size, torch.Generator().manual_seed(seed), max_fraction=cap)
    assert mask.shape == (size, size) and mask.dtype == torch.bool
    fraction = float(mask.float().mean())
    assert fraction <= cap
    kept = ~mask
    # the photo is a convex region (a turned rectangle), so what is kept is one run in every row and
    # column, and every missing pixel lies between that run and the square's border
    assert all(_runs(kept[i]) <= 1 and _runs(kept[:, i]) <= 1 for i in range(size))
    assert bool(kept.any())


def test_random_masks_cover_the_range_and_are_seeded() -> None:
    masks = random_masks(400, 32, torch.Generator().manual_seed(0))
    again = random_masks(400, 32, torch.Generator().manual_seed(0))
    assert masks.shape == (400, 1, 32, 32) and torch.equal(masks, again)
    fractions = masks.mean(dim=(1, 2, 3))
    assert float(fractions.max()) <= 0.5
    assert 0.05 < float((fractions == 0).float().mean()) < 0.2  # some faces lie wholly inside
    assert float((fractions > 0.3).float().mean()) > 0.05  # and some are missing a lot
    sides = [
        sum(int(edge.any()) for edge in (m[0, :, 0], m[0, 0, :], m[0, :, -1], m[0, -1, :])) for m in masks
    ]
    # square edges touched: a corner 2, a band 3 (its side and the two beside it), an L or U shape 4
    assert {2, 3, 4} <= set(sides)


@settings(max_examples=40, deadline=None)
@given(
    angle=st.floats(-40, 40),
    cx=st.floats(-20, 120),
    cy=st.floats(-20, 100),
    side=st.floats(40, 160),
)
def test_outside_mask_is_faceprep_geometry(angle: float, cx: float, cy: float, side: float) -> None:
    """A photo W×H and an oriented crop square: the mask equals the crop pixels whose source position
    faceprep finds outside the photo (faceprep.geometry.output_to_source)."""
    w, h, size = 100, 80, 32
    t = math.radians(angle)
    ex = np.array([math.cos(t), math.sin(t)]) * side
    ey = np.array([-math.sin(t), math.cos(t)]) * side
    tl = np.array([cx, cy]) - ex / 2 - ey / 2
    quad = Quad(np.stack([tl, tl + ey, tl + ex + ey, tl + ex]))
    a = output_to_source(quad, size)
    u = np.arange(size, dtype=np.float64)
    x = a[0, 0] * u[None, :] + a[0, 1] * u[:, None] + a[0, 2]
    y = a[1, 0] * u[None, :] + a[1, 1] * u[:, None] + a[1, 2]
    truth = (x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)
    cuts = (
        (-0.5 - cx) / side + 0.5,
        (-0.5 - cy) / side + 0.5,
        0.5 - (w - 0.5 - cx) / side,
        0.5 - (h - 0.5 - cy) / side,
    )
    mask = outside_mask(size, angle_deg=-angle, cuts=cuts).numpy()
    assert (mask != truth).mean() < 0.002  # equal but for pixel centres on an edge (round-off)
