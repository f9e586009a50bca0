"""Whole-pipeline throughput of ``faceprep crop``: photos/s and faces/s with 1 and 2 worker processes.

Runs exactly what the CLI runs (detector → rotation fix → align → fill/resample → filters → dedup →
PNG + JSONL writer) on the shared photos of about 1 MP (0.3–2.5 MP), 256 px output, into a temporary
folder. Worker start-up (spawn, imports, model load) is timed separately and excluded from the rates;
the table quotes the median of ``--repeats`` runs and the speed-up against 1 worker measured in the
same run.

    PYTHONPATH=. python bench/faceprep_throughput.py [--photos DIR] [--limit 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from PIL import Image

from faceprep.cli import _init_worker, _work
from faceprep.dataset import DatasetWriter
from faceprep.imageio import iter_images
from faceprep.pipeline import FileResult, Pipeline, PipelineConfig, resolve_detector


def pick_photos(root: Path, limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` photos of 0.3–2.5 MP under ``root`` (sorted walk: the same every run)."""
    jobs = []
    for path in iter_images(root):
        with Image.open(path) as im:
            mp = im.width * im.height / 1e6
        if 0.3 <= mp <= 2.5:
            jobs.append((str(path), path.relative_to(root).as_posix()))
        if len(jobs) == limit:
            break
    return jobs


def run_once(jobs: list[tuple[str, str]], config: PipelineConfig, workers: int) -> tuple[float, float, int]:
    """(start-up seconds, processing seconds, faces found) for one run into a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp, DatasetWriter(tmp) as writer:
        t0 = time.perf_counter()
        results: Iterable[FileResult]
        pool = None
        if workers == 1:
            pipe = Pipeline(config)
            results = (pipe.process_file(*job) for job in jobs)
        else:
            cfg = replace(config, detector_options={**config.detector_options, "num_threads": 1})
            pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(cfg,)
            )
            pool.map(_noop, range(workers))  # wait until every worker has built its pipeline
            results = pool.imap(_work, jobs, chunksize=1)
        t1 = time.perf_counter()
        for result in results:
            writer.write(result)
        t2 = time.perf_counter()
        if pool is not None:
            pool.close()
            pool.join()
        return t1 - t0, t2 - t1, writer.stats.faces


def _noop(_: int) -> FileResult | None:
    return None


def main() -> None:
    default_photos = Path(os.environ.get("FACEPREP_SHARED", "../shared")) / "photos"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=default_photos)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    jobs = pick_photos(args.photos, args.limit)
    megapixels = []
    for path, _ in jobs:
        with Image.open(path) as im:
            megapixels.append(im.width * im.height / 1e6)
    name, note = resolve_detector(args.detector)
    if note:
        print(note)
    config = PipelineConfig(detector=name, size=args.size, dedup=False)
    print(
        f"{len(jobs)} photos, median {statistics.median(megapixels):.2f} MP, {args.size} px output, "
        f"detector {name}, {os.cpu_count()} CPUs, median of {args.repeats} runs"
    )
    header = ("workers", "start-up s", "run s", "photos/s", "faces/s", "vs 1 worker")
    print("  ".join(f"{h:>11}" for h in header))
    base: float | None = None
    for workers in args.workers:
        runs = [run_once(jobs, config, workers) for _ in range(args.repeats)]
        startup = statistics.median(r[0] for r in runs)
        seconds = statistics.median(r[1] for r in runs)
        faces = runs[0][2]
        photos_s, faces_s = len(jobs) / seconds, faces / seconds
        base = photos_s if base is None else base
        row = (f"{workers}", f"{startup:.2f}", f"{seconds:.2f}", f"{photos_s:.2f}", f"{faces_s:.2f}")
        print("  ".join(f"{v:>11}" for v in (*row, f"{photos_s / base:.2f}x")))


if __name__ == "__main__":
    main()
