"""``faceprep`` command line: ``faceprep crop SRC DST [options]`` and ``faceprep plugins``.

A thin click wrapper: it builds a ``PipelineConfig``, runs the pipeline over the files (in N spawned
worker processes when asked), and hands every result to the single ``DatasetWriter`` in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import click

from faceprep import plugins
from faceprep.dataset import DatasetWriter, RunStats
from faceprep.filters import DETECTOR_DEFAULT, FilterThresholds
from faceprep.geometry import MAX_SIZE, MIN_SIZE
from faceprep.pipeline import FileResult, Pipeline, PipelineConfig, resolve_detector

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


def _threshold_option(flag: str, kind: type[float] | type[int], default: float | None, help_text: str) -> Any:
    shown = "off" if default is None else default
    return click.option(
        flag, type=OptionalNumber(kind), default=default, show_default=str(shown), help=help_text
    )


_DEFAULTS = FilterThresholds()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="faceprep-diffengine", message="faceprep %(version)s")
def main() -> None:
    """faceprep: turn a folder of photos into an FFHQ-style aligned face dataset."""


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
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True)
@click.option(
    "--min-score",
    type=OptionalNumber(float, words=(DETECTOR_DEFAULT,)),
    default=_DEFAULTS.min_score,
    show_default=True,
    help="Minimum detection score; 'detector': the detector's own default (SCRFD 0.6, YuNet 0.8).",
)
@_threshold_option("--min-eye-dist", float, _DEFAULTS.min_eye_dist, "Minimum eye distance in source px.")
@_threshold_option("--max-filled", float, _DEFAULTS.max_filled, "Maximum filled fraction of the crop.")
@_threshold_option("--min-blur", float, _DEFAULTS.min_blur, "Minimum sharpness (Laplacian variance).")
@_threshold_option("--max-yaw", float, _DEFAULTS.max_yaw, "Maximum |yaw| in degrees.")
@_threshold_option("--max-roll", float, _DEFAULTS.max_roll, "Maximum |roll| in degrees.")
@_threshold_option("--dedup-distance", int, _DEFAULTS.dedup_distance, "Near-duplicate phash distance.")
@click.option("--no-rotation-fix", is_flag=True, help="Do not re-detect on derotated photos.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Crop size factor (aligner).")
@click.option("--no-rotate", is_flag=True, help="Keep crops axis-aligned (aligner).")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help="SCRFD ONNX file.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N photos of SRC.")
@click.option("--contact-sheet/--no-contact-sheet", default=True, show_default=True)
def crop(
    src: Path,
    dst: Path,
    size: int,
    workers: int | None,
    detector: str,
    aligner: str,
    fill: str,
    image_format: str,
    jpeg_quality: int,
    no_rotation_fix: bool,
    scale: float,
    no_rotate: bool,
    model: str | None,
    limit: int | None,
    contact_sheet: bool,
    **filter_thresholds: Any,
) -> None:
    """Detect, align, filter and write every face found under SRC into the dataset folder DST.

    Re-running on the same DST resumes: finished photos are skipped and nothing is written twice.
    """
    from faceprep.imageio import iter_images

    try:
        thresholds = FilterThresholds(**filter_thresholds)  # the --min-*/--max-*/--dedup-* options
        if model is not None and detector == "auto":
            detector = "scrfd"  # --model names an SCRFD file: that is the choice, nothing to fall back from
        name, note = resolve_detector(detector)
        detector_options = {"model": model} if model else {}
        config = PipelineConfig(
            detector=name,
            aligner=aligner,
            fill=fill,
            size=size,
            detector_options=detector_options,
            aligner_options={"scale": scale, "rotate": not no_rotate},
            thresholds=thresholds,
            rotation_fix=not no_rotation_fix,
            dedup=False,  # near-duplicates are checked by the single writer, across the whole run
        )
        pipeline: Pipeline | None = Pipeline(config)  # validates names and options before any work
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from exc
    if note:
        click.echo(f"faceprep: {note}", err=True)

    base = src if src.is_dir() else src.parent
    paths = iter_images(src, exclude=[dst])
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise click.ClickException(f"no image files found under {src}")
    jobs: list[Job] = [(str(p), p.relative_to(base).as_posix()) for p in paths]

    fmt: Literal["png", "jpg"] = "jpg" if image_format == "jpg" else "png"
    writer = DatasetWriter(
        dst, image_format=fmt, jpeg_quality=jpeg_quality, dedup_distance=thresholds.dedup_distance
    )
    start = time.perf_counter()
    with writer:
        todo = [job for job in jobs if job[1] not in writer.done]
        skipped = len(jobs) - len(todo)
        if skipped:
            click.echo(f"faceprep: resuming in {dst}: {skipped} of {len(jobs)} photos already done", err=True)
        n_workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
        if n_workers > 1:
            pipeline = None  # each worker builds its own: free this one's model session now
        _run(todo, pipeline, config, n_workers, writer)
    elapsed = time.perf_counter() - start
    sheet = writer.write_contact_sheet() if contact_sheet else None
    _summary(writer.stats, skipped, elapsed, n_workers, dst, sheet)
    if writer.stats.photos and writer.stats.errors == writer.stats.photos:
        raise click.ClickException(
            f"every input failed ({writer.stats.errors} files; see {dst / 'errors.jsonl'})"
        )


def _run(
    todo: list[Job], pipeline: Pipeline | None, config: PipelineConfig, n_workers: int, writer: DatasetWriter
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="photo", desc="faceprep", disable=None, file=sys.stderr)
    try:
        for result in _results(todo, pipeline, config, n_workers):
            writer.write(result)
            if result.error is not None:
                tqdm.write(f"warning: {result.error.path}: {result.error.reason}", file=sys.stderr)
            bar.set_postfix(faces=writer.stats.faces, kept=writer.stats.kept, refresh=False)
            bar.update(1)
    finally:
        bar.close()


def _results(
    todo: list[Job], pipeline: Pipeline | None, config: PipelineConfig, n_workers: int
) -> Iterator[FileResult]:
    """Results in input order (so near-duplicate decisions do not depend on scheduling).

    ``pipeline`` is the main process's own, used only when there is one worker."""
    if pipeline is not None:
        for path, source in todo:
            yield pipeline.process_file(path, source)
        return
    worker_config = replace(config, detector_options={**config.detector_options, "num_threads": 1})
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(n_workers, initializer=_init_worker, initargs=(worker_config,)) as pool:
        yield from pool.imap(_work, todo, chunksize=1)


_WORKER: Pipeline | None = None


def _init_worker(config: PipelineConfig) -> None:
    """Build this worker's pipeline once; one thread per process (the processes are the parallelism)."""
    global _WORKER
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _WORKER = Pipeline(config)


def _work(job: Job) -> FileResult:
    assert _WORKER is not None, "worker not initialised"
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
        f"output      {dst}" + (f"  (contact sheet: {sheet.name})" if sheet else ""),
    ]
    click.echo("\n".join(lines))


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


if __name__ == "__main__":
    main()
