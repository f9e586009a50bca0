"""The faceprep plugin API.

A plugin is a module (or object) with functions named like the hooks below, decorated with
``faceprep.hookimpl`` (undecorated functions are not hooks: a plugin without any decorated hook is
skipped with a warning). Built-in stages are plugins too (see ``faceprep.plugins.DEFAULT_PLUGINS``);
third-party packages register through the ``faceprep`` entry-point group::

    # faceprep_mine/plugin.py
    from faceprep import StageSpec, hookimpl

    @hookimpl
    def faceprep_detectors():
        return [StageSpec("mine", MyDetector, "what it is", available=..., priority=5)]

    # pyproject.toml
    [project.entry-points.faceprep]
    mine = "faceprep_mine.plugin"

A plugin that fails to import, or whose hook raises, is skipped with one ``PluginLoadWarning`` line
naming it (``faceprep.plugins.load_failures()``); the other plugins keep working.

Each hook is a *registrar*: it returns a list of named stage specs and is called once when the plugin
manager is built. Names must be unique per kind; a later plugin cannot silently replace an earlier
one (``faceprep.plugins`` raises on a clash).

Stage protocols
---------------
Detector
    ``detect(image) -> list[Detection]`` where ``image`` is an (H, W, 3) uint8 RGB array and the
    detections carry boxes, scores and the 5 landmarks in that image's pixel coordinates. Optional
    class attributes: ``default_min_score`` (the score filter's threshold unless the user sets one;
    0.6 if absent) and ``keypoints_follow_rotation`` (see ``faceprep.rotation``; True if absent).
Aligner
    ``align(detection, image_shape) -> Quad`` returns the oriented crop square in source coordinates.
Fill
    ``fill(canvas, pad, quad_side) -> canvas``: ``canvas`` is a (3, H, W) float32 tensor in [0, 255]
    holding a crop of the photo whose outer ``pad = (left, top, right, bottom)`` pixels lie outside
    the photo (their values are unspecified). It returns a tensor of the same shape in which only
    those outside pixels were set. ``quad_side`` is the crop square's side in canvas pixels (fills
    that scale a blur with the face size use it).

    A fill class that sets ``wants_context = True`` is called with one more keyword argument,
    ``fill(canvas, pad, quad_side, context=FillContext(...))`` (``faceprep.types.FillContext``: the
    crop square's corners in canvas coordinates, the output size, the source name and face index).
    Fills without the attribute are called exactly as above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import torch

    from faceprep.types import Detection, ImageArray, Quad

PROJECT = "faceprep"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Detector(Protocol):
    def detect(self, image: ImageArray) -> list[Detection]: ...


class Aligner(Protocol):
    def align(self, detection: Detection, image_shape: tuple[int, int]) -> Quad: ...


class Fill(Protocol):
    def __call__(
        self, canvas: torch.Tensor, pad: tuple[int, int, int, int], quad_side: float
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class StageSpec:
    """A named stage a plugin offers.

    factory: called with keyword options (e.g. ``model=``, ``score_threshold=`` for detectors;
    ``rotate=``, ``scale=``, ``shift=`` for aligners; none for fills) and returns the stage object.
    Its declared parameters are its options: ``Pipeline.from_names`` routes each option to the one
    stage whose factory names it (``faceprep.plugins.accepts_option``). Optional for detectors:
    ``num_threads: int = 0`` (threads of its runtime, 0: the runtime's default); ``faceprep crop``
    passes ``num_threads=1`` to each worker process's detector only if the factory declares it (or
    takes ``**kwargs``). The factory may raise ``ValueError`` (bad option, unusable weights file) or
    ``RuntimeError`` with a one-line message; the CLI shows it as a usage error.
    available: optional zero-argument callable returning ``None`` when the stage can run here, or a
    one-line reason why it cannot (missing weights, missing optional package). ``auto`` choices use it.
    priority: among available stages of a kind, ``auto`` picks the highest.
    """

    name: str
    factory: Callable[..., Any]
    description: str
    available: Callable[[], str | None] | None = None
    priority: int = 0


@hookspec
def faceprep_detectors() -> Sequence[StageSpec]:  # type: ignore[empty-body]
    """Return the face detectors this plugin provides (each factory returns a ``Detector``)."""


@hookspec
def faceprep_aligners() -> Sequence[StageSpec]:  # type: ignore[empty-body]
    """Return the aligners this plugin provides (each factory returns an ``Aligner``)."""


@hookspec
def faceprep_fills() -> Sequence[StageSpec]:  # type: ignore[empty-body]
    """Return the fills this plugin provides (each factory returns a ``Fill``)."""
