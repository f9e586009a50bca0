"""The training loop, readable top to bottom (nanoGPT-style).

    cfg = TrainConfig(data="faces/", out="runs/faces64", preset="faces64")
    train(cfg)                      # or: torchrun --nproc_per_node 4 -m diffengine train faces/ ...

What it does, in order: join torch.distributed if launched by torchrun; build the preset's UNet inside
its formulation (EDM by default); load every image once into a uint8 tensor; optionally resume the
latest checkpoint (model, EMA, optimizer, step, every RNG and the data order: a resumed run on the CPU
equals an uninterrupted one bit for bit); then loop: batch -> checked -> loss (autocast) -> backward ->
clip -> AdamW with linear warm-up -> EMA. Every ``log_every`` steps the loss per σ bucket goes to
``log.jsonl``; every ``sample_every`` a grid from fixed noise with the EMA weights and a loss plot;
every ``ckpt_every`` a checkpoint. Ctrl-C or SIGTERM finish the current step, save and stop.
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
from typing import Any, Literal

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
from diffengine.config import Preset, UNetConfig, config_to_dict, get_preset
from diffengine.data import BatchStream, DataCheckError, check_batch, load_dataset
from diffengine.ema import EMA
from diffengine.generate import build_denoiser, generate, save_grid
from diffengine.loss import diffusion_loss
from diffengine.plots import drop_partial_line, plot_losses, read_log
from diffengine.precond import Denoiser

Precision = Literal["auto", "bf16", "fp32", "fp16"]
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
    precision: Precision = "auto"
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
    changes: dict[str, Any] = {"unet": unet}
    for name, value in (
        ("batch_size", cfg.batch_size),
        ("lr", cfg.lr),
        ("warmup_steps", cfg.warmup),
        ("grad_clip", cfg.grad_clip),
        ("ema_half_life_kimg", cfg.ema_half_life_kimg),
        ("formulation", cfg.formulation),
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
# The loop


def train(cfg: TrainConfig, eval_fn: EvalFn | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns a summary. See the module docstring."""
    dist = distributed.init(cfg.device)
    device, main = dist.device, dist.is_main
    preset = effective_preset(cfg)
    res = preset.unet.resolution
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if main:
        (out / "samples").mkdir(parents=True, exist_ok=True)

    # ---- data: decoded once, uint8 in memory, deterministic sharded order -------------------------
    images, _names = load_dataset(
        cfg.data,
        res,
        split="train" if cfg.holdout > 0 else "all",
        heldout_fraction=cfg.holdout if cfg.holdout > 0 else 0.1,
    )
    stream = BatchStream(images, preset.batch_size, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)

    # ---- model, EMA, optimizer --------------------------------------------------------------------
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    denoiser = build_denoiser(preset).to(device)
    net = denoiser.net
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = (
        EMA(
            net,
            half_life_kimg=preset.ema_half_life_kimg,
            batch_size=preset.batch_size * dist.world_size,
            rampup_ratio=preset.ema_rampup_ratio,
        )
        if cfg.ema
        else None
    )
    opt = torch.optim.AdamW(
        net.parameters(), lr=preset.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=preset.weight_decay
    )
    dtype = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    noise_gen = torch.Generator(device).manual_seed(cfg.seed * 1000 + dist.rank + 1)  # σ and noise, per rank
    torch.manual_seed(cfg.seed + dist.rank)  # dropout differs per rank

    # ---- resume -----------------------------------------------------------------------------------
    step = 0
    if main:
        recover(ckpt_dir)  # what a killed save left: an aside copy put back, .tmp-* litter removed
    distributed.barrier(dist)
    if not cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(f"{out} already holds checkpoints: pass --resume to continue, or another --out")
    if cfg.resume:
        if latest_checkpoint(ckpt_dir) is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        ckpt = load_checkpoint(ckpt_dir)  # the newest intact one: a damaged newer one is skipped (warning)
        found = ckpt.path
        saved_unet = ckpt.state["preset"]["unet"]
        if saved_unet != config_to_dict(preset.unet):
            raise ValueError(f"--resume: {found} was trained with a different network ({saved_unet})")
        net.load_state_dict(ckpt.model)
        if ema is not None:
            if ckpt.ema is None:
                raise ValueError(f"--resume: {found} has no EMA weights but EMA is on")
            ema.load_state_dict({"module": ckpt.ema, **ckpt.state["ema"]})
        if ckpt.optimizer is not None:
            opt.load_state_dict(ckpt.optimizer)
        if scaler.is_enabled() and ckpt.state.get("scaler"):
            scaler.load_state_dict(ckpt.state["scaler"])
        ranks = ckpt.state["ranks"]
        if len(ranks) != dist.world_size:
            raise ValueError(
                f"--resume: {found} was written by {len(ranks)} process(es), now {dist.world_size}"
            )
        mine = ranks[dist.rank]
        stream.load_state_dict(mine["data"])
        noise_gen.set_state(mine["noise_gen"])
        set_rng_state(mine["rng"])
        step = ckpt.step
        if main:
            print(f"resumed from {found} at step {step}")

    # ---- wrappers: compile, DDP (the Denoiser calls whatever ``net`` is) -------------------------------
    train_net: nn.Module = net
    if cfg.compile:
        train_net = torch.compile(train_net)  # type: ignore[assignment]
    if dist.enabled:
        train_net = nn.parallel.DistributedDataParallel(
            train_net, device_ids=[device.index] if device.type == "cuda" else None
        )
    model = Denoiser(train_net, denoiser.formulation)
    model.train()
    ema_denoiser = Denoiser(ema.module, denoiser.formulation) if ema is not None else denoiser
    fixed_seed = cfg.seed + 12345  # preview grids always start from the same noise

    form = denoiser.formulation
    buckets = SigmaBuckets(sigma_edges(form.sigma_min, form.sigma_max), device)
    log_path = out / "log.jsonl"
    if main:
        dropped = drop_partial_line(log_path)
        if dropped:
            print(f"{log_path}: dropped a partial last line ({dropped} bytes) left by an interrupted run")
        (out / "config.json").write_text(
            json.dumps({"train": dataclasses.asdict(cfg), "preset": config_to_dict(preset)}, indent=2)
        )
        print(
            f"{preset.name}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
            f"{images.shape[0]} images at {res}px, global batch {stream.global_batch}, "
            f"{str(dtype).removeprefix('torch.')} on {device}"
            + (f" x{dist.world_size}" if dist.enabled else "")
        )

    def state_for_checkpoint() -> dict[str, Any]:
        mine = {"data": stream.state_dict(), "noise_gen": noise_gen.get_state(), "rng": rng_state()}
        ranks = [mine]
        if dist.enabled:
            gathered: list[Any] = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, mine)
            ranks = gathered
        return {
            "ranks": ranks,
            "preset": config_to_dict(preset),
            "train": dataclasses.asdict(cfg),
            "ema": {k: v for k, v in ema.state_dict().items() if k != "module"} if ema else None,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        }

    def checkpoint() -> Path | None:
        state = state_for_checkpoint()  # collective: every rank calls it
        if not main:
            return None
        return save_checkpoint(
            ckpt_dir,
            step,
            net.state_dict(),
            state,
            ema=ema.module.state_dict() if ema else None,
            optimizer=opt.state_dict(),
            keep=cfg.keep,
        )

    def preview() -> None:
        if not main:
            return
        samples = generate(
            ema_denoiser,
            min(cfg.num_samples, 64),
            sampler=preset.sampler,
            steps=preset.sample_steps,
            seed=fixed_seed,
            schedule=preset.schedule,
        )
        save_grid(samples, out / "samples" / f"step_{step:08d}.png")
        save_grid(samples, out / "samples" / "latest.png")
        if log_path.is_file():
            plot_losses(read_log(log_path), out / "loss.png")

    # ---- the loop ---------------------------------------------------------------------------------
    window: list[torch.Tensor] = []
    first_loss = last_loss = float("nan")
    last_ckpt: Path | None = None
    t_window, n_window = time.perf_counter(), 0
    images_per_s = 0.0
    stop = StopFlag()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (main and cfg.progress), dynamic_ncols=True)
    interrupted = checked_first = False
    with stop.installed():
        while step < cfg.max_steps:
            # Batch: uint8 -> [-1, 1] float on the device, random flips; checked on the first step and
            # at every log step (a sync), so bad data stops the run with a reason.
            x = stream.next(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if checked_first is False or (step + 1) % cfg.log_every == 0:
                checked_first = True
                for note in check_batch(x):
                    warnings.warn(f"step {step}: {note}", stacklevel=1)

            lr = learning_rate(step, preset.lr, preset.warmup_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out_loss = diffusion_loss(model, x, generator=noise_gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(out_loss.loss).backward()
            scaler.unscale_(opt)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(net.parameters(), preset.grad_clip)
                if preset.grad_clip > 0
                else torch.zeros((), device=device)
            )
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update(net)
            buckets.add(out_loss.sigma, out_loss.per_sample)
            step += 1
            n_window += x.shape[0] * dist.world_size
            window.append(out_loss.loss.detach())

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                loss = float(distributed.all_reduce_mean(torch.stack(window).mean(), dist))
                window.clear()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"step {step}: loss is {loss}; lower --lr or use fp32")
                elapsed = time.perf_counter() - t_window
                images_per_s = n_window / max(elapsed, 1e-9)
                t_window, n_window = time.perf_counter(), 0
                first_loss = loss if math.isnan(first_loss) else first_loss
                last_loss = loss
                sigma_loss = buckets.flush()
                if main:
                    _append_jsonl(
                        log_path,
                        {
                            "step": step,
                            "loss": loss,
                            "lr": lr,
                            "grad_norm": float(grad_norm),
                            "images_per_s": round(images_per_s, 2),
                            "sigma_edges": buckets.edges.tolist(),
                            "sigma_loss": sigma_loss,
                            "time": time.time(),
                        },
                    )
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", lr=f"{lr:.2e}")
            bar.update(1)

            if cfg.kid_every and eval_fn is not None and step % cfg.kid_every == 0 and main:
                record = eval_fn(ema_denoiser, step)
                _append_jsonl(log_path, {"step": step, **record})
            if step % cfg.sample_every == 0:
                preview()
            if step % cfg.ckpt_every == 0 and step < cfg.max_steps:
                last_ckpt = checkpoint() or last_ckpt
            if dist.enabled and step % 10 == 0:  # a collective: every rank stops after the same step
                flag = torch.tensor(float(stop.requested), device=device)
                stop.requested = float(distributed.all_reduce_mean(flag, dist)) > 0
            if stop.requested and (not dist.enabled or step % 10 == 0):
                interrupted = True
                break
    bar.close()

    last_ckpt = checkpoint() or last_ckpt
    if main and (interrupted or step % cfg.sample_every):
        preview()
    if main and interrupted:
        print(f"stopped at step {step}; checkpoint {last_ckpt}; continue with --resume")
    if main and not interrupted and step >= max(50, 3 * cfg.log_every) and not last_loss < 0.9 * first_loss:
        warnings.warn(
            f"loss did not fall ({first_loss:.4f} -> {last_loss:.4f} over {step} steps): check the data "
            "(`diffengine doctor DATA`), the learning rate and the preset",
            stacklevel=2,
        )
    distributed.barrier(dist)
    distributed.cleanup(dist)
    return TrainResult(
        step=step,
        first_loss=first_loss,
        last_loss=last_loss,
        images_per_s=images_per_s,
        checkpoint=last_ckpt,
        interrupted=interrupted,
        net=net,
    )


__all__ = ["DataCheckError", "TrainConfig", "TrainResult", "UNetConfig", "effective_preset", "train"]
