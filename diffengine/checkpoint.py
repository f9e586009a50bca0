"""Checkpoints: safetensors for the tensors, a small ``state.pt`` for the rest, written atomically.

Layout of a run directory::

    RUN/checkpoints/step_00001000/model.safetensors      network weights
                                  ema.safetensors        EMA weights
                                  optimizer.safetensors  AdamW moments and step counts
                                  state.pt               step, config, RNG states, data order, param groups
    RUN/checkpoints/latest                               text file: name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place (``os.replace``); ``latest`` is
then swapped atomically, so a crash at any moment leaves the previous checkpoint intact. Only the newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or incomplete."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: tensors (on CPU) and the state record."""

    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


# ---------------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> dict[str, Any]:
    """Global RNG states: torch CPU, CUDA (all devices), python ``random``, numpy."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": _to_plain(random.getstate()),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))


def _to_plain(value: Any) -> Any:
    return [_to_plain(v) for v in value] if isinstance(value, tuple) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------------------
# Optimizer state <-> flat tensors


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into flat tensors ``state.{param}.{name}`` and the rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in rest["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


# ---------------------------------------------------------------------------------------------------
# Save / load


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    step: int,
    model: dict[str, torch.Tensor],
    state: dict[str, Any],
    ema: dict[str, torch.Tensor] | None = None,
    optimizer: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write ``ckpt_dir/step_XXXXXXXX`` atomically, point ``latest`` at it, prune to ``keep``."""
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file(_cpu(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_cpu(ema), str(tmp / "ema.safetensors"))
        record = dict(state, step=step)
        if optimizer is not None:
            tensors, rest = optimizer_to_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            record["optimizer"] = rest
        torch.save(record, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(root / LATEST, final.name)
    _prune(root, keep)
    return final


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder, or None when there is none."""
    root = Path(ckpt_dir)
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text(encoding="utf-8").strip()
        if (path / "state.pt").is_file():
            return path
    steps = sorted(p for p in root.glob("step_*") if (p / "state.pt").is_file()) if root.is_dir() else []
    return steps[-1] if steps else None


def load_checkpoint(path: str | os.PathLike[str], tensors: bool = True) -> Checkpoint:
    """Load a checkpoint folder (or a run's ``checkpoints`` folder: its latest). Tensors land on CPU."""
    path = Path(path)
    if not (path / "state.pt").is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint found (expected step_*/state.pt)")
        path = found
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    if not tensors:
        return Checkpoint(path, {}, None, None, state)
    model = load_file(str(path / "model.safetensors"))
    ema_file = path / "ema.safetensors"
    ema = load_file(str(ema_file)) if ema_file.is_file() else None
    optimizer = None
    opt_file = path / "optimizer.safetensors"
    if opt_file.is_file() and "optimizer" in state:
        optimizer = optimizer_from_tensors(load_file(str(opt_file)), state["optimizer"])
    return Checkpoint(path, model, ema, optimizer, state)
