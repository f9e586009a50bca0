"""The ``generated`` fill: outpaint what the photo lacks with a diffengine model of faces.

``faceprep crop SRC DST --fill generated --fill-opt model=RUN`` (or ``--fill-model RUN``;
``Pipeline.from_names(fill="generated", fill_options={"model": RUN})``). RUN is a diffengine run folder
(``diffengine train`` output). Its checkpoint says what it was trained for, and the fill picks the way
to generate by itself:

* an ordinary (unconditional) run: inpainting by sampling with the known pixels held to the photo, with
  RePaint resampling (``jump`` steps per sub-schedule, ``repeats`` passes; see :mod:`diffengine.inpaint`);
* an inpaint run (``diffengine train --task inpaint``): the network sees the masked image and the mask,
  so one normal sampling pass (``steps`` NFE with ``dpmpp2m``) is all it needs.

How one face is filled. The canvas faceprep hands a fill is the photo around the crop square at up to
2× the output resolution, with an outside border. The crop square is resampled from it at the model's
resolution R (antialiased), together with the mask of what lies outside the photo (grown by one model
pixel so partly covered pixels are generated too); the model fills the masked part; the result is
brought back up to the canvas (bicubic) and blended into the outside only, feathered over ``feather``
model pixels from the photo edge (from the photo mirrored at its edge to the generated pixels), so the
edge shows no seam. Inside pixels are never changed.

``init_sigma=S`` (SDEdit, Meng et al. 2022): instead of inventing the region from pure noise, start
from the mirror-blur fill noised to σ = S and let the model correct it in ``steps`` steps; only the
correction (model resolution) is added to the full-resolution mirror-blur, so its detail stays. Small S
keeps the mirror-blur look, large S (→ 80) is the plain generated fill.

Detail to expect: the generated part has the model's resolution. A 64 px model on 256 px crops is ×4:
hair, shoulders and background come out plausible in colour and shape but soft (no detail finer than
~4 output pixels), like a 64 px image upscaled, next to a sharp photo; the feather hides the edge, not
the difference in sharpness. Train at the crop size to get sharp fills.

Deterministic: each face's noise comes from sha256(seed option, source name, face index), so a re-run
or a resumed run gives byte-identical crops (same machine, same torch thread count). Faces whose square
lies wholly inside the photo never run the model (the canvas border outside the square only feeds the
warp's filter support and is mirrored). The faces of one photo that need the model are filled in one
batch (:meth:`GeneratedFill.fill_many`, called by :func:`faceprep.warp.fill_canvases`). The model is
loaded once per process (cached by run folder, checkpoint and device), so each ``faceprep crop`` worker
loads it once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from faceprep import fill as fills
from faceprep.types import FillContext

Pad = tuple[int, int, int, int]
ENV_MODEL = "FACEPREP_FILL_MODEL"  # default model run when none is given (also for `faceprep plugins`)
_MODELS: dict[tuple[str, str, bool, str], Any] = {}  # (run, checkpoint, ema, device) -> InpaintModel

DEFAULT_SAMPLER = "dpmpp2m"
DEFAULT_STEPS = 12
DEFAULT_JUMP = 3  # unconditional runs: RePaint sub-schedules of 3 steps...
DEFAULT_REPEATS = 2  # ...each sampled twice (2 × 12 NFE); inpaint runs ignore both
DEFAULT_FEATHER = 4.0  # model pixels (1.5 left a brightness seam: fill_quality seam 2.6-3.6, 4 gives 1.0-1.1)


def face_seed(source: str, face_index: int, seed: int = 0) -> int:
    """The 63-bit seed of one face: sha256 of (seed, source name, face index)."""
    digest = hashlib.sha256(
        f"{int(seed)}\x00{source}\x00{int(face_index)}".encode("utf-8", "surrogateescape")
    )
    return int.from_bytes(digest.digest()[:8], "big") & (2**63 - 1)


def _checkpoint_key(run: Path) -> str:
    from diffengine.checkpoint import latest_checkpoint

    ckpt_dir = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    found = latest_checkpoint(ckpt_dir) if not (ckpt_dir / "state.pt").is_file() else ckpt_dir
    return str(found)


def load_model(run: str | os.PathLike[str], *, use_ema: bool = True, device: str = "cpu") -> Any:
    """The :class:`diffengine.inpaint.InpaintModel` of ``run``, loaded once per process.

    Raises ValueError naming the run and the reason when it is missing, damaged or not a diffengine run,
    and when torch / diffengine cannot be imported."""
    path = Path(run).expanduser()
    try:
        from diffengine.checkpoint import CheckpointError
        from diffengine.inpaint import load_inpaint_model
    except ImportError as exc:  # pragma: no cover - diffengine ships with faceprep
        raise ValueError(f"generated fill: cannot import diffengine ({exc})") from exc
    if not path.is_dir():
        raise ValueError(
            f"generated fill: model run {path} does not exist (expected a diffengine run folder)"
        )
    key = (str(path.resolve()), _checkpoint_key(path), use_ema, str(device))
    if key not in _MODELS:
        try:
            _MODELS[key] = load_inpaint_model(path, use_ema=use_ema, device=device)
        except (CheckpointError, OSError, KeyError, ValueError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise ValueError(f"generated fill: cannot load model run {path}: {reason}") from exc
    return _MODELS[key]


def unavailable_reason(model: str | os.PathLike[str] | None = None) -> str | None:
    """Why the generated fill cannot run with ``model`` (default: ``$FACEPREP_FILL_MODEL``), or None."""
    try:
        import diffengine.inpaint  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        return f"torch / diffengine cannot be imported ({exc})"
    model = model if model is not None else os.environ.get(ENV_MODEL) or None
    if model is None:
        return f"needs a diffengine run: --fill-model RUN or --fill-opt model=RUN (or ${ENV_MODEL})"
    try:
        load_model(model)
    except ValueError as exc:
        return str(exc).removeprefix("generated fill: ")
    return None


def _sample_square(
    image: torch.Tensor, corners: np.ndarray, res: int, mode: str = "bilinear"
) -> torch.Tensor:
    """(C, res, res) samples of (C, H, W) ``image`` at the pixel centres of the square ``corners``
    ((4, 2) in image pixel coordinates, Quad order), antialiased when that shrinks the image."""
    _, h, w = image.shape
    side = float(np.linalg.norm(corners[3] - corners[0]))
    shrink = side / res
    src = image[None]
    sx = sy = 1.0
    if shrink > 1.25:
        hs, ws = max(2, round(h / shrink)), max(2, round(w / shrink))
        src = F.interpolate(src, size=(hs, ws), mode="bicubic", antialias=True, align_corners=False)
        sx, sy = ws / w, hs / h
    u = (torch.arange(res, dtype=torch.float64) + 0.5) / res
    tl, bl, tr = (torch.from_numpy(corners[i]).to(torch.float64) for i in (0, 1, 3))
    pts = tl + u[None, :, None] * (tr - tl) + u[:, None, None] * (bl - tl)  # (res, res, 2) canvas px
    x = (pts[..., 0] + 0.5) * sx
    y = (pts[..., 1] + 0.5) * sy
    grid = torch.stack([x / src.shape[3] * 2 - 1, y / src.shape[2] * 2 - 1], dim=-1)
    out = F.grid_sample(src, grid[None].to(src.dtype), mode=mode, padding_mode="border", align_corners=False)
    return out[0]


def _square_mask(
    corners: np.ndarray, res: int, shape: tuple[int, int], pad: Pad, grow: int = 1
) -> torch.Tensor:
    """(1, res, res) float: 1 where the model pixel's centre lies outside the photo part of the canvas,
    grown by ``grow`` model pixels (so partly covered pixels count as missing)."""
    h, w = shape
    left, top, right, bottom = pad
    u = (np.arange(res, dtype=np.float64) + 0.5) / res
    tl, bl, tr = corners[0], corners[1], corners[3]
    x = tl[0] + u[None, :] * (tr[0] - tl[0]) + u[:, None] * (bl[0] - tl[0])
    y = tl[1] + u[None, :] * (tr[1] - tl[1]) + u[:, None] * (bl[1] - tl[1])
    out = (x < left - 0.5) | (x > w - right - 0.5) | (y < top - 0.5) | (y > h - bottom - 0.5)
    mask = torch.from_numpy(out).to(torch.float32)[None, None]
    if grow > 0 and bool(mask.any()):
        mask = F.max_pool2d(mask, 2 * grow + 1, stride=1, padding=grow)
    return mask[0]


def _upsample_to_canvas(gen: torch.Tensor, corners: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """(C, H, W): the (C, R, R) square image ``gen`` placed on the canvas (bicubic; border outside)."""
    h, w = shape
    res = gen.shape[-1]
    tl, bl, tr = corners[0], corners[1], corners[3]
    ex, ey = (tr - tl) / res, (bl - tl) / res  # canvas displacement per model pixel along u and v
    inv = np.linalg.inv(np.stack([ex, ey], axis=1))
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    rel = np.stack([xs - tl[0], ys - tl[1]], axis=-1) @ inv.T  # model coords of pixel edges' origin
    grid = torch.from_numpy(rel / res * 2 - 1).to(torch.float32)  # (H, W, 2): (u, v) normalised
    out = F.grid_sample(gen[None], grid[None], mode="bicubic", padding_mode="border", align_corners=False)
    return out[0]


def _outside_distance(shape: tuple[int, int], pad: Pad) -> torch.Tensor:
    """(H, W) distance in pixels from the photo part of the canvas (1 for the first outside pixel)."""
    h, w = shape
    left, top, right, bottom = pad
    x = torch.arange(w, dtype=torch.float32)
    y = torch.arange(h, dtype=torch.float32)
    dx = torch.maximum(left - x, x - (w - 1 - right)).clamp(min=0)
    dy = torch.maximum(top - y, y - (h - 1 - bottom)).clamp(min=0)
    return torch.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)


@dataclass(frozen=True)
class _ModelFace:
    """One face of a :meth:`GeneratedFill.fill_many` batch that runs the model."""

    index: int  # in the batch's items
    corners: np.ndarray  # the crop square on the canvas
    guess: torch.Tensor  # canvas the correction is added to (reflect, or mirror-blur with init_sigma)
    mask: torch.Tensor  # (1, R, R): what the model fills
    known: torch.Tensor  # (3, R, R) in [-1, 1]
    init: torch.Tensor  # (3, R, R) in [-1, 1]: the guess at model resolution (used with init_sigma)
    seed: int


class GeneratedFill:
    """Fill the outside of the photo with a diffengine model (see the module docstring)."""

    wants_context = True

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        sampler: str = DEFAULT_SAMPLER,
        steps: int = DEFAULT_STEPS,
        schedule: str = "karras",
        jump: int = DEFAULT_JUMP,
        repeats: int = DEFAULT_REPEATS,
        feather: float = DEFAULT_FEATHER,
        init_sigma: float | None = None,
        seed: int = 0,
        use_ema: bool = True,
        device: str = "cpu",
    ) -> None:
        from diffengine.samplers import DETERMINISTIC, SAMPLERS
        from diffengine.schedules import SCHEDULES

        model = model if model is not None else os.environ.get(ENV_MODEL) or None
        if model is None:
            raise ValueError(
                "generated fill needs a model: --fill-model RUN or --fill-opt model=RUN "
                f"(a diffengine run folder; or set ${ENV_MODEL})"
            )
        if sampler not in SAMPLERS:
            raise ValueError(
                f"generated fill: unknown sampler {sampler!r} (one of {', '.join(sorted(SAMPLERS))})"
            )
        if sampler not in DETERMINISTIC:
            raise ValueError(
                f"generated fill: sampler {sampler!r} draws noise while sampling; use a deterministic one "
                f"({', '.join(sorted(DETERMINISTIC))})"
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"generated fill: unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")
        if init_sigma is not None and not float(init_sigma) > 0:
            raise ValueError(f"generated fill: init_sigma must be > 0, got {init_sigma}")
        if int(steps) < 1 or int(repeats) < 1 or int(jump) < 0 or not float(feather) >= 0:
            raise ValueError(
                f"generated fill: need steps >= 1, repeats >= 1, jump >= 0, feather >= 0; got "
                f"{steps}, {repeats}, {jump}, {feather}"
            )
        self.model_path = str(model)
        self.sampler, self.steps, self.schedule = sampler, int(steps), schedule
        self.jump, self.repeats, self.feather, self.seed = int(jump), int(repeats), float(feather), int(seed)
        self.init_sigma = None if init_sigma is None else float(init_sigma)
        self.model = load_model(model, use_ema=bool(use_ema), device=str(device))  # fails here, not per face
        if self.init_sigma is not None:  # a schedule that cannot start at init_sigma fails here too
            from diffengine.schedules import get_sigmas

            try:
                get_sigmas(schedule, self.steps, self.model.denoiser.formulation, sigma_max=self.init_sigma)
            except ValueError as exc:
                raise ValueError(f"generated fill: init_sigma={self.init_sigma}: {exc}") from None
        self.calls = 0  # faces that ran the model (tests, benchmarks)

    @property
    def resolution(self) -> int:
        return int(self.model.resolution)

    def identity(self) -> dict[str, Any]:
        """What decides this fill's pixels, for the metadata (the per-face ``seed`` is added by
        :meth:`record`)."""
        ident: dict[str, Any] = {
            "fill": "generated",
            "model": str(Path(self.model.run).resolve()),
            "step": int(self.model.step),
            "task": self.model.task,
            "resolution": self.resolution,
            "sampler": self.sampler,
            "steps": self.steps,
            "schedule": self.schedule,
            "feather": self.feather,
        }
        if not self.model.conditioned:
            ident.update(jump=self.jump, repeats=self.repeats)
        if self.init_sigma is not None:
            ident.update(init="mirror-blur", init_sigma=self.init_sigma)
        return ident

    def record(self, source: str, face_index: int) -> dict[str, Any]:
        """The metadata of one face filled by this fill: :meth:`identity` plus its ``seed``."""
        return {**self.identity(), "seed": face_seed(source, face_index, self.seed)}

    def __call__(
        self, canvas: torch.Tensor, pad: Pad, quad_side: float, *, context: FillContext | None = None
    ) -> torch.Tensor:
        return self.fill_many([(canvas, pad, quad_side, context)])[0]

    def fill_many(
        self, items: Sequence[tuple[torch.Tensor, Pad, float, FillContext | None]]
    ) -> list[torch.Tensor]:
        """Fill several canvases ((canvas, pad, quad side, context) each) with one batched model call."""
        res = self.resolution
        out: list[torch.Tensor] = []
        work: list[_ModelFace] = []
        for canvas, pad, quad_side, context in items:
            fills.check_canvas(canvas, pad)
            _, h, w = canvas.shape
            if context is None:  # called directly: the canvas is the square
                corners = np.array([[-0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5], [w - 0.5, -0.5]])
                context = FillContext(corners, max(h, w))
            corners = np.asarray(context.quad, dtype=np.float64)
            base = fills.fill_reflect(canvas, pad)  # what partly covered model pixels and the feather see
            out.append(base)
            mask = _square_mask(corners, res, (h, w), pad)
            if not bool(mask.any()):  # nothing of the square is outside the photo: no model run
                continue
            guess = base  # what the model starts from (init_sigma) and corrects at full resolution
            if self.init_sigma is not None:
                guess = fills.fill_mirror_blur(canvas, pad, quad_side)
            known = _sample_square(base, corners, res).clamp(0, 255) / 127.5 - 1
            init = known if guess is base else _sample_square(guess, corners, res).clamp(0, 255) / 127.5 - 1
            seed = face_seed(context.source, context.face_index, self.seed)
            work.append(_ModelFace(len(out) - 1, corners, guess, mask, known, init, seed))
        if not work:
            return out
        self.calls += len(work)
        from diffengine.inpaint import inpaint

        starts = self.init_sigma is not None
        gens = inpaint(
            self.model, torch.stack([f.known for f in work]), torch.stack([f.mask for f in work]),
            [f.seed for f in work], sampler=self.sampler, steps=self.steps, schedule=self.schedule,
            jump=self.jump, repeats=self.repeats, init_sigma=self.init_sigma,
            init=torch.stack([f.init for f in work]) if starts else None,
        )  # fmt: skip
        for face, gen in zip(work, gens, strict=True):
            canvas, pad = items[face.index][0], items[face.index][1]
            out[face.index] = self._blend(canvas, pad, face, gen, face.init if starts else None)
        return out

    def _blend(
        self, canvas: torch.Tensor, pad: Pad, face: _ModelFace, gen: torch.Tensor, init: torch.Tensor | None
    ) -> torch.Tensor:
        """The generated square brought up to the canvas and feathered into the outside only."""
        _, h, w = canvas.shape
        corners, guess = face.corners, face.guess
        if init is None:
            up = _upsample_to_canvas((gen + 1) * 127.5, corners, (h, w))
        else:  # keep the guess's detail: add only the model's correction, which has the model's resolution
            up = guess + _upsample_to_canvas((gen - init) * 127.5, corners, (h, w))
        up = up.clamp(0, 255)
        side = float(np.linalg.norm(corners[3] - corners[0]))
        feather = self.feather * side / self.resolution  # canvas pixels
        dist = _outside_distance((h, w), pad)
        weight = ((dist - 0.5) / feather).clamp(0, 1) if feather > 0 else (dist > 0).float()
        blended = guess + (up - guess) * weight[None]
        outside = fills.outside_mask(h, w, pad)
        return torch.where(outside[None], blended, canvas)


def describe_available() -> str | None:
    """``StageSpec.available`` of the ``generated`` fill (uses ``$FACEPREP_FILL_MODEL`` if set)."""
    return unavailable_reason(None)


__all__ = ["ENV_MODEL", "GeneratedFill", "face_seed", "load_model", "unavailable_reason"]
