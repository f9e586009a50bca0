"""Checkpoints: safetensors for the tensors, a small ``state.pt`` for the rest, written atomically.

Layout of a run directory::

    RUN/checkpoints/step_00001000/model.safetensors      network weights
                                  ema.safetensors        EMA weights
                                  optimizer.safetensors  AdamW moments and step counts
                                  state.pt               step, config, RNG states, data order, param groups
    RUN/checkpoints/latest                               text file: name of the newest complete checkpoint

A checkpoint is written (and fsynced) into a temporary ``.tmp-*`` folder and renamed into place
(``os.replace``); ``latest`` is then swapped atomically. Re-saving an existing step first moves the old
folder aside (``.old-step_*``, which readers use while the step folder is missing), so a kill at any
instant leaves a complete checkpoint that ``latest`` resolves to; the next save (or
:func:`recover`) tidies what a killed one left. Loading checks every file and skips a damaged newest
checkpoint for the newest intact one, with a :class:`CheckpointWarning`. Only the newest ``keep``
checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from faceprep.atomic import fsync_path

LATEST = "latest"
ASIDE_PREFIX = ".old-"  # a step folder moved aside while a re-save of the same step replaces it


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or damaged (the message names the folder and the file)."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one."""


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
    """Write ``ckpt_dir/step_XXXXXXXX`` atomically, point ``latest`` at it, prune to ``keep``.

    Order (a kill at any instant leaves a complete checkpoint that ``latest`` resolves to): write and
    fsync every file in ``.tmp-*``; move an existing folder of the same step aside (``.old-step_*``,
    which readers use while the step folder is missing); rename the new one into place; swap
    ``latest``; delete the aside copy and the pruned steps (each renamed to ``.tmp-*`` first, so a
    half-deleted folder never looks like a checkpoint). Leftovers are tidied by :func:`recover`.
    """
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    recover(root)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    aside: Path | None = None
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
        for written in tmp.iterdir():
            fsync_path(written)
        fsync_path(tmp)
        if final.exists():
            aside = root / f"{ASIDE_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:  # not a kill: undo (a kill leaves this to ``recover``)
        if aside is not None and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(aside, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(root / LATEST, final.name)
    if aside is not None:
        _remove(aside)
    _prune(root, keep, final)
    return final


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _remove(folder: Path) -> None:
    """Delete a folder: first renamed to ``.tmp-*`` (atomic), so a kill mid-way leaves only litter."""
    doomed = folder.parent / f".tmp-del-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(folder, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _step_of(path: Path) -> int:
    """The step number of ``step_XXXXXXXX`` or ``.old-step_XXXXXXXX-*``; -1 for anything else."""
    name = path.name.removeprefix(ASIDE_PREFIX)
    if not name.startswith("step_"):
        return -1
    digits = name[5:].split("-", 1)[0]
    return int(digits) if digits.isdigit() else -1


def _prune(root: Path, keep: int, current: Path) -> None:
    """Keep the newest ``keep`` steps up to ``current`` (always kept); newer folders are left alone."""
    step = _step_of(current)
    steps = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and _step_of(p) <= step),
        key=_step_of,
    )
    doomed = [p for p in steps[: max(0, len(steps) - keep)] if p != current]
    for old in doomed:
        _remove(old)


def recover(ckpt_dir: str | os.PathLike[str]) -> None:
    """Tidy what a killed save left: put back an aside copy whose step folder is missing, delete aside
    copies that are no longer needed and every ``.tmp-*`` file or folder (partial writes)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return
    for aside in sorted(root.glob(f"{ASIDE_PREFIX}step_*")):
        final = root / aside.name.removeprefix(ASIDE_PREFIX).split("-", 1)[0]
        if final.exists():
            _remove(aside)
        else:
            os.replace(aside, final)
    for litter in root.glob(".tmp-*"):
        if litter.is_dir():
            shutil.rmtree(litter, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                litter.unlink()


def _resolve(root: Path, name: str) -> Path | None:
    """The folder holding checkpoint ``name``: itself, or its aside copy while a re-save replaces it."""
    for path in (root / name, *sorted(root.glob(f"{ASIDE_PREFIX}{name}-*"))):
        if (path / "state.pt").is_file():
            return path
    return None


def checkpoint_candidates(ckpt_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete-looking checkpoint folders, the one ``latest`` names first, then newest step first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found: list[Path] = []
    pointer = root / LATEST
    if pointer.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            name = pointer.read_text(encoding="utf-8").strip()
            if name.startswith("step_") and "/" not in name and "\\" not in name:
                target = _resolve(root, name)
                if target is not None:
                    found.append(target)
    names = sorted(
        {p.name.removeprefix(ASIDE_PREFIX).split("-", 1)[0] for p in root.iterdir() if _step_of(p) >= 0},
        reverse=True,
    )
    for name in names:
        target = _resolve(root, name)
        if target is not None and target not in found:
            found.append(target)
    return found


def latest_checkpoint(ckpt_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete-looking checkpoint folder (not verified: see :func:`load_checkpoint`)."""
    found = checkpoint_candidates(ckpt_dir)
    return found[0] if found else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > 100:
        first = first[:97] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: state.pt is unreadable ({_one_line(exc)})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: state.pt is not a checkpoint record (no step)")
    return state


def _tensor_files(path: Path, state: dict[str, Any]) -> list[Path]:
    files = [path / "model.safetensors"]
    if (path / "ema.safetensors").exists() or state.get("ema") is not None:
        files.append(path / "ema.safetensors")
    if "optimizer" in state:
        files.append(path / "optimizer.safetensors")
    return files


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (CPU); a missing or damaged file is a CheckpointError."""
    try:
        return load_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"{file}: unreadable ({_one_line(exc)})") from exc


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that every file of a checkpoint folder parses (state.pt, each safetensors header against
    the file size); returns the state record. Raises CheckpointError naming the folder and the file."""
    path = Path(path)
    if not (path / "state.pt").is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no state.pt)")
    state = _read_state(path)
    for file in _tensor_files(path, state):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as exc:
            raise CheckpointError(f"{file}: unreadable ({_one_line(exc)})") from exc
    return state


def _load_one(path: Path, tensors: bool) -> Checkpoint:
    state = verify_checkpoint(path)
    if not tensors:
        return Checkpoint(path, {}, None, None, state)
    model = read_tensors(path / "model.safetensors")
    ema_file = path / "ema.safetensors"
    ema = read_tensors(ema_file) if ema_file.is_file() else None
    optimizer = None
    if "optimizer" in state:
        optimizer = optimizer_from_tensors(read_tensors(path / "optimizer.safetensors"), state["optimizer"])
    return Checkpoint(path, model, ema, optimizer, state)


def load_checkpoint(path: str | os.PathLike[str], tensors: bool = True) -> Checkpoint:
    """Load a checkpoint folder, or the newest intact checkpoint of a ``checkpoints`` folder.

    Every file is checked (``tensors=False``: state.pt and the safetensors headers; otherwise every
    tensor is read). In a ``checkpoints`` folder a damaged checkpoint is skipped with a
    :class:`CheckpointWarning` naming it, and the next newest is used; CheckpointError when none is
    intact (or when the named checkpoint folder itself is damaged). Tensors land on CPU.
    """
    path = Path(path)
    if (path / "state.pt").is_file():
        return _load_one(path, tensors)
    candidates = checkpoint_candidates(path)
    if not candidates:
        raise CheckpointError(f"{path}: no checkpoint found (expected step_*/state.pt)")
    bad: list[str] = []
    for candidate in candidates:
        try:
            ckpt = _load_one(candidate, tensors)
        except CheckpointError as exc:
            bad.append(str(exc))
            continue
        if bad:
            warnings.warn(
                f"skipped damaged checkpoint(s): {'; '.join(bad)}; using {candidate}",
                CheckpointWarning,
                stacklevel=2,
            )
        return ckpt
    raise CheckpointError(f"{path}: no intact checkpoint ({'; '.join(bad)})")


def run_weights(
    run: str | os.PathLike[str], use_ema: bool = True, *, ema_fallback: bool = False
) -> tuple[Checkpoint, Path]:
    """The newest intact checkpoint record of ``run`` (a run folder, its ``checkpoints`` folder or one
    checkpoint; tensors not read) and the weights file to load: EMA unless ``use_ema`` is False. A
    checkpoint without EMA weights is a CheckpointError, or gives the raw weights with ``ema_fallback``."""
    path = Path(run)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder")
    ckpt = load_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path, tensors=False)
    weights = ckpt.path / ("ema.safetensors" if use_ema else "model.safetensors")
    if use_ema and not weights.is_file():
        if not ema_fallback:
            raise CheckpointError(f"{ckpt.path}: no EMA weights saved (use the raw weights: use_ema=False)")
        weights = ckpt.path / "model.safetensors"
    return ckpt, weights
