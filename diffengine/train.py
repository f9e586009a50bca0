"""The training loop, readable top to bottom (nanoGPT-style).

    cfg = TrainConfig(data="faces/", out="runs/faces64", preset="faces64")
    train(cfg)                      # or: torchrun --nproc_per_node 4 -m diffengine train faces/ ...

:func:`train` is a loop over named stages, each a small function:

1. ``_set_up``: join torch.distributed if launched by torchrun; open the data (``_open_data``: every
   image decoded once into a uint8 tensor, a deterministic sharded order); build the preset's UNet
   inside its formulation (EDM by default), the EMA, AdamW, the noise generator. All of it is one
   :class:`Run`.
2. ``_resume``: the latest checkpoint's model, EMA, optimizer, step, every RNG and the data order (a
   resumed run on the CPU equals an uninterrupted one bit for bit).
3. ``_train_step``: batch -> checked -> loss (autocast) -> backward -> clip -> AdamW with linear
   warm-up -> EMA, returning a :class:`StepOutput`.
4. periodic work: every ``log_every`` steps ``_log`` (loss, loss per σ bucket, the EMA's current
   half-life) to ``log.jsonl``; every ``sample_every`` ``_preview`` (raw | EMA grids from the same fixed
   noise, and the loss plot); every ``ckpt_every`` ``_checkpoint``. Ctrl-C or SIGTERM finish the
   current step, save and stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from diffengine import distributed
from diffengine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    recover,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from diffengine.config import Precision, Preset, UNetConfig, config_to_dict, get_preset
from diffengine.data import DataCheckError, check_batch
from diffengine.distributed import DistInfo
from diffengine.ema import EMA
from diffengine.finetune import StartWeights, load_start_weights
from diffengine.generate import build_denoiser, generate, save_comparison
from diffengine.inpaint import COND_CHANNELS, ConditionedDenoiser, Task, inpaint_cond
from diffengine.loss import diffusion_loss
from diffengine.masks import random_masks
from diffengine.plots import drop_partial_line, plot_losses, read_log
from diffengine.precond import Denoiser
from diffengine.streaming import make_stream

EvalFn = Callable[[Denoiser, int], dict[str, Any]]  # (EMA denoiser, step) -> e.g. {"kid": ...}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. ``None`` means "the preset's value"."""

    data: str
    out: str
    preset: str = "faces64"
    max_steps: int = 100_000
    batch_size: int | None = None  # per process; the global batch is this times the world size
    lr: float | None = None
    warmup: int | None = None  # linear warm-up steps
    grad_clip: float | None = None  # max gradient norm; 0 disables
    ema: bool = True
    ema_half_life_kimg: float | None = None
    precision: Precision | None = None  # None: the preset's ("auto": bf16 where supported, else fp32)
    channels_last: bool | None = None  # None: on CUDA only
    compile: bool = False
    seed: int = 0
    sample_every: int = 1000
    ckpt_every: int = 1000
    log_every: int = 50
    kid_every: int = 0  # 0: off; needs an ``eval_fn`` passed to ``train``
    resume: bool = False
    holdout: float = 0.0  # fraction of images (fixed by file-name hash) kept out of training for eval
    num_samples: int = 36  # images in each preview grid
    keep: int = 3  # checkpoints kept
    device: str = "auto"
    unet: dict[str, Any] = field(default_factory=dict)  # UNetConfig overrides (tests, experiments)
    formulation: str | None = None  # "edm" | "vp-eps" | "vp-v"; None: the preset's
    progress: bool = True
    task: Task = "unconditional"  # "inpaint": the network also sees a masked image and its mask
    streaming: bool | None = None  # None: in memory when the decoded set fits in 1 GiB, else streamed
    workers: int = 2  # DataLoader workers when streaming
    init_from: str | None = None  # a fresh run starts from this run's weights (diffengine.finetune)


@dataclass(frozen=True)
class TrainResult:
    step: int
    first_loss: float  # mean over the first logged window
    last_loss: float  # mean over the last logged window
    images_per_s: float
    checkpoint: Path | None
    interrupted: bool = False
    net: nn.Module | None = field(default=None, repr=False)  # the trained network (raw weights)


# ---------------------------------------------------------------------------------------------------
# Pieces the loop uses


def effective_preset(cfg: TrainConfig) -> Preset:
    """The preset with this run's overrides applied (what the checkpoint records)."""
    preset = get_preset(cfg.preset)
    unet = dataclasses.replace(preset.unet, **cfg.unet) if cfg.unet else preset.unet
    if cfg.task == "inpaint":
        unet = dataclasses.replace(unet, cond_channels=COND_CHANNELS)
    changes: dict[str, Any] = {"unet": unet}
    for name, value in (
        ("batch_size", cfg.batch_size),
        ("lr", cfg.lr),
        ("warmup_steps", cfg.warmup),
        ("grad_clip", cfg.grad_clip),
        ("ema_half_life_kimg", cfg.ema_half_life_kimg),
        ("formulation", cfg.formulation),
        ("precision", cfg.precision),
    ):
        if value is not None:
            changes[name] = value
    return dataclasses.replace(preset, **changes)


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """bf16 on CUDA cards that support it, fp32 elsewhere (CPU, GTX 10xx); fp16 only on request."""
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device) >= (8, 0)
    if requested == "auto":
        return torch.bfloat16 if bf16_ok else torch.float32
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        if cuda and not bf16_ok:
            name = torch.cuda.get_device_name(device)
            raise ValueError(f"precision bf16: {name} has no fast bf16; use fp32")
        return torch.bfloat16
    if requested == "fp16":
        if not cuda:
            raise ValueError("precision fp16 needs a CUDA device; use fp32 on the CPU")
        cap = torch.cuda.get_device_capability(device)
        warnings.warn(
            f"fp16 training (GradScaler) on compute capability {cap[0]}.{cap[1]}: "
            + (
                "slow and unstable on this card (no tensor cores) — prefer fp32"
                if cap < (7, 0)
                else "prefer bf16 or fp32 unless you know you need fp16"
            ),
            stacklevel=2,
        )
        return torch.float16
    raise ValueError(f"precision must be auto, bf16, fp32 or fp16, not {requested!r}")


def learning_rate(step: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up from ~0 to ``base_lr`` over ``warmup`` steps, then constant."""
    return base_lr * min(1.0, (step + 1) / warmup) if warmup > 0 else base_lr


def sigma_edges(sigma_min: float, sigma_max: float, n: int = 8) -> torch.Tensor:
    """``n`` log-spaced σ buckets covering [σ_min, σ_max] (outer buckets open-ended)."""
    return torch.logspace(math.log10(sigma_min), math.log10(sigma_max), n + 1)


class SigmaBuckets:
    """Running sums of the per-sample loss by σ bucket, kept on the device (one sync per flush)."""

    def __init__(self, edges: torch.Tensor, device: torch.device):
        self.edges = edges.to(device)
        self.sums = torch.zeros(len(edges) - 1, device=device, dtype=torch.float64)
        self.counts = torch.zeros_like(self.sums)

    def add(self, sigma: torch.Tensor, per_sample: torch.Tensor) -> None:
        idx = (torch.bucketize(sigma.detach(), self.edges[1:-1])).clamp(0, len(self.sums) - 1)
        self.sums.index_add_(0, idx, per_sample.detach().double())
        self.counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def flush(self) -> list[float | None]:
        means = [
            float(s / c) if c > 0 else None
            for s, c in zip(self.sums.tolist(), self.counts.tolist(), strict=True)
        ]
        self.sums.zero_()
        self.counts.zero_()
        return means


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second Ctrl-C aborts at once)."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        try:
            old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no handlers, Ctrl-C raises as usual
            yield self
            return
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------------
# Stage 1: set-up


class BatchSource(Protocol):
    """What the loop needs of the data: ``diffengine.data.BatchStream`` (or a streaming loader)."""

    def next(self, device: torch.device | str = "cpu") -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _open_data(cfg: TrainConfig, preset: Preset, dist: DistInfo) -> tuple[BatchSource, int]:
    """The training batches of this rank and how many images there are: the one place the data source
    is chosen (in memory for small sets, streamed by DataLoader workers otherwise; see
    :func:`diffengine.streaming.make_stream`)."""
    stream = make_stream(
        cfg.data,
        preset.unet.resolution,
        preset.batch_size,
        cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        split="train" if cfg.holdout > 0 else "all",
        heldout_fraction=cfg.holdout if cfg.holdout > 0 else 0.1,
        streaming=cfg.streaming,
        workers=cfg.workers,
    )
    return stream, stream.n_images


@dataclass
class Run:
    """Everything the loop works on; built once by :func:`_set_up`."""

    cfg: TrainConfig
    preset: Preset
    dist: DistInfo
    out: Path
    stream: BatchSource
    n_images: int
    denoiser: Denoiser  # the plain network (raw weights) inside the formulation
    ema: EMA | None
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype
    noise_gen: torch.Generator  # σ and noise of the loss, per rank
    channels_last: bool
    mask_gen: torch.Generator  # the inpainting masks (task inpaint), per rank, on the CPU
    start: StartWeights | None = None  # where a fresh run's first weights came from (--init-from)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def main(self) -> bool:
        return self.dist.is_main

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    @property
    def ema_denoiser(self) -> Denoiser:
        """The EMA weights inside the formulation (the raw denoiser when EMA is off)."""
        return Denoiser(self.ema.module, self.denoiser.formulation) if self.ema else self.denoiser


def _set_up(cfg: TrainConfig) -> Run:
    dist = distributed.init(cfg.device)
    device = dist.device
    preset = effective_preset(cfg)
    out = Path(cfg.out)
    if dist.is_main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
    stream, n_images = _open_data(cfg, preset, dist)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    denoiser = build_denoiser(preset).to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        denoiser.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = (
        EMA(
            denoiser.net,
            half_life_kimg=preset.ema_half_life_kimg,
            batch_size=preset.batch_size * dist.world_size,
            rampup_ratio=preset.ema_rampup_ratio,
        )
        if cfg.ema
        else None
    )
    opt = torch.optim.AdamW(
        denoiser.net.parameters(),
        lr=preset.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=preset.weight_decay,
    )
    dtype = resolve_precision(preset.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    noise_gen = torch.Generator(device).manual_seed(cfg.seed * 1000 + dist.rank + 1)
    mask_gen = torch.Generator().manual_seed(cfg.seed * 1000 + dist.rank + 7)
    torch.manual_seed(cfg.seed + dist.rank)  # dropout differs per rank
    return Run(
        cfg,
        preset,
        dist,
        out,
        stream,
        n_images,
        denoiser,
        ema,
        opt,
        scaler,
        dtype,
        noise_gen,
        channels_last,
        mask_gen,
    )


# ---------------------------------------------------------------------------------------------------
# Stage 2: resume


def _resume(run: Run) -> int:
    """Put back what a killed save left, refuse to overwrite a run, and with ``--resume`` load the newest
    intact checkpoint (a damaged newer one is skipped with a warning). Returns the step to start at."""
    cfg, dist, ckpt_dir = run.cfg, run.dist, run.ckpt_dir
    if run.main:
        recover(ckpt_dir)  # an aside copy put back, .tmp-* litter removed
    distributed.barrier(dist)
    if not cfg.resume:
        if latest_checkpoint(ckpt_dir) is not None:
            raise FileExistsError(
                f"{run.out} already holds checkpoints: pass --resume to continue, or another --out"
            )
        if cfg.init_from:  # the same weights on every rank (each reads them), EMA starting from them
            run.start = load_start_weights(cfg.init_from, run.net, run.preset.unet)
            if run.ema is not None:
                run.ema.module.load_state_dict(run.net.state_dict())
            if run.main:
                print(f"started from {run.start.run} step {run.start.step} ({run.start.weights})")
        return 0
    if latest_checkpoint(ckpt_dir) is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    ckpt = load_checkpoint(ckpt_dir)
    found = ckpt.path
    saved_unet = ckpt.state["preset"]["unet"]
    if saved_unet != config_to_dict(run.preset.unet):
        raise ValueError(f"--resume: {found} was trained with a different network ({saved_unet})")
    run.net.load_state_dict(ckpt.model)
    if run.ema is not None:
        if ckpt.ema is None:
            raise ValueError(f"--resume: {found} has no EMA weights but EMA is on")
        run.ema.load_state_dict({"module": ckpt.ema, **ckpt.state["ema"]})
    if ckpt.optimizer is not None:
        run.opt.load_state_dict(ckpt.optimizer)
    if run.scaler.is_enabled() and ckpt.state.get("scaler"):
        run.scaler.load_state_dict(ckpt.state["scaler"])
    ranks = ckpt.state["ranks"]
    if len(ranks) != dist.world_size:
        raise ValueError(f"--resume: {found} was written by {len(ranks)} process(es), now {dist.world_size}")
    mine = ranks[dist.rank]
    if ckpt.state.get("init_from"):
        run.start = StartWeights(**ckpt.state["init_from"])
    run.stream.load_state_dict(mine["data"])
    run.noise_gen.set_state(mine["noise_gen"])
    if "mask_gen" in mine:
        run.mask_gen.set_state(mine["mask_gen"])
    set_rng_state(mine["rng"])
    if run.main:
        print(f"resumed from {found} at step {ckpt.step}")
    return ckpt.step


def _wrap(run: Run) -> Denoiser:
    """The denoiser the loop trains through: ``torch.compile`` and DDP around the same ``net``."""
    train_net: nn.Module = run.net
    if run.cfg.compile:
        train_net = torch.compile(train_net)  # type: ignore[assignment]
    if run.dist.enabled:
        device = run.device
        train_net = nn.parallel.DistributedDataParallel(
            train_net, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Denoiser(train_net, run.denoiser.formulation).train()


def _announce(run: Run) -> None:
    """Cut a partial last log line, write ``config.json`` and print one line about the run."""
    if not run.main:
        return
    dropped = drop_partial_line(run.log_path)
    if dropped:
        print(f"{run.log_path}: dropped a partial last line ({dropped} bytes) left by an interrupted run")
    (run.out / "config.json").write_text(
        json.dumps({"train": dataclasses.asdict(run.cfg), "preset": config_to_dict(run.preset)}, indent=2)
    )
    preset, dist = run.preset, run.dist
    print(
        f"{preset.name}: {sum(p.numel() for p in run.net.parameters()) / 1e6:.2f}M parameters, "
        f"{run.n_images} images at {preset.unet.resolution}px, global batch "
        f"{preset.batch_size * dist.world_size}, {str(run.dtype).removeprefix('torch.')} on {run.device}"
        + (f" x{dist.world_size}" if dist.enabled else "")
    )


# ---------------------------------------------------------------------------------------------------
# Stage 3: one optimisation step


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor  # 0-d, on the device (no sync)
    sigma: torch.Tensor  # (B,)
    per_sample: torch.Tensor  # (B,)
    grad_norm: torch.Tensor
    lr: float
    images: int  # images this step over all ranks


def _train_step(run: Run, model: Denoiser, step: int, check: bool) -> StepOutput:
    """Batch (uint8 -> [-1, 1] on the device, random flips; checked when ``check``: a sync, so bad data
    stops the run with a reason) -> loss -> backward -> clip -> AdamW -> EMA."""
    x = run.stream.next(run.device)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if check:
        for note in check_batch(x):
            warnings.warn(f"step {step}: {note}", stacklevel=1)
    preset, opt, scaler, dtype = run.preset, run.opt, run.scaler, run.dtype
    lr = learning_rate(step, preset.lr, preset.warmup_steps)
    for group in opt.param_groups:
        group["lr"] = lr
    cond = None
    if run.cfg.task == "inpaint":  # masks drawn like faceprep's out-of-photo regions
        mask = random_masks(x.shape[0], x.shape[-1], run.mask_gen).to(x.device, x.dtype)
        cond = inpaint_cond(x, mask)
    with torch.autocast(run.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = diffusion_loss(model, x, generator=run.noise_gen, cond=cond)
    opt.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    scaler.unscale_(opt)
    grad_norm = (
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), preset.grad_clip)
        if preset.grad_clip > 0
        else torch.zeros((), device=run.device)
    )
    scaler.step(opt)
    scaler.update()
    if run.ema is not None:
        run.ema.update(run.net)
    return StepOutput(
        out.loss.detach(), out.sigma, out.per_sample, grad_norm, lr, x.shape[0] * run.dist.world_size
    )


# ---------------------------------------------------------------------------------------------------
# Stage 4: periodic work


@dataclass
class Progress:
    """The loss window since the last log line and the run's summary numbers."""

    buckets: SigmaBuckets
    window: list[torch.Tensor] = field(default_factory=list)
    images: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    images_per_s: float = 0.0
    last_ckpt: Path | None = None

    def add(self, out: StepOutput) -> None:
        self.buckets.add(out.sigma, out.per_sample)
        self.window.append(out.loss)
        self.images += out.images


def _log(run: Run, progress: Progress, step: int, out: StepOutput) -> float:
    """One ``log.jsonl`` record: the window's mean loss (over ranks), loss per σ bucket, speed, the EMA's
    current half-life. Returns the loss; a non-finite one stops the run."""
    loss = float(distributed.all_reduce_mean(torch.stack(progress.window).mean(), run.dist))
    progress.window.clear()
    if not math.isfinite(loss):
        raise FloatingPointError(f"step {step}: loss is {loss}; lower --lr or use fp32")
    now = time.perf_counter()
    progress.images_per_s = progress.images / max(now - progress.started, 1e-9)
    progress.started, progress.images = now, 0
    progress.first_loss = loss if math.isnan(progress.first_loss) else progress.first_loss
    progress.last_loss = loss
    sigma_loss = progress.buckets.flush()
    if run.main:
        record = {
            "step": step,
            "loss": loss,
            "lr": out.lr,
            "grad_norm": float(out.grad_norm),
            "images_per_s": round(progress.images_per_s, 2),
            "sigma_edges": progress.buckets.edges.tolist(),
            "sigma_loss": sigma_loss,
            **(run.ema.describe() if run.ema else {}),
            "time": time.time(),
        }
        _append_jsonl(run.log_path, record)
    return loss


PREVIEW_SEED_OFFSET = 12345  # preview grids always start from the same noise: seed + this


def _preview(run: Run, step: int) -> None:
    """``samples/step_N.png`` and ``samples/latest.png``: raw and EMA samples side by side from the same
    noise (the preset's sampler and steps), and ``loss.png``."""
    if not run.main:
        return
    preset = run.preset
    panels: dict[str, Any] = (
        {"raw weights": run.denoiser, "EMA weights": run.ema_denoiser} if run.ema else {"raw": run.denoiser}
    )
    if run.cfg.task == "inpaint":  # nothing known (mask 1 everywhere): what the network makes on its own
        res = preset.unet.resolution
        nothing = torch.zeros(min(run.cfg.num_samples, 64), 3, res, res, device=run.device)
        cond = inpaint_cond(nothing, torch.ones_like(nothing[:, :1]))
        panels = {title: ConditionedDenoiser(d, cond) for title, d in panels.items()}
    grids = {
        title: generate(
            denoiser,
            min(run.cfg.num_samples, 64),
            sampler=preset.sampler,
            steps=preset.sample_steps,
            seed=run.cfg.seed + PREVIEW_SEED_OFFSET,
            schedule=preset.schedule,
            batch_size=64,
            device=run.device,
            resolution=preset.unet.resolution,
            formulation=run.denoiser.formulation,
        )
        for title, denoiser in panels.items()
    }
    save_comparison(grids, run.out / "samples" / f"step_{step:08d}.png")
    save_comparison(grids, run.out / "samples" / "latest.png")
    if run.log_path.is_file():
        plot_losses(read_log(run.log_path), run.out / "loss.png")


def _checkpoint(run: Run, step: int) -> Path | None:
    """Save a checkpoint (collective: every rank calls it; the main one writes). Its path on the main rank."""
    mine = {
        "data": run.stream.state_dict(),
        "noise_gen": run.noise_gen.get_state(),
        "mask_gen": run.mask_gen.get_state(),
        "rng": rng_state(),
    }
    ranks = [mine]
    if run.dist.enabled:
        gathered: list[Any] = [None] * run.dist.world_size
        torch.distributed.all_gather_object(gathered, mine)
        ranks = gathered
    if not run.main:
        return None
    ema, scaler = run.ema, run.scaler
    state = {
        "task": run.cfg.task,
        "init_from": dataclasses.asdict(run.start) if run.start else None,
        "ranks": ranks,
        "preset": config_to_dict(run.preset),
        "train": dataclasses.asdict(run.cfg),
        "ema": {k: v for k, v in ema.state_dict().items() if k != "module"} if ema else None,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
    }
    return save_checkpoint(
        run.ckpt_dir,
        step,
        run.net.state_dict(),
        state,
        ema=ema.module.state_dict() if ema else None,
        optimizer=run.opt.state_dict(),
        keep=run.cfg.keep,
    )


def _stop_now(run: Run, stop: StopFlag, step: int) -> bool:
    """Ctrl-C / SIGTERM seen (on any rank: every 10 steps a collective, so all ranks stop together)."""
    if run.dist.enabled and step % 10 == 0:
        flag = torch.tensor(float(stop.requested), device=run.device)
        stop.requested = float(distributed.all_reduce_mean(flag, run.dist)) > 0
    return stop.requested and (not run.dist.enabled or step % 10 == 0)


def _warn_if_flat(run: Run, progress: Progress, step: int) -> None:
    first, last = progress.first_loss, progress.last_loss
    if run.main and step >= max(50, 3 * run.cfg.log_every) and not last < 0.9 * first:
        warnings.warn(
            f"loss did not fall ({first:.4f} -> {last:.4f} over {step} steps): check the data "
            "(`diffengine doctor DATA`), the learning rate and the preset",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, eval_fn: EvalFn | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns a summary. See the module docstring."""
    if cfg.task not in ("unconditional", "inpaint"):
        raise ValueError(f"task must be 'unconditional' or 'inpaint', not {cfg.task!r}")
    if cfg.task == "inpaint" and cfg.kid_every:
        raise ValueError("--kid-every measures unconditional samples: not for an --task inpaint run")
    run = _set_up(cfg)
    step = _resume(run)
    model = _wrap(run)
    _announce(run)
    form = run.denoiser.formulation
    progress = Progress(SigmaBuckets(sigma_edges(form.sigma_min, form.sigma_max), run.device))
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (run.main and cfg.progress), dynamic_ncols=True)
    interrupted, first = False, True
    with StopFlag().installed() as stop:
        while step < cfg.max_steps:
            out = _train_step(run, model, step, check=first or (step + 1) % cfg.log_every == 0)
            first = False
            step += 1
            progress.add(out)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                loss = _log(run, progress, step, out)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{progress.images_per_s:.1f}", lr=f"{out.lr:.2e}")
            bar.update(1)
            if cfg.kid_every and eval_fn is not None and step % cfg.kid_every == 0 and run.main:
                _append_jsonl(run.log_path, {"step": step, **eval_fn(run.ema_denoiser, step)})
            if step % cfg.sample_every == 0:
                _preview(run, step)
            if step % cfg.ckpt_every == 0 and step < cfg.max_steps:
                progress.last_ckpt = _checkpoint(run, step) or progress.last_ckpt
            if _stop_now(run, stop, step):
                interrupted = True
                break
    bar.close()

    progress.last_ckpt = _checkpoint(run, step) or progress.last_ckpt
    if interrupted or step % cfg.sample_every:
        _preview(run, step)
    if run.main and interrupted:
        print(f"stopped at step {step}; checkpoint {progress.last_ckpt}; continue with --resume")
    if not interrupted:
        _warn_if_flat(run, progress, step)
    distributed.barrier(run.dist)
    distributed.cleanup(run.dist)
    return TrainResult(
        step=step,
        first_loss=progress.first_loss,
        last_loss=progress.last_loss,
        images_per_s=progress.images_per_s,
        checkpoint=progress.last_ckpt,
        interrupted=interrupted,
        net=run.net,
    )


__all__ = [
    "BatchSource",
    "DataCheckError",
    "TrainConfig",
    "TrainResult",
    "UNetConfig",
    "effective_preset",
    "train",
]
