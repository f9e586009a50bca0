"""``diffengine``: a thin click wrapper over train / generate / doctor / eval.

diffengine train DATA --preset faces64 --out RUN [--max-steps N] [--batch-size B] [--resume]
diffengine sample RUN --n 64 [--sampler ipndm --steps 20] --out grid.png   (default: the run's preset)
diffengine doctor DATA [--run RUN]
diffengine eval RUN --ref DATA
torchrun --nproc_per_node 4 -m diffengine train DATA ...      (multi-GPU / multi-node)
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import click

from diffengine.checkpoint import CheckpointError, CheckpointWarning
from diffengine.config import PRESETS, Precision, Preset
from diffengine.data import DataCheckError, DataError
from diffengine.evaluate_cli import eval_command
from diffengine.samplers import SAMPLERS
from diffengine.schedules import SCHEDULES

# Errors whose message already says what is wrong and where: shown as "Error: ..." with exit code 1.
USER_ERRORS = (DataError, DataCheckError, CheckpointError, FileNotFoundError, FileExistsError)


def _parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values as Python literals: 16, (1, 2), 'fourier') into a dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--unet")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def _out_option(default: Path | None, help: str) -> Any:
    """The ``--out PATH`` option every command takes."""
    return click.option(
        "--out", type=click.Path(path_type=Path), default=default, show_default=default is not None, help=help
    )


PRESET_OPTION = click.option(
    "--preset", type=click.Choice(sorted(PRESETS)), default="faces64", show_default=True
)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Show errors whose message already says what and where as "Error: ..." (exit 1), not a traceback,
    and a skipped damaged checkpoint as one "Warning: ..." line on stderr."""
    with warnings.catch_warnings():  # restores ``showwarning`` on exit
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, CheckpointWarning):
                click.echo(f"Warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        try:
            yield
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="faceprep-diffengine", message="%(version)s")
def main() -> None:
    """Train and sample unconditional face diffusion models (EDM by default)."""


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@_out_option(None, "Run folder [default: runs/PRESET].")
@PRESET_OPTION
@click.option("--max-steps", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Per process [default: preset's]."
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="[default: preset's]")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Warm-up steps [default: preset's].")
@click.option(
    "--grad-clip", type=click.FloatRange(min=0), default=None, help="0 disables [default: preset's]."
)
@click.option("--ema/--no-ema", default=True, show_default=True, help="Keep an EMA of the weights.")
@click.option("--ema-half-life-kimg", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp32", "fp16"]),
    default=None,
    help="auto: bf16 where the card supports it, else fp32; fp16 only if you must. [default: preset's: auto]",
)
@click.option("--formulation", type=click.Choice(["edm", "vp-eps", "vp-v"]), default=None)
@click.option("--channels-last/--no-channels-last", default=None, help="[default: on CUDA only]")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sample-every", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--ckpt-every", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--kid-every", type=click.IntRange(min=0), default=0, show_default=True, help="0: off.")
@click.option("--kid-n", type=click.IntRange(min=2), default=256, show_default=True, help="Samples per KID.")
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Fraction of images (fixed by file-name hash) kept out of training for evaluation.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:1 ...")
@click.option("--unet", "unet", multiple=True, metavar="KEY=VALUE", help="Override a UNetConfig field.")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True, help="Checkpoints kept.")
@click.option(
    "--streaming/--in-memory",
    default=None,
    help="Stream the data through DataLoader workers [default: in memory when it fits in 1 GiB].",
)
@click.option(
    "--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Streaming workers."
)
@click.option(
    "--task",
    type=click.Choice(["unconditional", "inpaint"]),
    default="unconditional",
    show_default=True,
    help="inpaint: the network also sees a masked image and its mask (for faceprep --fill generated).",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from this run's weights (same network; --task inpaint may add the condition input).",
)
def train(
    data: Path,
    out: Path | None,
    preset: str,
    max_steps: int,
    batch_size: int | None,
    lr: float | None,
    warmup: int | None,
    grad_clip: float | None,
    ema: bool,
    ema_half_life_kimg: float | None,
    precision: str | None,
    formulation: str | None,
    channels_last: bool | None,
    compile_: bool,
    seed: int,
    sample_every: int,
    ckpt_every: int,
    log_every: int,
    kid_every: int,
    kid_n: int,
    holdout: float,
    resume: bool,
    device: str,
    unet: tuple[str, ...],
    keep: int,
    streaming: bool | None,
    workers: int,
    task: str,
    init_from: Path | None,
) -> None:
    """Train on DATA: a faceprep output folder, any image folder, or a .zip of images."""
    from diffengine.inpaint import Task
    from diffengine.train import TrainConfig, effective_preset
    from diffengine.train import train as run_training

    cfg = TrainConfig(
        data=str(data),
        out=str(out or Path("runs") / preset),
        preset=preset,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        grad_clip=grad_clip,
        ema=ema,
        ema_half_life_kimg=ema_half_life_kimg,
        precision=cast(Precision | None, precision),
        channels_last=channels_last,
        compile=compile_,
        seed=seed,
        sample_every=sample_every,
        ckpt_every=ckpt_every,
        log_every=log_every,
        kid_every=kid_every,
        resume=resume,
        holdout=holdout,
        keep=keep,
        device=device,
        unet=_parse_overrides(unet),
        formulation=formulation,
        task=cast(Task, task),
        streaming=streaming,
        workers=workers,
        init_from=str(init_from) if init_from else None,
    )
    try:
        effective = effective_preset(cfg)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--unet") from exc
    eval_fn = _kid_hook(cfg, effective, kid_n) if kid_every else None
    try:
        with _user_errors():
            result = run_training(cfg, eval_fn=eval_fn)
    except ValueError as exc:  # bad option combinations (precision on this device, resume mismatch)
        raise click.UsageError(str(exc)) from exc
    click.echo(
        f"step {result.step}: loss {result.first_loss:.4f} -> {result.last_loss:.4f}, "
        f"{result.images_per_s:.1f} images/s; checkpoint {result.checkpoint}"
    )
    if result.interrupted:
        sys.exit(130)


def _kid_hook(cfg: Any, preset: Preset, n: int) -> Any:
    """KID on ``n`` EMA samples (the preset's sampler, steps and schedule) against the held-out split
    (or all of DATA when --holdout is 0)."""
    from diffengine.distributed import pick_device
    from diffengine.evaluate import default_extractor, make_kid_eval
    from diffengine.metrics.refstats import reference_statistics

    split = "heldout" if cfg.holdout > 0 else "all"
    # The device the main process trains (and so evaluates) on: one Inception load serves both the
    # reference statistics and every KID evaluation (it is cached per device).
    device = pick_device(int(os.environ.get("LOCAL_RANK", "0")), cfg.device)
    ref = reference_statistics(
        cfg.data, preset.unet.resolution, split=split, heldout_fraction=cfg.holdout or 0.1,
        extractor=default_extractor(str(device)),
    )  # fmt: skip
    return make_kid_eval(
        ref, n=n, sampler=preset.sampler, steps=preset.sample_steps, schedule=preset.schedule
    )


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="[default: the run's preset, e.g. 20]"
)
@click.option(
    "--sampler",
    type=click.Choice(sorted(SAMPLERS)),
    default=None,
    help="[default: the run's preset, e.g. ipndm]",
)
@click.option("--schedule", type=click.Choice(sorted(SCHEDULES)), default=None, help="[default: the run's]")
@_out_option(Path("samples.png"), "Grid PNG; single images go to a folder of the same name beside it.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the EMA.")
def sample(
    run: Path,
    n: int,
    steps: int | None,
    sampler: str | None,
    schedule: str | None,
    out: Path,
    seed: int,
    batch_size: int,
    device: str,
    raw: bool,
) -> None:
    """Generate N images from the latest checkpoint of RUN (EMA weights), with the run's sampler, steps
    and schedule unless told otherwise; deterministic samplers replay a CUDA graph on a GPU."""
    from diffengine.distributed import pick_device
    from diffengine.generate import generate, load_run, save_grid, save_images

    if not run.is_dir():
        raise click.BadParameter(f"{run}: not a run folder", param_hint="RUN")
    dev = pick_device(0, device)
    with _user_errors():
        denoiser, preset = load_run(run, use_ema=not raw, device=dev)
    images = generate(
        denoiser,
        n,
        sampler=sampler or preset.sampler,
        steps=steps or preset.sample_steps,
        seed=seed,
        batch_size=batch_size,
        device=dev,
        schedule=schedule or preset.schedule,
    )
    grid = save_grid(images, out)
    singles = save_images(images, out.with_suffix(""))
    click.echo(f"wrote {grid} and {len(singles)} images in {out.with_suffix('')}/")


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--run",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also check a trained run (EMA, scheduler pairing, precision) and denoise with it.",
)
@_out_option(Path("doctor"), "Folder for the denoising picture.")
@PRESET_OPTION
def doctor(data: Path, run: Path | None, out: Path, preset: str) -> None:
    """Check DATA (and optionally RUN) for the usual ways diffusion training fails; exit 1 on failures."""
    from diffengine.doctor import run_doctor

    with _user_errors():
        report = run_doctor(data, out=out, run=run, preset=preset)
    click.echo(report.format())
    if report.failed:
        sys.exit(1)


main.add_command(eval_command)
