"""Frozen configuration dataclasses and the named presets ``faces32`` … ``faces256``.

A :class:`Preset` bundles the network shape (:class:`UNetConfig`) with the training hyper-parameters
that go with it. Presets are plain data: ``config_to_dict`` / ``config_from_dict`` turn them into JSON
for checkpoints and back, so a run can always rebuild the exact network it saved.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

NoiseEmbedding = Literal["positional", "fourier"]
Precision = Literal["auto", "bf16", "fp32", "fp16"]

# The one default way to sample, used by ``diffengine sample`` / ``eval``, the in-training KID and the
# preview grids (through a run's preset). iPNDM (order up to 4) has the smallest error against the exact
# Gaussian-mixture ODE of every solver at 10 and 20 NFE (bench/solver_error.py: 0.20x Euler's error at
# 10 NFE and 0.09x at 20 NFE in 2-D); 20 steps are 20 network evaluations.
DEFAULT_SAMPLER = "ipndm"
DEFAULT_SAMPLE_STEPS = 20
DEFAULT_SCHEDULE = "karras"


@dataclass(frozen=True)
class UNetConfig:
    """Shape of an ADM/EDM-style UNet.

    ``attn_resolutions`` are feature-map sizes in pixels (e.g. ``(16, 8)``); the UNet has one level per
    entry of ``channel_mult``, halving the resolution between levels. ``embed_dim`` defaults to
    ``4 * model_channels``. ``noise_embedding`` ``positional`` (EDM's DDPM++/ADM choice) handles both
    c_noise ranges in use (EDM's ln(σ)/4 and the VP timestep index 0…999); ``fourier`` uses random
    frequencies of standard deviation ``fourier_scale`` and suits only small c_noise ranges.
    """

    resolution: int = 32
    in_channels: int = 3
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    head_dim: int = 64
    dropout: float = 0.0
    num_groups: int = 32
    embed_dim: int | None = None
    noise_embedding: NoiseEmbedding = "positional"
    fourier_scale: float = 1.0
    checkpointing: bool = False  # gradient checkpointing of residual blocks (saves activation memory)
    cond_channels: int = 0  # extra input channels a conditioned network sees (inpainting: 4)

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if levels == 0:
            raise ValueError("UNetConfig.channel_mult must have at least one level")
        if self.resolution % 2 ** (levels - 1):
            raise ValueError(
                f"UNetConfig.resolution {self.resolution} must be divisible by 2**{levels - 1} "
                f"for {levels} levels (channel_mult={self.channel_mult})"
            )
        for level, mult in enumerate(self.channel_mult):
            ch = self.model_channels * mult
            if ch % self.num_groups:
                raise ValueError(f"channels {ch} are not divisible by num_groups={self.num_groups}")
            has_attn = self.resolution >> level in self.attn_resolutions or level == levels - 1  # mid block
            if has_attn and ch % self.head_dim:
                raise ValueError(
                    f"channels {ch} (attention at level {level}) are not divisible by "
                    f"head_dim={self.head_dim}"
                )
        if self.noise_embedding not in ("positional", "fourier"):
            raise ValueError(
                f"noise_embedding must be 'positional' or 'fourier', not {self.noise_embedding!r}"
            )

    @property
    def emb_channels(self) -> int:
        return self.embed_dim if self.embed_dim is not None else 4 * self.model_channels


@dataclass(frozen=True)
class Preset:
    """Network + training hyper-parameters that work together for one resolution.

    EMA follows EDM: a half-life measured in images (``ema_half_life_kimg`` · 1000) that ramps up as
    ``ema_rampup_ratio`` · images seen, so short runs still average over a sensible window.
    ``precision`` ``auto`` means bf16 where the card supports it, fp32 elsewhere (fp16 only when asked
    for); ``diffengine train --precision`` overrides it and the checkpoint records the value used.
    ``sampler`` / ``sample_steps`` / ``schedule``: how this preset's runs are sampled unless told
    otherwise (``sample``, ``eval``, in-training KID, preview grids).
    """

    name: str
    unet: UNetConfig
    batch_size: int
    lr: float
    warmup_steps: int = 1000
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_half_life_kimg: float = 500.0
    ema_rampup_ratio: float | None = 0.05
    formulation: str = "edm"
    formulation_kwargs: dict[str, float] = field(default_factory=dict)
    precision: Precision = "auto"
    sampler: str = DEFAULT_SAMPLER
    sample_steps: int = DEFAULT_SAMPLE_STEPS
    schedule: str = DEFAULT_SCHEDULE


def _small_faces(resolution: int, channel_mult: tuple[int, ...], name: str | None = None) -> Preset:
    """A ~4-5M-parameter preset for a CPU budget: 32 channels at full resolution, attention at 8 px.

    A short warm-up matters in a ~1500-step budget: on 2 CPU cores (~60 images/s at 32 px) the loss
    reached 0.26 after 300 steps with lr 1e-3 / 50 warm-up steps, vs 0.46 after 175 with 5e-4 / 200.
    """
    unet = UNetConfig(
        resolution=resolution,
        model_channels=32,
        channel_mult=channel_mult,
        num_res_blocks=2,
        attn_resolutions=(8,),
        head_dim=32,
        num_groups=16,
    )
    return Preset(
        name=name or f"faces{resolution}", unet=unet, batch_size=32, lr=1e-3, warmup_steps=50,
        ema_half_life_kimg=50.0,
    )  # fmt: skip


def _checkpointed_faces(
    resolution: int,
    model_channels: int,
    channel_mult: tuple[int, ...],
    batch_size: int,
    lr: float,
    warmup: int,
) -> Preset:
    """A 64-256 px preset sized for a 6 GB fp32 card: two residual blocks per level, attention at 16 and
    8 px, dropout 0.1 and gradient checkpointing (on big cards turn it off for ~30% more speed)."""
    unet = UNetConfig(
        resolution=resolution,
        model_channels=model_channels,
        channel_mult=channel_mult,
        num_res_blocks=2,
        attn_resolutions=(16, 8),
        dropout=0.1,
        checkpointing=True,
    )
    return Preset(name=f"faces{resolution}", unet=unet, batch_size=batch_size, lr=lr, warmup_steps=warmup)


PRESETS: dict[str, Preset] = {
    # 4.1M parameters, ~100 GFLOP per training step at batch 32 (narrow 32-px level, wide 8-px level):
    # 2.7x cheaper than channels 64 x (1, 2, 2), so ~2.7x more steps in a 15-minute CPU budget.
    "faces32": _small_faces(32, (1, 2, 4)),
    # faces32's recipe one level deeper for 64 px on a CPU or a small card: 4.8M parameters, no dropout
    # or checkpointing, ~4x faces32's FLOPs per image (the extra 64-px level is only 32 channels wide).
    "faces64-small": _small_faces(64, (1, 2, 2, 4), name="faces64-small"),
    # GTX-1060 class (6 GB, fp32), 40M parameters. Estimated from the tensors autograd saves: 270 MiB per
    # image without checkpointing, 49 MiB with, so batch 32 needs checkpointing to fit (~1.5 GiB of
    # activations + 0.75 GiB weights/grads/Adam/EMA).
    "faces64": _checkpointed_faces(64, 128, (1, 2, 2, 2), batch_size=32, lr=2e-4, warmup=1000),
    # 59M parameters; with checkpointing ~150 MiB of saved activations per image (2.3 GiB at batch 16).
    "faces128": _checkpointed_faces(128, 128, (1, 1, 2, 2, 3), batch_size=16, lr=1e-4, warmup=2000),
    # 77M parameters; with checkpointing ~360 MiB per image: 2.8 GiB at batch 8 + 1.4 GiB state (6 GB card).
    "faces256": _checkpointed_faces(256, 64, (1, 2, 2, 4, 4, 8), batch_size=8, lr=1e-4, warmup=2000),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ``KeyError`` listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None


def config_to_dict(config: Preset | UNetConfig) -> dict[str, Any]:
    """JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected some of {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if hint is UNetConfig and isinstance(value, dict):
            value = _from_dict(UNetConfig, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], cls: type[Preset] | type[UNetConfig] = Preset) -> Any:
    """Inverse of :func:`config_to_dict`: a ``Preset`` (default) or ``UNetConfig``."""
    return _from_dict(cls, data)
