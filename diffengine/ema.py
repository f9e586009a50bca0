"""Exponential moving average of weights with EDM's half-life-in-images schedule.

After each optimiser step on ``batch_size`` images the average moves by β = 0.5^(batch / h), where the
half-life h = ``half_life_kimg``·1000 images, capped at ``rampup_ratio`` · images seen so far (EDM's
ramp-up: early in training the average covers only the recent past, so short runs still benefit).
Buffers (e.g. the noise-embedding frequencies) are copied, not averaged.
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

    def beta(self) -> float:
        """Decay of the next update (after ``nimg`` has been advanced)."""
        half_life = self.half_life_kimg * 1000
        if self.rampup_ratio is not None:
            half_life = min(half_life, self.nimg * self.rampup_ratio)
        return 0.5 ** (self.batch_size / max(half_life, 1e-8))

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
