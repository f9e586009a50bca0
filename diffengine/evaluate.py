"""Evaluate a trained run: generate samples, embed them with Inception, compare with reference statistics.

- :func:`evaluate_run` — one sampler/step count → FID and KID (optionally precision/recall), with the
  sample counts, sampler, steps, NFE and wall time; writes JSON.
- :func:`sweep` — quality vs NFE for each sampler: a table (JSON, printed) and a PNG plot.
- :func:`kid_during_training` — small-sample KID that the training loop calls every N steps.
- :func:`score_images` — metrics of any uint8 images (also used by ``bench/quality.py``).

FID from fewer than ~10k samples is biased upward (it depends on n); KID is unbiased, so small-n
comparisons should read KID. Every figure is printed next to its sample count.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from diffengine.config import DEFAULT_SAMPLE_STEPS, DEFAULT_SAMPLER, DEFAULT_SCHEDULE, Preset
from diffengine.metrics.fid import MetricResult, fid_from_features, kid, precision_recall
from diffengine.metrics.inception import InceptionFeatures, default_inception
from diffengine.metrics.refstats import RefStats, reference_statistics

__all__ = [
    "FID_PAPER_N",
    "SWEEP_SAMPLERS",
    "evaluate_run",
    "generate_timed",
    "kid_during_training",
    "make_kid_eval",
    "score_images",
    "steps_for_nfe",
    "sweep",
]

FID_PAPER_N = 10_000  # below this FID is reported but flagged as not paper-comparable


default_extractor = default_inception  # the pinned Inception, loaded once per process and device


def score_images(
    images: torch.Tensor,
    ref: RefStats,
    extractor: InceptionFeatures | None = None,
    *,
    batch_size: int = 64,
    with_fid: bool = True,
    with_pr: bool = False,
    kid_subsets: int = 100,
    seed: int = 0,
) -> list[MetricResult]:
    """FID/KID (and optional precision/recall) of uint8 ``(N, 3, H, W)`` images against ``ref``."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    if images.shape[-1] != ref.resolution or images.shape[-2] != ref.resolution:
        raise ValueError(
            f"samples are {images.shape[-2]}x{images.shape[-1]} but the reference is at {ref.resolution}px"
        )
    extractor = extractor or default_extractor()
    if extractor.preprocessing_id != ref.preprocessing:
        raise ValueError(
            f"reference statistics use {ref.preprocessing!r}, the extractor {extractor.preprocessing_id!r}"
        )
    feats = extractor.embed(images, batch_size).numpy()
    results: list[MetricResult] = []
    if with_fid:
        fid = fid_from_features(feats, ref.gaussian)
        if fid.n_gen < FID_PAPER_N:
            fid = MetricResult(
                "fid", fid.value, fid.n_gen, fid.n_ref, extra={"note": f"n<{FID_PAPER_N}: biased upward"}
            )
        results.append(fid)
    results.append(kid(feats, ref.features, num_subsets=kid_subsets, seed=seed))
    if with_pr:
        results.extend(precision_recall(feats, ref.features))
    return results


# Quality-vs-NFE sweep default: the first-order baseline, the EDM sampler and the multistep solvers.
SWEEP_SAMPLERS = ("euler", "heun", "dpmpp2m", "dpmpp3m", "ipndm", "ddim")


def steps_for_nfe(sampler: str, target_nfe: int) -> int:
    """Smallest step count whose NFE (``diffengine.samplers.nfe``) reaches ``target_nfe``."""
    from diffengine.samplers import nfe

    for steps in range(1, target_nfe + 1):
        if nfe(sampler, steps) >= target_nfe:
            return steps
    return target_nfe


def _load(run_dir: str | Path, device: str) -> tuple[Any, Preset]:
    """The run's EMA denoiser and its preset (the sampler, steps and σ schedule it samples with)."""
    from diffengine.generate import load_run

    return load_run(Path(run_dir), device=device)


def generate_timed(
    denoiser: Any,
    n: int,
    sampler: str,
    steps: int,
    seed: int,
    batch_size: int,
    schedule: str = DEFAULT_SCHEDULE,
) -> tuple[torch.Tensor, float]:
    from diffengine.generate import generate

    start = time.perf_counter()
    images = generate(
        denoiser, n=n, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, schedule=schedule
    )
    return images, time.perf_counter() - start


def _row(
    results: list[MetricResult], *, sampler: str, steps: int, n: int, gen_s: float, total_s: float
) -> dict[str, Any]:
    from diffengine.samplers import nfe

    row: dict[str, Any] = {
        "sampler": sampler,
        "steps": steps,
        "nfe": nfe(sampler, steps),
        "n": n,
        "wall_time_s": round(total_s, 3),
        "generate_time_s": round(gen_s, 3),
        "sampling_images_per_s": round(n / gen_s, 3) if gen_s > 0 else None,
    }
    return row | metric_fields(results)


def metric_fields(results: Sequence[MetricResult]) -> dict[str, Any]:
    """``{"metrics": [...], metric: value, metric_std: std}``: the metric part of a result row."""
    fields: dict[str, Any] = {"metrics": [r.as_dict() for r in results]}
    for r in results:
        fields[r.metric] = r.value
        if r.std is not None:
            fields[f"{r.metric}_std"] = r.std
    return fields


def format_results(results: Sequence[MetricResult]) -> str:
    return "\n".join(f"  {r}" for r in results)


def evaluate_run(
    run_dir: str | Path,
    ref: str | Path | RefStats,
    n: int = FID_PAPER_N,
    sampler: str | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    *,
    split: str = "all",
    heldout_fraction: float = 0.1,
    ref_limit: int | None = None,
    with_pr: bool = False,
    device: str = "cpu",
    out: str | Path | None = None,
    extractor: InceptionFeatures | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Generate ``n`` samples from the run's (EMA) model and score them against ``ref``; ``sampler`` and
    ``steps`` default to the run's preset (``Preset.sampler`` / ``sample_steps``)."""
    start = time.perf_counter()
    extractor = extractor or default_extractor(device)
    denoiser, preset = _load(run_dir, device)
    sampler = sampler or preset.sampler
    steps = steps or preset.sample_steps
    schedule = preset.schedule
    images, gen_s = generate_timed(denoiser, n, sampler, steps, seed, batch_size, schedule)
    stats = (
        ref
        if isinstance(ref, RefStats)
        else _refstats(ref, images.shape[-1], split, heldout_fraction, ref_limit, extractor, batch_size)
    )
    results = score_images(images, stats, extractor, batch_size=batch_size, with_pr=with_pr, seed=seed)
    row = _row(results, sampler=sampler, steps=steps, n=n, gen_s=gen_s, total_s=time.perf_counter() - start)
    row.update(_context(run_dir, stats, seed), schedule=schedule)
    if verbose:
        print(f"{run_dir}: {sampler} {steps} steps (NFE {row['nfe']}), {n} samples vs {stats.describe()}")
        print(format_results(results))
        print(f"  wall time {row['wall_time_s']:.1f} s (generation {gen_s:.1f} s)")
    if out is not None:
        _write_json(Path(out), row)
    return row


def _refstats(
    ref: str | Path,
    resolution: int,
    split: str,
    heldout_fraction: float,
    limit: int | None,
    extractor: InceptionFeatures,
    batch_size: int,
) -> RefStats:
    return reference_statistics(
        ref,
        resolution,
        split=split,
        heldout_fraction=heldout_fraction,
        limit=limit,
        extractor=extractor,
        batch_size=batch_size,
    )


def _context(run_dir: str | Path, stats: RefStats, seed: int) -> dict[str, Any]:
    return {
        "run": str(run_dir),
        "ref": stats.describe(),
        "ref_count": stats.count,
        "ref_fingerprint": stats.fingerprint,
        "preprocessing": stats.preprocessing,
        "resolution": stats.resolution,
        "seed": seed,
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def sweep(
    run_dir: str | Path,
    ref: str | Path | RefStats,
    n: int = 1000,
    samplers: Sequence[str] = SWEEP_SAMPLERS,
    nfes: Sequence[int] = (10, 20, 50),
    batch_size: int = 64,
    seed: int = 0,
    *,
    split: str = "all",
    heldout_fraction: float = 0.1,
    ref_limit: int | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    extractor: InceptionFeatures | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Quality vs NFE for each sampler: one row per (sampler, NFE); table printed, JSON + PNG written."""
    extractor = extractor or default_extractor(device)
    denoiser, preset = _load(run_dir, device)
    schedule = preset.schedule
    stats: RefStats | None = ref if isinstance(ref, RefStats) else None
    rows: list[dict[str, Any]] = []
    for name in samplers:
        for target in nfes:
            steps = steps_for_nfe(name, target)
            start = time.perf_counter()
            images, gen_s = generate_timed(denoiser, n, name, steps, seed, batch_size, schedule)
            if stats is None:
                assert not isinstance(ref, RefStats)
                stats = _refstats(
                    ref, images.shape[-1], split, heldout_fraction, ref_limit, extractor, batch_size
                )
            results = score_images(images, stats, extractor, batch_size=batch_size, seed=seed)
            row = _row(
                results, sampler=name, steps=steps, n=n, gen_s=gen_s, total_s=time.perf_counter() - start
            )
            rows.append(row)
            if verbose:
                print(_table_line(row), flush=True)
    assert stats is not None
    table = {"rows": rows, "schedule": schedule, **_context(run_dir, stats, seed)}
    if verbose:
        print(format_table(rows))
    if out is not None:
        out_path = Path(out)
        _write_json(out_path, table)
        plot_sweep(rows, out_path.with_suffix(".png"), title=f"{run_dir} vs {stats.describe()}")
    return table


def _table_line(row: dict[str, Any]) -> str:
    fid = f"{row['fid']:9.2f}" if "fid" in row else " " * 9
    kid_v = row.get("kid", math.nan) * 1e3
    kid_s = row.get("kid_std", math.nan) * 1e3
    return (
        f"{row['sampler']:>10} {row['steps']:>5} {row['nfe']:>5} {row['n']:>6} {fid} "
        f"{kid_v:9.2f} ± {kid_s:6.2f} {row.get('sampling_images_per_s') or 0:9.2f}"
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width table: sampler, steps, NFE, n, FID, KID×1e3 ± std, sampling images/s."""
    header = (
        f"{'sampler':>10} {'steps':>5} {'NFE':>5} {'n':>6} {'FID':>9} "
        + f"{'KID×1e3':>9}   {'std':>6} {'img/s':>9}"
    )
    return "\n".join([header, *(_table_line(r) for r in rows)])


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """FID and KID vs NFE, one line per sampler (log-x)."""
    from matplotlib.figure import Figure  # the object API: the caller's backend is left alone

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for metric, ax in zip(("fid", "kid"), axes, strict=True):
        for name in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r["nfe"], r[metric]) for r in rows if r["sampler"] == name and metric in r)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        n = rows[0]["n"] if rows else 0
        ax.set(xscale="log", xlabel="NFE", ylabel=f"{metric.upper()} (n={n})", title=metric.upper())
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def kid_during_training(
    denoiser: Any,
    ref: RefStats,
    n: int = 256,
    sampler: str = DEFAULT_SAMPLER,
    steps: int = DEFAULT_SAMPLE_STEPS,
    seed: int = 0,
    batch_size: int = 64,
    extractor: InceptionFeatures | None = None,
    schedule: str = DEFAULT_SCHEDULE,
) -> dict[str, Any]:
    """Small-sample KID of ``denoiser`` (fixed seed → comparable across steps) for the training log.

    Returns ``{"kid", "kid_std", "n", "sampler", "steps", "nfe", "wall_time_s"}``.
    """
    from diffengine.samplers import nfe

    start = time.perf_counter()
    if extractor is None:
        params = next(iter(denoiser.parameters()), None) if isinstance(denoiser, torch.nn.Module) else None
        extractor = default_extractor(str(params.device) if params is not None else "cpu")
    images, _ = generate_timed(denoiser, n, sampler, steps, seed, batch_size, schedule)
    (result,) = score_images(
        images, ref, extractor, batch_size=batch_size, with_fid=False, seed=seed, kid_subsets=50
    )
    return {
        "kid": result.value,
        "kid_std": result.std,
        "n": n,
        "n_ref": result.n_ref,
        "sampler": sampler,
        "steps": steps,
        "nfe": nfe(sampler, steps),
        "wall_time_s": time.perf_counter() - start,
    }


def make_kid_eval(ref: RefStats, **settings: Any) -> Callable[[Any, int], dict[str, Any]]:
    """An ``eval_fn(denoiser, step) -> dict`` for ``diffengine.train.train`` (``TrainConfig.kid_every``):
    :func:`kid_during_training` against ``ref`` with ``settings`` (its keywords: n, sampler, steps, ...).
    An unknown keyword is a ``TypeError`` here, not N steps into training."""
    inspect.signature(kid_during_training).bind(None, ref, **settings)

    def eval_fn(denoiser: Any, step: int) -> dict[str, Any]:
        return kid_during_training(denoiser, ref, **settings)

    return eval_fn
