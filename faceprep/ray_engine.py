"""``faceprep crop --engine ray``: the same pipeline on Ray Data, written by the same single writer.

The jobs (path, source name) become a Ray dataset; ``map_batches`` runs them on a fixed pool of actors,
each of which builds its ``Pipeline`` once (one detector session per actor, one CPU and one inference
thread each, like a local worker process). Every result comes back to the driver, in input order, as the
pickled ``FileResult``, and the driver hands it to the one ``DatasetWriter`` exactly like the local
engine does: records, near-duplicate decisions, resume, crash safety and every output format are the
local engine's, and so are the crops, byte for byte.

On a cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others,
then ``faceprep crop SRC DST --engine ray --ray-address auto`` on the head): faceprep must be installed
on every node, the photos must be readable from every node under the same path (a shared file system),
and only the driver writes DST.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from faceprep.cli import WorkerStartError, worker_config
from faceprep.pipeline import FileResult, Pipeline, PipelineConfig
from faceprep.types import SourceError

INSTALL = "pip install 'faceprep-diffengine[ray]'"
MAX_BLOCKS = 10_000  # rows are spread over this many blocks at most (one row per block below that)
Job = tuple[str, str]


def ray_available() -> str | None:
    """None when Ray Data can be imported here, else a one-line reason naming the install command."""
    try:
        for module in ("ray", "ray.data"):
            importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install failing inside its own import
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        return f"the Ray engine needs Ray Data ({reason}); install it with: {INSTALL}"
    return None


def iter_results_ray(
    todo: list[Job], config: PipelineConfig, workers: int, address: str | None = None
) -> Iterator[FileResult]:
    """Process ``todo`` on Ray Data with ``workers`` actors; yield the results in ``todo`` order.

    A drop-in for the local engine's results: one ``FileResult`` per job, failures as
    ``FileResult.error`` (a bad file never fails the Ray job). ``address``: None uses the Ray already
    initialised in this process, or starts a local one with ``workers`` CPUs (loopback only, no
    dashboard) and shuts it down at the end; otherwise ``ray.init(address=address)`` (``"auto"``, a
    head's ``host:6379``, ``ray://host:10001``). A pipeline that cannot be built raises
    ``faceprep.cli.WorkerStartError``.
    """
    if not todo:
        return
    import ray

    started = _connect(ray, address, workers)
    try:
        yield from _ordered(todo, _dataset(todo, worker_config(config), workers).iter_rows())
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to (or start) Ray; True when this call started it (so it is ours to shut down)."""
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return True  # our connection: ray.shutdown() disconnects, the cluster keeps running
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local run reports nowhere
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        _node_ip_address="127.0.0.1",  # loopback only
    )
    return True


def _dataset(todo: list[Job], config: PipelineConfig, workers: int) -> Any:
    """The lazy dataset: (index, pickled job) rows → actor pool → (index, pickled FileResult) rows."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    # Output in input order, still streaming (a sort would wait for the whole run before the first
    # write): the writer's near-duplicate decisions then do not depend on scheduling. The datasets copy
    # the context when they are created, so the caller's own context is restored right after.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the CLI draws its own bar
    try:
        # Jobs travel pickled: a path that is not valid UTF-8 (surrogate escapes) is no Arrow string.
        rows = [{"index": i, "job": pickle.dumps(job)} for i, job in enumerate(todo)]
        blocks = min(len(rows), MAX_BLOCKS)  # small blocks: an actor takes one job at a time
        return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            CropActor,
            fn_constructor_args=(config,),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def _ordered(todo: list[Job], rows: Iterator[dict[str, Any]]) -> Iterator[FileResult]:
    """Unpickle the rows and yield them in job order (rows already come in order; this checks it)."""
    waiting: dict[int, Any] = {}
    expected = 0
    for row in rows:
        waiting[int(row["index"])] = pickle.loads(row["result"])
        while expected in waiting:
            result = waiting.pop(expected)
            if isinstance(result, WorkerStartError):
                raise result
            yield result
            expected += 1
    if expected != len(todo):
        raise RuntimeError(f"Ray returned {expected} of {len(todo)} results")


class CropActor:
    """One Ray actor: builds its pipeline once, then processes one job per row."""

    def __init__(self, config: PipelineConfig) -> None:
        self.pipeline: Pipeline | None = None
        self.start_error: WorkerStartError | None = None
        try:
            import cv2
            import torch

            torch.set_num_threads(1)  # one CPU per actor: the actors are the parallelism
            cv2.setNumThreads(1)
            self.pipeline = Pipeline(config)
        except Exception as exc:  # reported by each row, raised on the driver (see _ordered)
            self.start_error = WorkerStartError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = [self._one(job) for job in batch["job"]]
        return {"index": np.asarray(batch["index"]), "result": np.array(blobs, dtype=object)}

    def _one(self, job_blob: bytes) -> bytes:
        if self.pipeline is None:
            return pickle.dumps(self.start_error or WorkerStartError("worker not initialised"))
        path, source = pickle.loads(job_blob)
        try:
            result = self.pipeline.process_file(path, source)
            return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # process_file catches its own; this is the last line before Ray
            reason = f"processing failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            return pickle.dumps(FileResult(path, source, error=SourceError(path, reason)))
