"""Built-in fills: ``mirror-blur`` (FFHQ / CelebA-HQ), ``reflect``, ``edge``, ``constant`` and
``generated`` (a diffengine model outpaints the outside; see :mod:`faceprep.generated_fill`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from faceprep import fill as F
from faceprep.generated_fill import GeneratedFill, describe_available
from faceprep.hookspecs import StageSpec, hookimpl

Pad = tuple[int, int, int, int]


class MirrorBlurFill:
    """FFHQ fill: reflect, Gaussian blur σ = 0.02·quad side, fade toward the median colour."""

    def __call__(self, canvas: torch.Tensor, pad: Pad, quad_side: float) -> torch.Tensor:
        return F.fill_mirror_blur(canvas, pad, quad_side)


class ReflectFill:
    """Mirror the photo at its edge."""

    def __call__(self, canvas: torch.Tensor, pad: Pad, quad_side: float) -> torch.Tensor:
        return F.fill_reflect(canvas, pad)


class EdgeFill:
    """Repeat the photo's edge pixels."""

    def __call__(self, canvas: torch.Tensor, pad: Pad, quad_side: float) -> torch.Tensor:
        return F.fill_edge(canvas, pad)


class ConstantFill:
    """A constant colour (grey level or RGB in 0…255)."""

    def __init__(self, value: float | tuple[float, float, float] = 0.0) -> None:
        values = (value,) if isinstance(value, (int, float)) else tuple(value)
        if len(values) not in (1, 3) or not all(0.0 <= float(v) <= 255.0 for v in values):
            raise ValueError(
                f"constant fill value must be a grey level or RGB triple in 0…255, got {value!r}"
            )
        self.value = value

    def __call__(self, canvas: torch.Tensor, pad: Pad, quad_side: float) -> torch.Tensor:
        return F.fill_constant(canvas, pad, self.value)


@hookimpl
def faceprep_fills() -> Sequence[StageSpec]:
    return [
        StageSpec("mirror-blur", MirrorBlurFill, "FFHQ: reflect, blur σ=0.02·side, fade to median"),
        StageSpec("reflect", ReflectFill, "mirror the photo at its edge"),
        StageSpec("edge", EdgeFill, "repeat the edge pixels"),
        StageSpec("constant", ConstantFill, "a constant colour (option value=, default black)"),
        StageSpec(
            "generated",
            GeneratedFill,
            "outpaint with a diffengine run (option model=RUN)",
            available=describe_available,
        ),
    ]
