"""Generation: load a trained run (EMA weights by default) and turn noise into uint8 images.

``generate`` is a plain function over a :class:`~diffengine.precond.DenoiseFn`, a sampler name and a
σ schedule; ``diffengine sample``, ``diffengine eval``, the in-training KID and the preview grids all
call it, with the run's preset settings (``Preset.sampler`` / ``sample_steps`` / ``schedule``).

On a CUDA device a deterministic sampler's whole loop is replayed from a CUDA graph
(:func:`diffengine.kernels.capture`) once one batch shape recurs often enough to pay for the capture
(:data:`GRAPH_MIN_BATCHES`); everything else, and a capture that fails, runs the eager loop.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from diffengine import kernels
from diffengine.checkpoint import read_tensors, run_weights
from diffengine.config import (
    DEFAULT_SAMPLE_STEPS,
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    Preset,
    config_from_dict,
)
from diffengine.data import to_uint8
from diffengine.networks.unet import UNet
from diffengine.precond import DenoiseFn, Denoiser, Formulation, make_formulation
from diffengine.samplers import DETERMINISTIC, get_sampler
from diffengine.schedules import get_sigmas

# A graph costs the capture's 2 eager warm-up runs plus the capture itself (its CPU side is about one
# eager run where graphs help: small, launch-bound batches), and then saves ~57 % of every later run
# (2.3x on an H200, bench/kernels.py). It pays from the 6th batch of one shape on: so eval (10k
# samples = 157 batches) is graphed, a 64-image preview or ``sample --n 64`` (one batch) is not.
GRAPH_MIN_BATCHES = 6
GRAPH_WARMUP = 2


def build_denoiser(preset: Preset) -> Denoiser:
    """A freshly initialised network inside the preset's formulation."""
    formulation = make_formulation(preset.formulation, **preset.formulation_kwargs)
    return Denoiser(UNet(preset.unet), formulation)


def load_run(
    run_dir: str | os.PathLike[str], use_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[Denoiser, Preset]:
    """The denoiser of a run's latest checkpoint (EMA weights unless ``use_ema`` is False), in eval mode,
    and the preset it was trained with (network shape, formulation, default sampler)."""
    # The record only (every file checked; a damaged newest checkpoint is skipped with a warning):
    # read just the weights used below.
    ckpt, weights = run_weights(run_dir, use_ema)
    preset: Preset = config_from_dict(ckpt.state["preset"])
    denoiser = build_denoiser(preset)
    denoiser.net.load_state_dict(read_tensors(weights))
    return denoiser.to(device).eval(), preset


def _resolution(denoiser: DenoiseFn) -> int:
    config = getattr(getattr(denoiser, "net", None), "config", None)
    if config is None:
        raise ValueError("cannot tell the image resolution of this network: pass resolution=")
    return int(config.resolution)


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Unit-variance starting noise from a CPU generator: reproducible across devices and batch sizes."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def step_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of the noise that ancestral/stochastic samplers add during sampling (``seed + 1``)."""
    return torch.Generator(device).manual_seed(seed + 1)


def sample_from_noise(
    denoiser: DenoiseFn,
    noise: torch.Tensor,
    sampler: str,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run ``sampler`` along ``sigmas`` from unit-variance ``noise`` (scaled to σ₀ here), eagerly."""
    return get_sampler(sampler)(denoiser, noise * sigmas[0], sigmas, generator=generator)


def _use_graph(graph: bool | None, sampler: str, device: torch.device, batches: int) -> bool:
    """Whether a batch shape that occurs ``batches`` times is replayed from a CUDA graph."""
    if graph is None:
        return device.type == "cuda" and sampler in DETERMINISTIC and batches >= GRAPH_MIN_BATCHES
    if graph and device.type != "cuda":
        raise ValueError(f"graph=True needs a CUDA device, got {device}")
    if graph and sampler not in DETERMINISTIC:
        raise ValueError(
            f"graph=True: {sampler} draws noise while sampling; graph one of {sorted(DETERMINISTIC)}"
        )
    return graph


class _BatchSampler:
    """``x₀ -> sample`` for the batches of one ``generate`` call: one CUDA graph per batch shape that
    qualifies (:func:`_use_graph`), the eager loop otherwise or when a capture fails under ``graph=None``."""

    def __init__(
        self,
        denoiser: DenoiseFn,
        sampler: str,
        sigmas: torch.Tensor,
        generator: torch.Generator,
        counts: Counter[tuple[int, ...]],
        graph: bool | None,
        device: torch.device,
    ):
        self.denoiser, self.sampler, self.generator = denoiser, sampler, generator
        self.sigmas = sigmas.to(device)
        self.counts, self.graph, self.device = counts, graph, device
        self.graphs: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor] | None] = {}

    def _graphed(self, shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if shape not in self.graphs:
            runner = None
            if _use_graph(self.graph, self.sampler, self.device, self.counts[shape]):
                try:
                    runner = kernels.capture(
                        get_sampler(self.sampler), self.denoiser, self.sigmas, shape,
                        device=self.device, dtype=torch.float32, graph=True, warmup=GRAPH_WARMUP,
                    )  # fmt: skip
                except RuntimeError as exc:
                    if self.graph:
                        raise
                    warnings.warn(f"CUDA-graph capture failed, sampling eagerly: {exc}", stacklevel=3)
            self.graphs[shape] = runner
        return self.graphs[shape]

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        runner = self._graphed(tuple(x0.shape))
        if runner is not None:
            return runner(x0)
        return get_sampler(self.sampler)(self.denoiser, x0, self.sigmas, generator=self.generator)


def _device_of(denoiser: DenoiseFn) -> torch.device:
    if isinstance(denoiser, nn.Module):
        return next(denoiser.parameters()).device
    return torch.device("cpu")


@torch.no_grad()
def generate(
    denoiser: DenoiseFn,
    n: int,
    sampler: str = DEFAULT_SAMPLER,
    steps: int = DEFAULT_SAMPLE_STEPS,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    schedule: str = DEFAULT_SCHEDULE,
    resolution: int | None = None,
    channels: int = 3,
    *,
    formulation: Formulation | None = None,
    graph: bool | None = None,
) -> torch.Tensor:
    """``n`` images as uint8 (n, C, H, W). The same ``seed`` gives the same initial noise for every
    image index, whatever ``batch_size`` is; a module denoiser is left in the mode it was in.

    ``formulation`` (its σ range) and ``resolution`` default to the denoiser's own (a
    :class:`~diffengine.precond.Denoiser` has both). ``graph``: ``None`` replays deterministic samplers
    from a CUDA graph on CUDA for a batch shape seen at least :data:`GRAPH_MIN_BATCHES` times (eager
    loop otherwise, and if the capture fails); ``True`` graphs every batch shape; ``False`` never.
    """
    if n < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"n, steps and batch_size must be >= 1, got {n}, {steps}, {batch_size}")
    get_sampler(sampler)  # an unknown name fails before any work
    device = torch.device(device) if device is not None else _device_of(denoiser)
    form = formulation if formulation is not None else getattr(denoiser, "formulation", None)
    if form is None:
        raise ValueError("this denoiser has no formulation: pass formulation=")
    res = resolution or _resolution(denoiser)
    sigmas = get_sigmas(schedule, steps, form).to(torch.float32)
    noise = initial_noise((n, channels, res, res), seed)
    starts = range(0, n, batch_size)
    counts: Counter[tuple[int, ...]] = Counter((min(batch_size, n - s), channels, res, res) for s in starts)
    run = _BatchSampler(denoiser, sampler, sigmas, step_generator(seed, device), counts, graph, device)
    was_training = denoiser.training if isinstance(denoiser, nn.Module) else None
    if isinstance(denoiser, nn.Module):
        denoiser.eval()
    out = []
    try:
        for start in starts:
            x0 = noise[start : start + batch_size].to(device) * sigmas[0]
            out.append(to_uint8(run(x0)).cpu())
    finally:
        if isinstance(denoiser, nn.Module) and was_training is not None:
            denoiser.train(was_training)
    return torch.cat(out)


def grid_zoom(size: int, target: int = 96) -> int:
    """Nearest-neighbour zoom that shows a ``size``-px image at about ``target`` px (32 px: 3x; ≥ 96: 1)."""
    return max(1, target // size)


def zoom(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H·factor, W·factor), nearest neighbour (pixels stay sharp squares)."""
    return images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3) if factor > 1 else images


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """(N, C, H, W) uint8 -> one (C, H', W') uint8 image, ``nrow`` images per row (default ≈ √N)."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) uint8 -> PIL RGB image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def save_grid(
    images: torch.Tensor, path: str | os.PathLike[str], nrow: int | None = None, scale: int | None = None
) -> Path:
    """A grid PNG of uint8 images, each zoomed ``scale``× (default :func:`grid_zoom`: 32 px shown at 96)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    factor = scale if scale is not None else grid_zoom(images.shape[-1])
    to_pil(make_grid(zoom(images, factor), nrow)).save(path)
    return path


def save_comparison(
    panels: dict[str, torch.Tensor], path: str | os.PathLike[str], nrow: int | None = None
) -> Path:
    """Grids side by side, each titled (e.g. ``{"raw": ..., "EMA": ...}`` sampled from the same noise,
    so image i of every panel started from the same x₀), zoomed as :func:`save_grid`."""
    from diffengine.plots import side_by_side

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grids = {
        title: to_pil(make_grid(zoom(images, grid_zoom(images.shape[-1])), nrow))
        for title, images in panels.items()
    }
    side_by_side(grids).save(path)
    return path


def save_images(images: torch.Tensor, folder: str | os.PathLike[str], prefix: str = "sample") -> list[Path]:
    """One PNG per image: ``folder/{prefix}_00000.png`` ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{prefix}_{i:05d}.png"
        to_pil(image).save(path)
        paths.append(path)
    return paths
