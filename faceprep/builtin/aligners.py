"""Built-in aligners: ``ffhq`` (the FFHQ / CelebA-HQ oriented square) and ``box`` (axis-aligned square
on the detection box)."""

from __future__ import annotations

from collections.abc import Sequence

from faceprep.geometry import box_quad, ffhq_quad
from faceprep.hookspecs import StageSpec, hookimpl
from faceprep.types import Detection, Quad


def _check_scale_shift(scale: float, shift: tuple[float, float]) -> tuple[float, float]:
    if not float(scale) > 0:
        raise ValueError(f"align scale must be positive, got {scale!r}")
    sh = tuple(float(v) for v in shift)
    if len(sh) != 2:
        raise ValueError(f"align shift must be (dx, dy), got {shift!r}")
    return sh[0], sh[1]


class FfhqAligner:
    """The FFHQ square from the 5 landmarks; ``rotate=False`` keeps it axis-aligned, ``scale`` multiplies
    the side, ``shift`` moves the centre in units of the half side along the square's axes."""

    def __init__(
        self, rotate: bool = True, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)
    ) -> None:
        self.shift = _check_scale_shift(scale, shift)
        self.rotate = bool(rotate)
        self.scale = float(scale)

    def align(self, detection: Detection, image_shape: tuple[int, int]) -> Quad:
        return ffhq_quad(detection.landmarks, rotate=self.rotate, scale=self.scale, shift=self.shift)


class BoxAligner:
    """An axis-aligned square on the detection box: side = ``scale`` × the longer box side.

    ``rotate`` is accepted so that every aligner takes the same options; a box has no orientation.
    """

    def __init__(
        self, rotate: bool = False, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)
    ) -> None:
        self.shift = _check_scale_shift(scale, shift)
        self.scale = float(scale)

    def align(self, detection: Detection, image_shape: tuple[int, int]) -> Quad:
        return box_quad(detection.box, scale=self.scale, shift=self.shift)


@hookimpl
def faceprep_aligners() -> Sequence[StageSpec]:
    return [
        StageSpec("ffhq", FfhqAligner, "FFHQ / CelebA-HQ oriented square from eyes and mouth"),
        StageSpec("box", BoxAligner, "axis-aligned square on the detection box (scale, shift)"),
    ]
