"""Quality table: our preset vs a diffusers UNet2DModel + DDPMScheduler baseline, equal params and wall time.

    python bench/quality.py --data ../shared/data/utkface --minutes 15          # the real table
    python bench/quality.py --data ../shared/data/utkface --smoke               # ~2-4 min code-path check

Both models train on the same images (UTKFace minus a fixed held-out split chosen by file-name hash,
``diffengine.data.heldout_split``) for the same wall-clock budget on the same machine, each including
its own data loading. Ours: ``diffengine.train`` with the preset (EDM, EMA); stopped at the budget via
the loop's SIGTERM handling (finish step, checkpoint). Baseline: the seed's setup where it fits —
UNet2DModel (width chosen to match our parameter count), ε-prediction, linear β, 1000 steps, AdamW
1e-4 with 500 warm-up steps, no EMA (diffusers' default) — trained by the plain loop below.

Then both are sampled and scored against the held-out split: FID and KID on Inception pool3
(``diffengine.metrics``), each with its sample count; ours per sampler vs NFE, the baseline with DDPM
1000 steps and DDIM 50. Sample grids go to ``bench/results/``; the table is printed and written as JSON.
FID at n < 10k is biased upward (compare KID across rows; FID only between rows of equal n).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffengine.checkpoint import latest_checkpoint, load_checkpoint
from diffengine.data import heldout_split, load_images, open_source
from diffengine.distributed import pick_device
from diffengine.evaluate import (
    SWEEP_SAMPLERS,
    default_extractor,
    format_table,
    generate_timed,
    metric_fields,
    score_images,
    steps_for_nfe,
)  # fmt: skip
from diffengine.generate import build_denoiser, load_run, save_grid
from diffengine.metrics.refstats import RefStats, reference_statistics
from diffengine.samplers import nfe
from diffengine.train import TrainConfig, effective_preset, train

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Sample:
    """One sample set (uint8 ``(N, 3, H, W)``) and what made it: model, sampler, steps, NFE, n, speed."""

    meta: dict[str, Any]
    images: torch.Tensor


# --------------------------------------------------------------------------------------------------
# Data split


def subset_folder(data: Path, limit: int | None, workdir: Path) -> Path:
    """``data`` itself, or (smoke) a folder of symlinks to a fixed hash-chosen subset (no copies)."""
    if limit is None:
        return data
    source = open_source(data)
    names = sorted(source.names, key=lambda n: hash_key(n))[:limit]
    folder = workdir / "subset"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = folder / Path(name).name
        if not link.exists():
            link.symlink_to((source.path / name).resolve())
    return folder


def hash_key(name: str) -> str:
    import hashlib

    return hashlib.sha256(("subset:" + Path(name).name).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Ours: diffengine.train under a wall-clock budget


@contextlib.contextmanager
def sigterm_after(seconds: float) -> Iterator[None]:
    """From ``seconds`` on, send ourselves SIGTERM every 2 s: the training loop's handler finishes the step,
    saves and stops. Until the loop installs its handler (data loading) the signal is ignored, not fatal."""
    done = threading.Event()

    def fire() -> None:
        if not done.wait(seconds):
            while not done.is_set():
                os.kill(os.getpid(), signal.SIGTERM)
                done.wait(2.0)

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGTERM, previous)


def read_log(run: Path) -> list[dict[str, Any]]:
    """The run's logged windows (none when it stopped before the first ``log_every`` steps)."""
    path = run / "log.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def median_rate(log: list[dict[str, Any]]) -> float | None:
    """Median images/s over the logged windows after the first (warm-up)."""
    rates = sorted(r["images_per_s"] for r in log[1:] if "images_per_s" in r)
    return rates[len(rates) // 2] if rates else None


def describe_run(run: Path, preset_name: str) -> dict[str, Any]:
    """Training figures of an existing run (``--ours-run``), read back from its log."""
    denoiser, preset = load_run(run, device="cpu")
    log = read_log(run)
    rate = median_rate(log)
    checkpoint = latest_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise SystemExit(f"{run}: no checkpoint to score")
    return {
        "model": f"ours:{preset.name} ({preset.formulation}) [reused run {run}]",
        "train_images_per_s_median_window": rate,
        "params": sum(p.numel() for p in denoiser.parameters()),
        "steps": load_checkpoint(checkpoint, tensors=False).step,  # the log lags the last step
        "batch_size": preset.batch_size,
        "train_images_per_s_overall": rate,  # no wall time recorded for a reused run
        "final_loss": log[-1].get("loss") if log else None,
    }


def train_ours(args: argparse.Namespace, data: Path, run: Path) -> dict[str, Any]:
    cfg = TrainConfig(
        data=str(data), out=str(run), preset=args.preset, max_steps=10**9, holdout=args.holdout,
        sample_every=10**9, ckpt_every=10**9, log_every=5 if args.smoke else 25, seed=args.seed,
        progress=not args.quiet, device=args.device, batch_size=args.batch_size,
        unet={"checkpointing": False} if args.no_checkpointing else {},
    )  # fmt: skip
    preset = effective_preset(cfg)
    params = sum(p.numel() for p in build_denoiser(preset).parameters())
    start = time.perf_counter()
    with sigterm_after(args.minutes * 60):
        result = train(cfg)
    wall = time.perf_counter() - start
    log = read_log(run)
    return {
        "model": f"ours:{preset.name} ({preset.formulation})",
        "train_images_per_s_median_window": median_rate(log),
        "params": params,
        "steps": result.step,
        "batch_size": preset.batch_size,
        "train_wall_s": round(wall, 1),
        "train_images_per_s_last_window": round(result.images_per_s, 2),
        "train_images_per_s_overall": round(result.step * preset.batch_size / wall, 2),
        "final_loss": result.last_loss,
    }


# --------------------------------------------------------------------------------------------------
# Baseline: diffusers UNet2DModel + DDPMScheduler


def baseline_unet(resolution: int, width: int) -> Any:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
    )  # fmt: skip


def matched_width(resolution: int, target_params: int) -> tuple[int, int]:
    """Baseline width (multiple of 16) whose parameter count is closest to ``target_params``."""
    best: tuple[int, int] | None = None
    for width in range(16, 257, 16):
        count = sum(p.numel() for p in baseline_unet(resolution, width).parameters())
        if best is None or abs(count - target_params) < abs(best[1] - target_params):
            best = (width, count)
        if count > target_params * 1.5:
            break
    assert best is not None
    return best


def train_baseline(
    args: argparse.Namespace, data: Path, resolution: int, width: int, device: str
) -> tuple[Any, dict[str, Any]]:
    from diffusers import DDPMScheduler

    start = time.perf_counter()
    source = open_source(data)
    train_names, _ = heldout_split(source.names, args.holdout)
    images = load_images(source, resolution, train_names)
    load_s = time.perf_counter() - start
    torch.manual_seed(args.seed)
    unet = baseline_unet(resolution, width).to(device).train()
    sched: Any = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    batch = args.batch_size or 32
    step, last_loss = 0, None
    alphas = sched.alphas_cumprod.to(device)
    while time.perf_counter() - start < args.minutes * 60:
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x0 = images[idx].float().div(127.5).sub(1.0)
        flip = torch.rand(batch, generator=gen) < 0.5
        x0[flip] = x0[flip].flip(-1)
        x0 = x0.to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = 1e-4 * min(1.0, (step + 1) / 500)
        loss = torch.nn.functional.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        last_loss = loss.detach()  # no per-step host sync: read once after the loop
    loss_value = float(last_loss) if last_loss is not None else math.nan  # syncs before timing
    wall = time.perf_counter() - start
    info = {
        "model": "diffusers UNet2DModel + DDPMScheduler (eps, linear beta, 1000 steps, no EMA)",
        "params": sum(p.numel() for p in unet.parameters()),
        "steps": step,
        "batch_size": batch,
        "train_wall_s": round(wall, 1),
        "train_images_per_s_overall": round(step * batch / wall, 2),
        "train_images_per_s_median_window": round(step * batch / max(wall - load_s, 1e-9), 2),
        "final_loss": loss_value,
    }
    return unet.eval(), info


@torch.no_grad()
def sample_baseline(unet: Any, n: int, kind: str, steps: int, seed: int, batch_size: int) -> torch.Tensor:
    from diffusers import DDIMScheduler, DDPMScheduler

    base: Any = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    sched: Any = base if kind == "ddpm" else DDIMScheduler.from_config(base.config)
    sched.set_timesteps(steps)
    device = next(unet.parameters()).device
    res = unet.config.sample_size
    noise = torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))
    step_gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for i in range(0, n, batch_size):
        x = noise[i : i + batch_size].to(device)
        for t in sched.timesteps:
            eps = unet(x, t).sample
            x = sched.step(eps, t, x, generator=step_gen).prev_sample
        out.append(((x.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------
# Sampling and scoring: separable, so a GPU box without the Inception weights can generate and this
# machine can score (``--samples-out`` there, ``--score`` here).


def ours_samples(args: argparse.Namespace, denoiser: Any, schedule: str, sampler: str) -> list[Sample]:
    """One sample set per NFE for ``sampler`` from the run's EMA model, with the run's σ schedule."""
    sets: list[Sample] = []
    for target in (int(v) for v in args.nfe.split(",")):
        steps = steps_for_nfe(sampler, target)
        images, seconds = generate_timed(
            denoiser, args.n, sampler, steps, args.seed, args.eval_batch, schedule
        )
        meta = {"model": "ours", "sampler": sampler, "steps": steps, "nfe": nfe(sampler, steps), "n": args.n}
        sets.append(Sample(meta | {"sampling_images_per_s": round(args.n / seconds, 3)}, images))
        print(
            f"   ours {sampler} NFE {meta['nfe']}: {sets[-1].meta['sampling_images_per_s']} img/s", flush=True
        )
    return sets


def baseline_samples(args: argparse.Namespace, unet: Any, kind: str) -> list[Sample]:
    """The baseline with DDPM (its own sampler, ``--ddpm-steps``) or DDIM at each ``--ddim-steps``."""
    if kind == "ddpm":
        plan = [(args.ddpm_steps, args.ddpm_n or args.n)]
    else:
        plan = [(int(v), args.n) for v in args.ddim_steps.split(",")]
    sets: list[Sample] = []
    for steps, n in plan:
        t0 = time.perf_counter()
        images = sample_baseline(unet, n, kind, steps, args.seed, args.eval_batch)
        meta = {"model": "baseline", "sampler": f"diffusers-{kind}", "steps": steps, "nfe": steps, "n": n}
        sets.append(
            Sample(meta | {"sampling_images_per_s": round(n / (time.perf_counter() - t0), 3)}, images)
        )
        print(
            f"   baseline {kind} {steps} steps, n={n}: {sets[-1].meta['sampling_images_per_s']} img/s",
            flush=True,
        )
    return sets


def all_samples(args: argparse.Namespace, run: Path, unet: Any, device: str, tag: str) -> list[Sample]:
    """Every row's samples: ours per sampler, then the baseline's DDPM and DDIM. With ``--samples-out``
    each group is saved as soon as it exists, so a time limit that cuts the run short keeps what is done."""
    denoiser, preset = load_run(run, device=device)
    groups: list[tuple[str, Callable[[], list[Sample]]]] = [
        (f"ours_{name}", functools.partial(ours_samples, args, denoiser, str(preset.schedule), name))
        for name in args.samplers.split(",")
    ]
    groups += [
        (f"baseline_{kind}", functools.partial(baseline_samples, args, unet, kind))
        for kind in ("ddpm", "ddim")
    ]
    sets: list[Sample] = []
    for group, make in groups:
        made = make()
        if args.samples_out:
            save_samples(args.out / f"samples_{tag}_{group}.npz", made)
        sets += made
    return sets


def save_samples(path: Path, sets: list[Sample]) -> None:
    """uint8 sample sets + their metadata in one ``.npz`` (written to a temp name, then renamed)."""
    import numpy as np

    arrays: dict[str, Any] = {f"set{i}": s.images.numpy() for i, s in enumerate(sets)}
    arrays["meta"] = np.array(json.dumps([s.meta for s in sets]))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_samples(path: Path) -> list[Sample]:
    import numpy as np

    with np.load(path) as data:
        metas = json.loads(str(data["meta"]))
        return [Sample(m, torch.from_numpy(data[f"set{i}"])) for i, m in enumerate(metas)]


def score_sets(
    sets: list[Sample], ref: RefStats, extractor: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for s in sets:
        results = score_images(s.images, ref, extractor, batch_size=args.eval_batch, seed=args.seed)
        rows.append(s.meta | metric_fields(results))
    return rows


def print_report(report: dict[str, Any], ref: RefStats) -> None:
    rows = report["rows"]
    base_kid = next(r["kid"] for r in rows if r["sampler"] == "diffusers-ddpm")
    print(f"\n== quality vs {ref.describe()} (KID ×1e3 ± std over subsets; FID biased at small n)")
    print(f"device: {report['device']}")
    for model in ("ours", "baseline"):
        info = report["train"][model]
        print(f"-- {model}: {info['model']}, {info['params'] / 1e6:.2f}M params, {info['steps']} steps, "
              f"{info['train_images_per_s_median_window']} train img/s (loop only), "
              f"{info['train_images_per_s_overall']} incl. data load and final checkpoint")  # fmt: skip
        print(format_table([r for r in rows if r["model"] == model]))
    print("\nratio KID(ours) / KID(baseline DDPM) per row (lower is better; < 1: ours wins):")
    for r in rows:
        if r["model"] == "ours" and base_kid > 0:
            print(f"  {r['sampler']:>8} NFE {r['nfe']:>4}: {r['kid'] / base_kid:8.3f}")


def grids(sets: list[Sample], out: Path, tag: str) -> None:
    """A 6x6 grid of the first images of ours at 20 NFE (or its first set) and of the baseline's DDPM."""
    ours = [s for s in sets if s.meta["model"] == "ours"]
    pick = next((s for s in ours if s.meta["nfe"] == 20), ours[0] if ours else None)
    if pick is not None:
        save_grid(pick.images[:36], out / f"quality_{tag}_ours_{pick.meta['sampler']}{pick.meta['nfe']}.png")
    for s in sets:
        if s.meta["sampler"] == "diffusers-ddpm":
            save_grid(s.images[:36], out / f"quality_{tag}_baseline_ddpm{s.meta['steps']}.png")


# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("FACEPREP_SHARED", "../shared")) / "data/utkface"
    )
    parser.add_argument("--preset", default="faces32")
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget per model")
    parser.add_argument(
        "--holdout", type=float, default=0.05, help="held-out fraction (~1185 UTKFace images)"
    )
    parser.add_argument("--n", type=int, default=1000, help="samples per row (FID/KID)")
    parser.add_argument("--ref-limit", type=int, default=None, help="at most this many held-out images")
    parser.add_argument("--samplers", default=",".join(SWEEP_SAMPLERS))
    parser.add_argument("--nfe", default="5,10,20,50")
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--ddim-steps", default="50", help="baseline DDIM steps, comma-separated")
    parser.add_argument("--ddpm-n", type=int, default=None, help="samples for the DDPM row (default: --n)")
    parser.add_argument("--ours-run", type=Path, default=None, help="reuse a trained run instead of training")
    parser.add_argument("--baseline-run", type=Path, default=None, help="reuse saved baseline weights")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="ours without activation checkpointing (big GPUs)"
    )
    parser.add_argument("--eval-batch", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest when shared)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-images", type=int, default=None, help="train/eval on a fixed subset")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--samples-out", action="store_true",
        help="train and sample only: write samples_<res>px_*.npz + train_<res>px.json to --out, no scoring",
    )  # fmt: skip
    parser.add_argument(
        "--score", type=Path, default=None, metavar="DIR",
        help="score the samples a --samples-out run wrote to DIR against --data's held-out split",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: checks the code path in minutes")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.n, args.ref_limit, args.limit_images = 0.5, 16, 48, 600
        args.nfe, args.samplers, args.ddpm_steps, args.ddim_steps = "6", ",".join(SWEEP_SAMPLERS), 50, "6"
        args.holdout, args.quiet = 0.1, True
    return args


def train_both(
    args: argparse.Namespace, data: Path, tag: str, resolution: int, device: str
) -> tuple[Path, Any, dict[str, Any]]:
    """Ours and the baseline, trained (or reloaded with ``--ours-run`` / ``--baseline-run``)."""
    if args.ours_run is not None:
        run = args.ours_run
        ours = describe_run(run, args.preset)
    else:
        print(f"== training ours ({args.preset}) for {args.minutes} min on {device}", flush=True)
        run = args.out / f"ours_{tag}"
        ours = train_ours(args, data, run)
    width, _ = matched_width(resolution, ours["params"])
    if args.baseline_run is not None:
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_pretrained(args.baseline_run).to(device).eval()
        base = json.loads((args.baseline_run / "train_info.json").read_text())
    else:
        print(f"== training baseline (width {width}) for {args.minutes} min", flush=True)
        unet, base = train_baseline(args, data, resolution, width, device)
        unet.save_pretrained(args.out / f"baseline_{tag}")  # so the scoring can be re-run alone
        (args.out / f"baseline_{tag}" / "train_info.json").write_text(json.dumps(base, indent=2))
    return run, unet, {"ours": ours, "baseline": base}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    resolution = effective_preset(TrainConfig(data="", out="", preset=args.preset)).unet.resolution
    tag = f"{resolution}px" + ("_smoke" if args.smoke else "")
    args.out.mkdir(parents=True, exist_ok=True)
    device = str(pick_device(0, args.device))
    work = Path(tempfile.mkdtemp(prefix="diffengine-quality-"))
    data = subset_folder(args.data.resolve(), args.limit_images, work)

    if args.score is not None:  # samples made elsewhere (a GPU box): score them here
        report = json.loads((args.score / f"train_{tag}.json").read_text())
        sets = [s for path in sorted(args.score.glob(f"samples_{tag}_*.npz")) for s in load_samples(path)]
        report["scored_on"] = device
    else:
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "device": device,
                  "torch_threads": torch.get_num_threads()}  # fmt: skip
        if device.startswith("cuda"):
            report["device"] = f"cuda: {torch.cuda.get_device_name()}, torch {torch.__version__}"
        run, unet, report["train"] = train_both(args, data, tag, resolution, device)
        print(json.dumps(report["train"], indent=2), flush=True)
        if args.samples_out:
            (args.out / f"train_{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
        print("== sampling", flush=True)
        sets = all_samples(args, run, unet, device, tag)
        if args.samples_out:
            print(f"wrote samples and train_{tag}.json to {args.out}; score them with --score DIR")
            return
    grids(sets, args.out, tag)
    extractor = default_extractor(device)
    ref: RefStats = reference_statistics(
        data, resolution, split="heldout", heldout_fraction=args.holdout, limit=args.ref_limit,
        extractor=extractor, batch_size=args.eval_batch,
    )  # fmt: skip
    report["ref"] = {"describe": ref.describe(), "count": ref.count, "preprocessing": ref.preprocessing}
    print(f"== scoring {len(sets)} sample sets vs {ref.describe()}", flush=True)
    report["rows"] = score_sets(sets, ref, extractor, args)
    print_report(report, ref)
    out_json = args.out / f"quality_{tag}.json"
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out_json} and sample grids in {args.out}")


if __name__ == "__main__":
    main()
