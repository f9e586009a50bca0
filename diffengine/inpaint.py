"""Inpainting with diffengine models: fill the masked pixels of an image so they agree with the rest.

Two ways, one entry point (:func:`inpaint`), chosen by the run's task (:func:`load_inpaint_model`):

* ``unconditional`` — any ordinary run. Sampling with the known region held to the image: the denoiser
  is wrapped (:class:`KnownRegionDenoiser`) so that at every evaluation the known pixels of its input
  are the image noised to the current σ (with one fixed noise draw per image, so the known pixels follow
  the same trajectory an ODE solver would give them) and its output there is the image itself. Because
  the wrapper is an ordinary :class:`~diffengine.precond.DenoiseFn`, it works with every sampler of
  :data:`diffengine.samplers.SAMPLERS`, deterministic ones included. RePaint-style resampling
  (Lugmayr et al. 2022) lets the generated part agree with the known one: the schedule is cut into
  sub-schedules of ``jump`` steps; each is sampled, re-noised back to its start (x + √(σ_a² − σ_b²)·ε)
  and sampled again, ``repeats`` times in all (``repeats=1``: no resampling; NFE × ``repeats``).
* ``inpaint`` — a network trained to see the masked image and the mask (``diffengine train DATA --task
  inpaint``): ``cond = inpaint_cond(y, mask)`` = (y·(1 − mask), mask), four
  extra input channels. Sampling is plain sampling of the conditioned denoiser: no resampling, the
  sampler's normal NFE; the known pixels are pasted back at the end.

Masks are (B, 1, H, W) float with 1 where a pixel is missing; images are (B, 3, H, W) in [-1, 1].
Everything random comes from per-image seeds (:func:`inpaint` ``seeds=``), so an image's result does not
depend on what else is in its batch, and a re-run is bit-identical on the same machine and thread count.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from diffengine.checkpoint import CheckpointError, read_tensors, run_weights
from diffengine.config import Preset, config_from_dict, get_preset
from diffengine.networks.unet import UNet
from diffengine.precond import DenoiseFn, Denoiser, make_formulation
from diffengine.samplers import get_sampler
from diffengine.schedules import get_sigmas

Task = Literal["unconditional", "inpaint"]
TASKS: tuple[Task, ...] = ("unconditional", "inpaint")
COND_CHANNELS = 4  # the masked image (3) and the mask (1)

__all__ = [
    "COND_CHANNELS",
    "TASKS",
    "ConditionedDenoiser",
    "InpaintModel",
    "KnownRegionDenoiser",
    "build_inpaint_denoiser",
    "inpaint",
    "inpaint_cond",
    "load_inpaint_model",
    "run_task",
    "sample_known",
]


def inpaint_cond(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The conditioning input of an inpaint network: (y·(1 − mask), mask), (B, 4, H, W)."""
    mask = mask.to(y.dtype)
    return torch.cat([y * (1 - mask), mask], dim=1)


def _check(known: torch.Tensor, mask: torch.Tensor) -> None:
    if known.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != known.shape[0]:
        raise ValueError(
            f"need known (B, C, H, W) and mask (B, 1, H, W), got {tuple(known.shape)}, {tuple(mask.shape)}"
        )
    if mask.shape[-2:] != known.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} and image {tuple(known.shape)} differ in size")


class KnownRegionDenoiser:
    """``D'(x; σ)``: ``denoiser`` with the known pixels held to ``known`` (the replacement method).

    Input: known pixels replaced by ``known + σ·noise``; output: ``known`` there, the denoiser's estimate
    where ``mask`` is 1. ``noise`` is one fixed unit-variance draw per image (default: zeros)."""

    def __init__(
        self,
        denoiser: DenoiseFn,
        known: torch.Tensor,
        mask: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> None:
        _check(known, mask)
        self.denoiser = denoiser
        self.known = known
        self.mask = mask.to(known.dtype)
        self.noise = torch.zeros_like(known) if noise is None else noise.to(known)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, /) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        keep = 1 - self.mask
        x_in = self.mask * x + keep * (self.known + s * self.noise)
        denoised = self.denoiser(x_in, sigma)
        return self.mask * denoised + keep * self.known


class ConditionedDenoiser:
    """``D(x; σ, cond)`` of a conditioned :class:`~diffengine.precond.Denoiser` as a plain DenoiseFn."""

    def __init__(self, denoiser: Denoiser, cond: torch.Tensor) -> None:
        self.denoiser = denoiser
        self.cond = cond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, /) -> torch.Tensor:
        return self.denoiser(x, sigma, self.cond)


def _per_image_noise(shape: tuple[int, ...], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One standard-normal draw per image, each from its own generator (batch-independent)."""
    return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generators])


def sample_known(
    model: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "dpmpp2m",
    *,
    jump: int = 0,
    repeats: int = 1,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Run ``sampler`` along ``sigmas`` from ``x`` (already at σ₀), with RePaint-style resampling.

    ``jump`` steps per sub-schedule (0: the whole schedule, i.e. no resampling); each sub-schedule is
    sampled ``repeats`` times, re-noised back to its first σ in between with noise from ``generators``
    (one per image; required when ``repeats > 1``)."""
    fn = get_sampler(sampler)
    s = sigmas.to(torch.float64)
    n = len(s) - 1
    if repeats < 1 or jump < 0:
        raise ValueError(f"need repeats >= 1 and jump >= 0, got {repeats}, {jump}")
    if repeats == 1 or jump == 0:
        return fn(model, x, sigmas, generator=None)
    if generators is None or len(generators) != x.shape[0]:
        raise ValueError("resampling needs one generator per image")
    for start in range(0, n, jump):
        seg = s[start : min(start + jump, n) + 1]
        for r in range(repeats):
            x = fn(model, x, seg.to(sigmas.dtype), generator=None)
            if r < repeats - 1:
                up = math.sqrt(float(seg[0]) ** 2 - float(seg[-1]) ** 2)
                x = x + up * _per_image_noise(tuple(x.shape), generators).to(x)
    return x


# --- runs ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InpaintModel:
    """A loaded run: its denoiser (eval mode), preset, task, where it came from and its step."""

    denoiser: Denoiser
    preset: Preset
    task: Task
    run: Path
    step: int

    @property
    def resolution(self) -> int:
        return int(self.preset.unet.resolution)

    @property
    def conditioned(self) -> bool:
        return self.task == "inpaint"


def run_task(state: dict[str, Any]) -> Task:
    """The task a checkpoint record says its run was trained for (``unconditional`` if it says none)."""
    train = state.get("train") if isinstance(state.get("train"), dict) else {}
    unet = (state.get("preset") or {}).get("unet") or {}
    task = state.get("task") or (train or {}).get("task")
    if task is None:
        task = "inpaint" if (state.get("cond_channels") or unet.get("cond_channels")) else "unconditional"
    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    return task


def _preset_of(state: dict[str, Any]) -> tuple[Preset, int]:
    """The preset of a record and its network's cond channels (also from records written before
    ``UNetConfig`` had a ``cond_channels`` field)."""
    data = dict(state["preset"])
    unet = dict(data["unet"])
    fields = {f.name for f in dataclasses.fields(get_preset("faces32").unet)}
    cond = int(unet.get("cond_channels") or state.get("cond_channels") or 0)
    if "cond_channels" not in fields:
        unet.pop("cond_channels", None)
    preset: Preset = config_from_dict({**data, "unet": unet})
    if not cond and run_task(state) == "inpaint":
        cond = COND_CHANNELS
    return preset, cond


def build_inpaint_denoiser(preset: Preset, cond_channels: int = COND_CHANNELS) -> Denoiser:
    """A fresh conditioned network (``cond_channels`` extra inputs) in the preset's formulation."""
    formulation = make_formulation(preset.formulation, **preset.formulation_kwargs)
    return Denoiser(UNet(preset.unet, cond_channels=cond_channels), formulation)


def load_inpaint_model(
    run: str | os.PathLike[str], *, use_ema: bool = True, device: torch.device | str = "cpu"
) -> InpaintModel:
    """Load a run's newest intact checkpoint for inpainting; the task comes from the record.

    Raises :class:`~diffengine.checkpoint.CheckpointError` (missing run, damaged files, weights that do
    not fit the recorded network) with a one-line message naming the run."""
    path = Path(run)
    ckpt, weights = run_weights(path, use_ema, ema_fallback=True)
    try:
        preset, cond = _preset_of(ckpt.state)
        task = run_task(ckpt.state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: not a diffengine run record ({exc})") from exc
    formulation = make_formulation(preset.formulation, **preset.formulation_kwargs)
    denoiser = Denoiser(UNet(preset.unet, cond_channels=cond), formulation)
    try:
        denoiser.net.load_state_dict(read_tensors(weights))
    except RuntimeError as exc:
        if isinstance(exc, CheckpointError):
            raise
        first = str(exc).strip().splitlines()[0][:160]
        raise CheckpointError(f"{weights}: weights do not fit the recorded network ({first})") from exc
    return InpaintModel(denoiser.to(device).eval(), preset, task, path, ckpt.step)


@torch.no_grad()
def inpaint(
    model: InpaintModel,
    known: torch.Tensor,
    mask: torch.Tensor,
    seeds: Sequence[int],
    *,
    sampler: str = "dpmpp2m",
    steps: int = 16,
    schedule: str = "karras",
    jump: int = 0,
    repeats: int = 1,
    init: torch.Tensor | None = None,
    init_sigma: float | None = None,
) -> torch.Tensor:
    """Inpaint ``known`` (B, 3, R, R) in [-1, 1] where ``mask`` (B, 1, R, R) is 1, at the model's R.

    ``seeds`` (one per image) fix the starting noise, the known region's noise and the resampling noise.
    ``jump``/``repeats``: RePaint resampling for unconditional runs (ignored by inpaint runs, which need
    none). ``init``/``init_sigma``: start from ``init`` (B, 3, R, R; e.g. a classical fill) noised to
    ``init_sigma`` instead of from pure noise at σ_max (SDEdit, Meng et al. 2022): the model then
    corrects the guess rather than inventing the region, with ``steps`` steps from ``init_sigma``.
    Returns (B, 3, R, R) float32 in [-1, 1] equal to ``known`` where ``mask`` is 0."""
    _check(known, mask)
    if (init is None) != (init_sigma is None):
        raise ValueError("init and init_sigma go together")
    if init is not None and init.shape != known.shape:
        raise ValueError(f"init {tuple(init.shape)} must have the shape of known {tuple(known.shape)}")
    if len(seeds) != known.shape[0]:
        raise ValueError(f"need one seed per image: {len(seeds)} seeds for {known.shape[0]} images")
    res = model.resolution
    if known.shape[-2:] != (res, res):
        raise ValueError(f"images must be {res}x{res} for this model, got {tuple(known.shape[-2:])}")
    device = next(model.denoiser.parameters()).device
    known = known.to(device, torch.float32)
    mask = mask.to(device, torch.float32)
    gens = [torch.Generator().manual_seed(int(seed) % (2**63)) for seed in seeds]
    start = _per_image_noise(tuple(known.shape), gens).to(device)
    formulation = model.denoiser.formulation
    sigmas = get_sigmas(schedule, steps, formulation, sigma_max=init_sigma).to(torch.float32).to(device)
    x0 = start * sigmas[0]
    if init is not None:
        x0 = x0 + init.to(device, torch.float32)
    if model.conditioned:
        fn: DenoiseFn = ConditionedDenoiser(model.denoiser, inpaint_cond(known, mask))
        x = get_sampler(sampler)(fn, x0, sigmas, generator=None)
    else:
        fn = KnownRegionDenoiser(model.denoiser, known, mask, start)
        x = sample_known(fn, x0, sigmas, sampler, jump=jump, repeats=repeats, generators=gens)
    return (mask * x.float().clamp(-1, 1) + (1 - mask) * known).cpu()
