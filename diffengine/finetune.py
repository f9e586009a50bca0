"""Start a run from another run's weights (``diffengine train DATA --init-from RUN``).

The usual use: a user has an unconditional run and wants the inpainting model faceprep's generated fill
prefers (``--task inpaint``) without training one from scratch. The networks must be the same apart
from the conditioning input; the first convolution of a conditioned network takes the 4 channels of
:func:`diffengine.inpaint.inpaint_cond` after the image's, and their weights start at zero, so at step 0
the new network *is* the old one (it ignores the condition) and learns to use it, as Stable Diffusion's
inpainting model was made from the text-to-image one. The EMA weights of the source are used when it
has them (they are the better model). Only a fresh run is initialised: ``--resume`` continues from
the run's own checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffengine.checkpoint import CheckpointError, read_tensors, run_weights
from diffengine.config import UNetConfig, config_to_dict

FIRST_CONV = "conv_in.weight"


@dataclass(frozen=True)
class StartWeights:
    """Where a run's first weights came from (recorded in its checkpoints as ``init_from``)."""

    run: str
    step: int
    weights: str  # "ema.safetensors" or "model.safetensors"


def _network_differences(source: dict[str, object], target: dict[str, object]) -> list[str]:
    keys = (set(source) | set(target)) - {"cond_channels"}
    return sorted(k for k in keys if source.get(k) != target.get(k))


def widen_first_conv(weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
    """Give ``weights``' first convolution the input channels of ``target``'s, the new ones zero."""
    have, want = weights[FIRST_CONV], target[FIRST_CONV]
    if have.shape == want.shape:
        return
    if have.shape[0] != want.shape[0] or have.shape[2:] != want.shape[2:] or have.shape[1] > want.shape[1]:
        raise ValueError(
            f"first convolution {tuple(have.shape)} cannot become {tuple(want.shape)} "
            "(only conditioning inputs can be added)"
        )
    wide = torch.zeros_like(want)
    wide[:, : have.shape[1]] = have.to(want.dtype)
    weights[FIRST_CONV] = wide


def load_start_weights(source: str | os.PathLike[str], net: nn.Module, unet: UNetConfig) -> StartWeights:
    """Load the newest intact weights of run ``source`` into ``net`` (a UNet built from ``unet``).

    Raises ValueError, naming the run and the reason, when the run is missing or damaged or its network
    differs from ``unet`` in anything but the conditioning input."""
    path = Path(source)
    try:
        ckpt, file = run_weights(path, ema_fallback=True)
        recorded = dict(ckpt.state["preset"]["unet"])
        weights = read_tensors(file)
    except (CheckpointError, KeyError, TypeError) as exc:
        raise ValueError(f"--init-from {path}: {' '.join(str(exc).split())}") from exc
    differ = _network_differences(recorded, config_to_dict(unet))
    if differ:
        raise ValueError(
            f"--init-from {ckpt.path}: its network differs from this run's in {', '.join(differ)} "
            "(use the same --preset and --unet options)"
        )
    widen_first_conv(weights, net.state_dict())
    net.load_state_dict(weights)
    return StartWeights(str(path.resolve()), ckpt.step, file.name)


__all__ = ["StartWeights", "load_start_weights", "widen_first_conv"]
