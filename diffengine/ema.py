"""Exponential moving average of weights with EDM's half-life-in-images schedule and its warm-up.

After each optimiser step on ``batch_size`` images the average moves by β = 0.5^(batch / h), where the
half-life h = min(``half_life_kimg``·1000, ``rampup_ratio``·images seen) (EDM's ramp-up). The ramp is
the warm-up: after n images the average spans at most the last 5 % of them, so the random initial
weights are forgotten as fast as training moves on (without it a 50 kimg half-life keeps a short run's
EMA at the initialisation: the "EMA samples stay noise" failure). ``half_life()`` is the current
effective length, which the training log records. Buffers (e.g. noise-embedding frequencies) are
copied, not averaged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` / DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


class EMA:
    """EMA copy of a model: ``update(model)`` after every optimiser step; sample with ``.module``."""

    def __init__(
        self, model: nn.Module, *, half_life_kimg: float, batch_size: int, rampup_ratio: float | None = 0.05
    ):
        if half_life_kimg <= 0 or batch_size <= 0:
            raise ValueError("half_life_kimg and batch_size must be positive")
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.half_life_kimg = half_life_kimg
        self.batch_size = batch_size
        self.rampup_ratio = rampup_ratio
        self.nimg = 0

    def half_life(self) -> float:
        """The effective half-life in images now: the configured one, or less during the ramp-up."""
        half_life = self.half_life_kimg * 1000
        if self.rampup_ratio is not None:
            half_life = min(half_life, self.nimg * self.rampup_ratio)
        return half_life

    def beta(self) -> float:
        """Decay of the next update (after ``nimg`` has been advanced)."""
        return 0.5 ** (self.batch_size / max(self.half_life(), 1e-8))

    def describe(self) -> dict[str, float]:
        """The averaging window as the log records it: half-life in images and in optimiser steps."""
        half_life = self.half_life()
        return {
            "ema_half_life_img": round(half_life, 1),
            "ema_half_life_steps": round(half_life / self.batch_size, 2),
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.nimg += self.batch_size
        beta = self.beta()
        src = unwrap(model)
        ema_params: list[torch.Tensor] = list(self.module.parameters())
        params = [p.detach().to(e.dtype) for e, p in zip(ema_params, src.parameters(), strict=True)]
        torch._foreach_lerp_(ema_params, params, 1 - beta)  # one fused launch, not one per tensor
        for b_ema, b in zip(self.module.buffers(), src.buffers(), strict=True):
            b_ema.copy_(b)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the averaged ones."""
        unwrap(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "module": self.module.state_dict(),
            "nimg": self.nimg,
            "half_life_kimg": self.half_life_kimg,
            "batch_size": self.batch_size,
            "rampup_ratio": self.rampup_ratio,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.nimg = int(state["nimg"])
        self.half_life_kimg = float(state.get("half_life_kimg", self.half_life_kimg))
        self.batch_size = int(state.get("batch_size", self.batch_size))
        self.rampup_ratio = state.get("rampup_ratio", self.rampup_ratio)
