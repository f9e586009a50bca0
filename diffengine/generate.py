"""Generation: load a trained run (EMA weights by default) and turn noise into uint8 images.

``generate`` is a plain function over a :class:`~diffengine.precond.Denoiser`, a sampler name and a
σ schedule; the CLI's ``sample`` command and the training loop's preview grids both call it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffengine.checkpoint import CheckpointError, load_checkpoint, read_tensors
from diffengine.config import Preset, config_from_dict
from diffengine.data import to_uint8
from diffengine.networks.unet import UNet
from diffengine.precond import Denoiser, make_formulation
from diffengine.samplers import get_sampler
from diffengine.schedules import get_sigmas


def build_denoiser(preset: Preset) -> Denoiser:
    """A freshly initialised network inside the preset's formulation."""
    formulation = make_formulation(preset.formulation, **preset.formulation_kwargs)
    return Denoiser(UNet(preset.unet), formulation)


def load_run(
    run_dir: str | os.PathLike[str], use_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[Denoiser, Preset]:
    """The denoiser of a run's latest checkpoint (EMA weights unless ``use_ema`` is False), in eval mode,
    and the preset it was trained with (network shape, formulation, default sampler)."""
    run = Path(run_dir)
    ckpt_dir = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    # The record only (every file checked; a damaged newest checkpoint is skipped with a warning):
    # read just the weights used below.
    ckpt = load_checkpoint(ckpt_dir, tensors=False)
    preset: Preset = config_from_dict(ckpt.state["preset"])
    weights = ckpt.path / ("ema.safetensors" if use_ema else "model.safetensors")
    if use_ema and not weights.is_file():
        raise CheckpointError(f"{ckpt.path}: no EMA weights saved (use the raw weights: use_ema=False)")
    denoiser = build_denoiser(preset)
    denoiser.net.load_state_dict(read_tensors(weights))
    return denoiser.to(device).eval(), preset


def _resolution(denoiser: Denoiser) -> int:
    config = getattr(denoiser.net, "config", None)
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
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sampler: str,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run ``sampler`` along ``sigmas`` from unit-variance ``noise`` (scaled to σ₀ here); one device."""
    return get_sampler(sampler)(denoiser, noise * sigmas[0], sigmas, generator=generator)


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    n: int,
    sampler: str = "dpmpp2m",
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    schedule: str = "karras",
    resolution: int | None = None,
    channels: int = 3,
) -> torch.Tensor:
    """``n`` images as uint8 (n, C, H, W). The same ``seed`` gives the same initial noise for every
    image index, whatever ``batch_size`` is; the denoiser is left in the mode it was in."""
    if n < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"n, steps and batch_size must be >= 1, got {n}, {steps}, {batch_size}")
    get_sampler(sampler)  # an unknown name fails before any work
    device = torch.device(device) if device is not None else next(denoiser.parameters()).device
    res = resolution or _resolution(denoiser)
    sigmas = get_sigmas(schedule, steps, denoiser.formulation).to(torch.float32)
    noise = initial_noise((n, channels, res, res), seed)
    step_gen = step_generator(seed, device)
    was_training = denoiser.training
    denoiser.eval()
    out = []
    try:
        for start in range(0, n, batch_size):
            batch = noise[start : start + batch_size].to(device)
            x = sample_from_noise(denoiser, batch, sampler, sigmas.to(device), step_gen)
            out.append(to_uint8(x).cpu())
    finally:
        denoiser.train(was_training)
    return torch.cat(out)


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


def save_grid(images: torch.Tensor, path: str | os.PathLike[str], nrow: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(images, nrow)).save(path)
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


def describe(preset: Preset) -> dict[str, Any]:
    """Default sampling settings of a preset (what ``diffengine sample`` uses when not told)."""
    return {"sampler": preset.sampler, "steps": preset.sample_steps, "schedule": preset.schedule}
