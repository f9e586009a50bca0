"""``faceprep`` command line: ``faceprep crop SRC DST [options]`` and ``faceprep plugins``.

A thin click wrapper: it builds a ``PipelineConfig``, runs the pipeline over the files (in N spawned
worker processes when asked), and hands every result to the single ``DatasetWriter`` in this process.
"""

from __future__ import annotations

import ast
import errno
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import click

from faceprep import plugins
from faceprep.dataset import DELETED, DatasetError, DatasetWriter, RunStats
from faceprep.filters import DETECTOR_DEFAULT, FilterThresholds
from faceprep.geometry import MAX_SIZE, MIN_SIZE
from faceprep.outputs import OUTPUT_KINDS, OutputFormat, OutputKind
from faceprep.pipeline import DetectorFallbackWarning, FileResult, Pipeline, PipelineConfig
from faceprep.run_lock import DatasetLockedError
from faceprep.run_options import OptionsMismatchError, detector_identity, run_options

Job = tuple[str, str]  # (path to read, source name relative to SRC)


class OptionalNumber(click.ParamType):
    """A number, or ``off`` / ``none`` to disable a filter."""

    name = "number|off"

    def __init__(self, kind: type[float] | type[int], words: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.words = words  # other accepted words, passed through as they are

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, (int, float)):
            return value
        if str(value).lower() in ("off", "none"):
            return None
        if str(value).lower() in self.words:
            return str(value).lower()
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not a number (or 'off')", param, ctx)


class StageOption(click.ParamType):
    """``KEY=VALUE`` for a stage's factory; the value as a Python literal (16, 0.5, True) or a string."""

    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep or not key.strip().isidentifier():
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        try:
            return key.strip(), ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            return key.strip(), text.strip()


def _threshold_option(flag: str, kind: type[float] | type[int], default: float | None, help_text: str) -> Any:
    shown = "off" if default is None else default
    return click.option(
        flag, type=OptionalNumber(kind), default=default, show_default=str(shown), help=help_text
    )


_DEFAULTS = FilterThresholds()
SRC_OPTION = click.option(
    "--src",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Where the source photos are, if not where faceprep.json says.",
)
FILL_MODEL_OPTION = click.option(
    "--fill-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="diffengine run for --fill generated (unconditional, or trained with --task inpaint).",
)


def _threshold_options(command: Any) -> Any:
    """The filter thresholds as options of ``crop`` and ``refilter``, named like FilterThresholds fields."""
    options = [
        click.option(
            "--min-score",
            type=OptionalNumber(float, words=(DETECTOR_DEFAULT,)),
            default=_DEFAULTS.min_score,
            show_default=True,
            help="Minimum detection score; 'detector': the detector's own default (SCRFD 0.6, YuNet 0.8).",
        ),
        _threshold_option(
            "--min-eye-dist", float, _DEFAULTS.min_eye_dist, "Minimum eye distance in source px."
        ),
        _threshold_option(
            "--max-filled", float, _DEFAULTS.max_filled, "Maximum filled fraction of the crop."
        ),
        _threshold_option("--min-blur", float, _DEFAULTS.min_blur, "Minimum sharpness (Laplacian variance)."),
        _threshold_option("--max-yaw", float, _DEFAULTS.max_yaw, "Maximum |yaw| in degrees."),
        _threshold_option("--max-roll", float, _DEFAULTS.max_roll, "Maximum |roll| in degrees."),
        _threshold_option(
            "--dedup-distance", int, _DEFAULTS.dedup_distance, "Near-duplicate phash distance."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="faceprep-diffengine", message="faceprep %(version)s")
def main() -> None:
    """faceprep: turn a folder of photos into an FFHQ-style aligned face dataset."""
    warnings.simplefilter("ignore", plugins.PluginLoadWarning)  # said once, in one line, by each command


@main.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--size",
    type=click.IntRange(MIN_SIZE, MAX_SIZE),
    default=256,
    show_default=True,
    help="Output side (px).",
)
@click.option(
    "--workers", type=click.IntRange(1, 256), default=None, help="Worker processes [default: CPUs]."
)
@click.option(
    "--detector", default="auto", show_default=True, help="Detector plugin (see `faceprep plugins`)."
)
@click.option("--align", "aligner", default="ffhq", show_default=True, help="Aligner plugin.")
@click.option(
    "--fill", default="mirror-blur", show_default=True, help="Fill plugin for outside-photo pixels."
)
@click.option("--format", "image_format", type=click.Choice(["png", "jpg"]), default="png", show_default=True)
@click.option(
    "--output",
    "output_kind",
    type=click.Choice(OUTPUT_KINDS),
    default="folder",
    show_default=True,
    help="folder: HF imagefolder; zip: EDM/StyleGAN dataset_tool zip; wds: WebDataset tar shards.",
)
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True)
@_threshold_options
@click.option("--no-rotation-fix", is_flag=True, help="Do not re-detect on derotated photos.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Crop size factor (aligner).")
@click.option("--no-rotate", is_flag=True, help="Keep crops axis-aligned (aligner).")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help="SCRFD ONNX file.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N photos of SRC.")
@click.option("--contact-sheet/--no-contact-sheet", default=True, show_default=True)
@click.option(
    "--same-folder", is_flag=True, help="Allow DST to be SRC itself (crops are written beside the photos)."
)
@click.option(
    "--detector-opt", multiple=True, type=StageOption(), metavar="KEY=VALUE", help="Detector option."
)
@click.option("--align-opt", multiple=True, type=StageOption(), metavar="KEY=VALUE", help="Aligner option.")
@click.option("--fill-opt", multiple=True, type=StageOption(), metavar="KEY=VALUE", help="Fill option.")
@FILL_MODEL_OPTION
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: a process pool; ray: Ray Data actors (pip install 'faceprep-diffengine[ray]').",
)
@click.option("--ray-address", default=None, help="Ray cluster to join (e.g. auto); default: a local Ray.")
def crop(
    src: Path,
    dst: Path,
    size: int,
    workers: int | None,
    detector: str,
    aligner: str,
    fill: str,
    image_format: str,
    output_kind: OutputKind,
    jpeg_quality: int,
    no_rotation_fix: bool,
    scale: float,
    no_rotate: bool,
    model: str | None,
    limit: int | None,
    contact_sheet: bool,
    same_folder: bool,
    detector_opt: tuple[tuple[str, Any], ...],
    align_opt: tuple[tuple[str, Any], ...],
    fill_opt: tuple[tuple[str, Any], ...],
    fill_model: Path | None,
    engine: str,
    ray_address: str | None,
    **filter_thresholds: Any,
) -> None:
    """Detect, align, filter and write every face found under SRC into the dataset folder DST.

    Re-running on the same DST resumes: finished photos are skipped and nothing is written twice. A
    resume must use the same output options (DST/faceprep.json records them); one run at a time per DST.
    """
    if src.is_dir() and src.resolve() == dst.resolve() and not same_folder:
        raise click.UsageError(
            f"DST is SRC ({src}): the crops would be written among the photos. Write to another folder "
            "(e.g. a sub-folder, which is skipped as input), or pass --same-folder"
        )
    try:
        thresholds = FilterThresholds(**filter_thresholds)  # the --min-*/--max-*/--dedup-* options
        if model is not None and detector == "auto":
            detector = "scrfd"  # --model names an SCRFD file: that is the choice, nothing to fall back from
        with warnings.catch_warnings(record=True) as caught:  # the fallback note: one line below
            warnings.simplefilter("always", DetectorFallbackWarning)
            pipeline: Pipeline | None = Pipeline.from_names(  # validates names and options before any work
                detector,
                aligner,
                fill,
                size,
                detector_options={**({"model": model} if model else {}), **dict(detector_opt)},
                aligner_options={"scale": scale, "rotate": not no_rotate, **dict(align_opt)},
                fill_options=_fill_options(fill_model, fill_opt),
                thresholds=thresholds,
                rotation_fix=not no_rotation_fix,
                dedup=False,  # near-duplicates are checked by the single writer, across the whole run
            )
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from exc
    for failure in plugins.load_failures():
        click.echo(failure.message, err=True)
    for note in caught:
        if issubclass(note.category, DetectorFallbackWarning):
            click.echo(f"faceprep: {note.message}", err=True)
        else:
            warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
    assert pipeline is not None
    config = pipeline.config
    identity = detector_identity(pipeline.detector)
    fmt: Literal["png", "jpg"] = "jpg" if image_format == "jpg" else "png"
    options = run_options(
        config, image_format=fmt, jpeg_quality=jpeg_quality, output=output_kind, detector=identity
    )
    writer = DatasetWriter(
        dst,
        image_format=fmt,
        jpeg_quality=jpeg_quality,
        dedup_distance=thresholds.dedup_distance,
        options=options,
        detector=identity,
        output=OutputFormat(output_kind),
        src=src if src.is_dir() else src.parent,
    )
    if engine == "ray" and (reason := _ray_unavailable()):
        raise click.UsageError(reason)
    start = time.perf_counter()
    try:
        writer.open()
    except OptionsMismatchError as exc:
        raise click.UsageError(str(exc)) from exc
    except (DatasetLockedError, DatasetError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        for message in writer.notes:
            click.echo(f"faceprep: {message}", err=True)
        jobs = _jobs(src, dst, writer.own_files(), limit)
        todo = [job for job in jobs if job[1] not in writer.done]
        skipped = len(jobs) - len(todo)
        if skipped:
            click.echo(f"faceprep: resuming in {dst}: {skipped} of {len(jobs)} photos already done", err=True)
        if writer.deleted_by_hand:
            click.echo(
                f"faceprep: {len(writer.deleted_by_hand)} kept crop(s) were deleted by hand since the last "
                f"run; their records moved to {dst / DELETED} (those faces stay out)",
                err=True,
            )
        n_workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
        if n_workers > 1:
            pipeline = None  # each worker builds its own: free this one's model session now
        results = (
            _ray_results(todo, config, n_workers, ray_address)
            if engine == "ray"
            else _results(todo, pipeline, config, n_workers)
        )
        _run(results, len(todo), writer)
        sheet = writer.finish(contact_sheet=contact_sheet)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise click.ClickException(
            f"no space left on the disk while writing {dst} ({exc.filename or 'a file'}): the "
            f"{len(writer.done)} photos finished so far are saved intact; free some space and run the "
            "same command again to resume"
        ) from exc
    finally:
        writer.close()
    elapsed = time.perf_counter() - start
    _summary(writer.stats, skipped, elapsed, n_workers, dst, sheet)
    if writer.stats.photos and writer.stats.errors == writer.stats.photos:
        raise click.ClickException(
            f"every input failed ({writer.stats.errors} files; see {dst / 'errors.jsonl'})"
        )


def _fill_options(model: Path | None, options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """--fill-opt KEY=VALUE pairs, with --fill-model as the fill's ``model``."""
    return {**({"model": str(model.resolve())} if model else {}), **dict(options)}


def _jobs(src: Path, dst: Path, own_files: set[str], limit: int | None) -> list[Job]:
    """(path, source name) of every photo under SRC, leaving out DST and every file faceprep wrote."""
    from faceprep.imageio import iter_images

    base = src if src.is_dir() else src.parent
    out = dst.resolve()

    def ours(path: Path) -> bool:  # DST is SRC, or holds it: its crops and previews are no input
        resolved = path.resolve()
        return resolved.is_relative_to(out) and resolved.relative_to(out).as_posix() in own_files

    paths = [p for p in iter_images(src, exclude=[dst]) if not ours(p)]
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise click.ClickException(f"no image files found under {src}")
    return [(str(p), p.relative_to(base).as_posix()) for p in paths]


def _run(results: Iterator[FileResult], total: int, writer: DatasetWriter) -> None:
    """Hand every result to the writer, with a progress bar and one warning line per failed photo."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="photo", desc="faceprep", disable=None, file=sys.stderr)
    try:
        for result in results:
            writer.write(result)
            if result.error is not None:
                tqdm.write(f"warning: {result.error.path}: {result.error.reason}", file=sys.stderr)
            bar.set_postfix(faces=writer.stats.faces, kept=writer.stats.kept, refresh=False)
            bar.update(1)
    except WorkerStartError as exc:
        raise click.ClickException(f"a worker process could not start: {exc}") from exc
    except ConnectionError as exc:  # --ray-address with no cluster there
        raise click.ClickException(f"cannot reach the Ray cluster: {exc}") from exc
    finally:
        bar.close()


def _ray_unavailable() -> str | None:
    from faceprep.ray_engine import ray_available

    return ray_available()


def _ray_results(
    todo: list[Job], config: PipelineConfig, n_workers: int, address: str | None
) -> Iterator[FileResult]:
    from faceprep.ray_engine import iter_results_ray  # imports this module: not at the top

    return iter_results_ray(todo, config, n_workers, address)


def _results(
    todo: list[Job], pipeline: Pipeline | None, config: PipelineConfig, n_workers: int
) -> Iterator[FileResult]:
    """Results in input order (so near-duplicate decisions do not depend on scheduling).

    ``pipeline`` is the main process's own, used only when there is one worker."""
    if pipeline is not None:
        for path, source in todo:
            yield pipeline.process_file(path, source)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(n_workers, initializer=_init_worker, initargs=(worker_config(config),)) as pool:
        yield from pool.imap(_work, todo, chunksize=1)


def worker_config(config: PipelineConfig) -> PipelineConfig:
    """A worker's config: one inference thread, if the detector's factory takes ``num_threads``."""
    if not plugins.accepts_option("detector", config.detector, "num_threads"):
        return config
    return replace(config, detector_options={**config.detector_options, "num_threads": 1})


class WorkerStartError(RuntimeError):
    """A worker could not build its pipeline (raised from its first job, so the pool does not respawn)."""


_WORKER: Pipeline | None = None
_WORKER_ERROR: str | None = None


def _init_worker(config: PipelineConfig) -> None:
    """Build this worker's pipeline once; one thread per process (the processes are the parallelism).

    It never raises: a failing initializer makes ``multiprocessing.Pool`` respawn workers forever, so the
    failure is kept and reported by the worker's first job instead."""
    global _WORKER, _WORKER_ERROR
    try:
        import cv2
        import torch

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        _WORKER = Pipeline(config)
    except Exception as exc:
        _WORKER_ERROR = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _work(job: Job) -> FileResult:
    if _WORKER is None:
        raise WorkerStartError(_WORKER_ERROR or "worker not initialised")
    return _WORKER.process_file(*job)


def _summary(
    stats: RunStats, skipped: int, elapsed: float, workers: int, dst: Path, sheet: Path | None
) -> None:
    rate = stats.photos / elapsed if elapsed > 0 else 0.0
    rejected = stats.faces - stats.kept
    reasons = ", ".join(f"{name} {n}" for name, n in stats.rejected_by.most_common()) or "none"
    lines = [
        f"photos      {stats.photos} processed, {skipped} skipped (already done), {stats.errors} errors",
        f"faces       {stats.faces} found, {stats.kept} kept, {rejected} rejected ({reasons})",
        f"time        {elapsed:.1f} s, {rate:.2f} photos/s, {workers} worker(s)",
        f"output      {dst}" + (f"  (contact sheet: {sheet.relative_to(dst)})" if sheet else ""),
    ]
    click.echo("\n".join(lines))


@main.command()
@click.argument("dst", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Other than loopback: a warning.")
@SRC_OPTION
@click.option("--no-browser", is_flag=True, help="Only serve; do not open a browser.")
def review(dst: Path, port: int, host: str, src: Path | None, no_browser: bool) -> None:
    """Look at the faces of the dataset DST, kept and rejected, and keep or reject them in a browser.

    Decisions go to DST/review.jsonl; training and the dataset card honour them."""
    from faceprep.review import serve

    try:
        serve(dst, host=host, port=port, src=src, open_browser=not no_browser)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from exc


@main.command()
@click.argument("dst", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_threshold_options
@SRC_OPTION
@click.option("--dry-run", is_flag=True, help="Only say what would change.")
@click.pass_context
def refilter(ctx: click.Context, dst: Path, src: Path | None, dry_run: bool, **thresholds: Any) -> None:
    """Apply new thresholds to DST from the stored filter values (no detection again).

    Only the thresholds given here change; the others keep the values the dataset was made with."""
    from click.core import ParameterSource

    from faceprep.refilter import RefilterError
    from faceprep.refilter import refilter as apply_thresholds

    given = {
        k: v for k, v in thresholds.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE
    }
    if not given:
        raise click.UsageError("give at least one threshold to change, e.g. --max-yaw 35")
    try:
        summary = apply_thresholds(dst, given, src=src, dry_run=dry_run)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except (RefilterError, DatasetLockedError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(summary.lines()))


@main.command()
@click.argument("dst", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--fill", default="generated", show_default=True, help="Fill plugin to re-make the fill with.")
@FILL_MODEL_OPTION
@click.option("--fill-opt", multiple=True, type=StageOption(), metavar="KEY=VALUE", help="Fill option.")
@click.option(
    "--min-filled",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Re-make crops with more than this fraction filled.",
)
@SRC_OPTION
def refill(
    dst: Path,
    fill: str,
    fill_model: Path | None,
    fill_opt: tuple[tuple[str, Any], ...],
    min_filled: float,
    src: Path | None,
) -> None:
    """Re-make the outside-the-photo part of DST's crops with another fill (e.g. a model trained on them).

    Crops are replaced atomically from their recorded source photo and quad; a killed refill resumes."""
    from tqdm import tqdm

    from faceprep.refill import RefillError
    from faceprep.refill import refill as remake

    bar = tqdm(unit="face", desc="refill", disable=None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        summary = remake(
            dst,
            fill,
            fill_options=_fill_options(fill_model, fill_opt),
            min_filled=min_filled,
            src=src,
            progress=progress,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except (RefillError, DatasetLockedError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()
    click.echo("\n".join(summary.lines()))


@main.command("plugins")
def list_plugins() -> None:
    """List the installed detectors, aligners and fills, and whether each can run here."""
    for kind in plugins.KINDS:
        click.echo(f"{kind}s:")
        try:
            specs = plugins.stages(kind)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        for spec in sorted(specs.values(), key=lambda s: (-s.priority, s.name)):
            reason = plugins.unavailable_reason(spec)
            status = "available" if reason is None else "unavailable"
            click.echo(f"  {spec.name:<14} {status:<12}  {spec.description}")
            if reason is not None:
                click.echo(f"  {'':<14} why: {reason}")
    failures = plugins.load_failures()
    if failures:
        click.echo("skipped plugins:")
        for failure in failures:
            click.echo(f"  {failure.name:<14} {failure.origin}: {failure.reason}")


if __name__ == "__main__":
    main()
