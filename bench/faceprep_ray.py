"""``faceprep crop`` throughput, local engine vs Ray Data engine, on the same CPUs and the same photos.

Both engines run the whole pipeline into a ``DatasetWriter`` in a temporary folder (256 px PNG): the
local one through the CLI's spawn pool (``faceprep.cli._results``), the Ray one through
``faceprep.ray_engine.iter_results_ray`` with as many actors as local workers. Times: ``ray.init``
apart (a cluster is already running); ``total`` from the engine's start to the last written photo
(worker/actor start-up, imports and model loads included), for all ``--limit`` photos and for the first
``--base`` of them; ``marginal`` = the other photos over the difference of the two totals, i.e. the
rate once started (start-up cancels out). The overhead ratio is local photos/s over Ray photos/s
(1.00 = no overhead). It also checks that both
folders hold the same records and crop bytes, and measures what moving one result costs (pickle).

    PYTHONPATH=. python bench/faceprep_ray.py [--photos DIR] [--limit 20] [--base 5] [--workers 2]
        [--repeats 1] [--model scrfd.onnx] [--ray-address auto]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from faceprep_throughput import pick_photos  # bench/ is on the path when a bench script runs

from faceprep.cli import _results
from faceprep.dataset import ERRORS, METADATA, REJECTED, DatasetWriter, read_jsonl
from faceprep.pipeline import FileResult, PipelineConfig, resolve_detector

Jobs = list[tuple[str, str]]


def timed_run(results: Iterator[FileResult], dst: Path) -> tuple[float, int, int]:
    """(total s, photos, faces) for one engine run written into ``dst``."""
    start = time.perf_counter()
    with DatasetWriter(dst) as writer:
        for result in results:
            writer.write(result)
        return time.perf_counter() - start, writer.stats.photos, writer.stats.faces


def fingerprint(dst: Path) -> tuple[object, ...]:
    records = tuple(sorted(map(str, read_jsonl(dst / name))) for name in (METADATA, REJECTED, ERRORS))
    return records, {p.name: p.read_bytes() for p in dst.glob("*.png")}


def transfer_cost(jobs: Jobs, config: PipelineConfig, n: int = 5) -> tuple[float, float]:
    """(mean pickled KiB per result, mean ms to pickle + unpickle one) over the first ``n`` photos."""
    from faceprep.pipeline import Pipeline

    pipe = Pipeline(config)
    sizes, times = [], []
    for job in jobs[:n]:
        result = pipe.process_file(*job)
        t0 = time.perf_counter()
        blob = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)
        times.append((time.perf_counter() - t0) * 1e3)
        sizes.append(len(blob) / 1024)
    return statistics.mean(sizes), statistics.mean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    shared = Path(os.environ.get("FACEPREP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--photos", type=Path, default=shared / "photos")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--base", type=int, default=None, help="photos of the short run [limit/4]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--model", default=None, help="SCRFD ONNX file")
    parser.add_argument("--ray-address", default=None, help="an existing Ray cluster ('auto'); else local")
    args = parser.parse_args()

    import ray

    from faceprep.ray_engine import _connect, iter_results_ray

    jobs = pick_photos(args.photos, args.limit)
    detector = "scrfd" if args.model and args.detector == "auto" else args.detector
    name, _ = resolve_detector(detector)
    config = PipelineConfig(
        detector=name,
        size=256,
        detector_options={"model": args.model} if args.model else {},
        dedup=False,  # the writer checks near-duplicates, as in the CLI
    )
    kib, ms = transfer_cost(jobs, config)
    t0 = time.perf_counter()
    started = _connect(ray, args.ray_address, args.workers)
    ray_init = time.perf_counter() - t0

    engines: dict[str, Callable[[Jobs], Iterator[FileResult]]] = {
        "local": lambda todo: _results(todo, None, config, args.workers),
        "ray": lambda todo: iter_results_ray(todo, config, args.workers),
    }
    half = jobs[: args.base or len(jobs) // 4]
    runs: dict[tuple[str, int], list[tuple[float, int, int]]] = {}
    prints: dict[str, object] = {}
    try:
        for repeat in range(args.repeats):
            order = list(engines) if repeat % 2 == 0 else list(reversed(engines))
            for engine in order:
                for todo in (jobs, half):
                    with tempfile.TemporaryDirectory() as tmp:
                        measured = timed_run(engines[engine](todo), Path(tmp))
                        runs.setdefault((engine, len(todo)), []).append(measured)
                        if todo is jobs:
                            prints[engine] = fingerprint(Path(tmp))
    finally:
        if started:
            ray.shutdown()

    photos, faces = runs["local", len(jobs)][0][1:]
    print(
        f"{photos} photos ({faces} faces), {args.workers} workers, detector {name}, 256 px PNG, "
        f"median of {args.repeats}; ray.init {ray_init:.1f} s (not counted)"
    )
    print(f"result transfer: {kib:.0f} KiB pickled per photo, {ms:.2f} ms to pickle + unpickle")
    print(f"{'engine':<8}{'total s':>9}{f'{len(half)} ph. s':>10}{'photos/s':>10}{'marginal/s':>12}")
    rates: dict[str, tuple[float, float]] = {}
    for engine in engines:
        total = statistics.median(r[0] for r in runs[engine, len(jobs)])
        part = statistics.median(r[0] for r in runs[engine, len(half)])
        marginal = (len(jobs) - len(half)) / (total - part) if total > part else float("nan")
        rates[engine] = (photos / total, marginal)
        print(f"{engine:<8}{total:>9.1f}{part:>10.1f}{photos / total:>10.2f}{marginal:>12.2f}")
    end_to_end = rates["local"][0] / rates["ray"][0]
    marginal_ratio = rates["local"][1] / rates["ray"][1]
    print(
        f"overhead ratio (local / ray photos/s): {end_to_end:.2f} end to end, {marginal_ratio:.2f} marginal"
    )
    same = prints["local"] == prints["ray"]
    print(f"identical records and crop bytes: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
