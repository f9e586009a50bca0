"""The training input pipeline, in memory vs streamed by DataLoader workers (``diffengine.streaming``).

    flock /tmp/bench.lock python bench/data_pipeline.py [--data /work/shared/data/utkface] [--steps 6]

Every configuration runs in a fresh subprocess (one at a time) and reports:

- ``pipeline img/s``: ``stream.next()`` alone, after the first batch (workers started, set decoded);
- ``training img/s``: the preset's UNet trained with the real step (``diffusion_loss`` -> backward ->
  clip -> AdamW -> EMA, what ``diffengine.train`` runs) on 5k images, faces32 at 32 px and
  faces64-small at 64 px. Both inputs feed one model in one process, in alternating blocks of
  ``--steps`` steps (median and best block), so load from neighbours on shared cores hits both alike;
- ``start s``: from ``make_stream`` to the first batch (the in-memory path decodes everything first);
- ``RSS MB``: peak resident memory of the rank's process (``ru_maxrss``), and of its largest worker.

The sets are the first 5k / 20k UTKFace images (200x200 JPEGs, by name), as folders of symlinks.
``--device cuda`` measures the same on a GPU (there the input pipeline is the bottleneck sooner).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any


def _subset(data: Path, n: int, root: Path) -> Path:
    folder = root / f"utk{n}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for name in sorted(p.name for p in data.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:n]:
            (folder / name).symlink_to(data / name)
    return folder


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from diffengine.config import get_preset
    from diffengine.streaming import make_stream

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    preset = get_preset(cfg["preset"])
    res, batch = preset.unet.resolution, preset.batch_size
    warnings.simplefilter("ignore", UserWarning)
    out: dict[str, Any] = dict(cfg)
    if cfg["what"] == "train":
        return {**out, **_train_ab(cfg, preset, device)}
    t0 = time.perf_counter()
    stream = make_stream(
        cfg["data"], res, batch, seed=0, split="all", streaming=cfg["streaming"], workers=cfg["workers"]
    )
    stream.next(device)
    out.update(type=type(stream).__name__, start_s=time.perf_counter() - t0, n=stream.n_images)
    n = cfg["batches"]
    t0 = time.perf_counter()
    for _ in range(n):
        x = stream.next(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["img_s"] = n * batch / (time.perf_counter() - t0)
    assert x.shape == (batch, 3, res, res)
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    getattr(stream, "close", lambda: None)()  # stop the workers so their peak is counted below
    import gc

    gc.collect()
    time.sleep(0.5)
    out["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def _train_ab(cfg: dict[str, Any], preset: Any, device: Any) -> dict[str, Any]:
    """Training img/s fed from memory and from the workers, in alternating blocks of steps in one
    process (one model), so a neighbour's load on the shared cores hits both alike."""
    import torch

    from diffengine.ema import EMA
    from diffengine.generate import build_denoiser
    from diffengine.loss import diffusion_loss
    from diffengine.streaming import make_stream

    res, batch = preset.unet.resolution, preset.batch_size
    streams = {
        mode: make_stream(
            cfg["data"], res, batch, seed=0, split="all", streaming=mode == "stream", workers=cfg["workers"]
        )
        for mode in ("memory", "stream")
    }
    torch.manual_seed(0)
    denoiser = build_denoiser(preset).to(device)
    net = denoiser.net
    ema = EMA(net, half_life_kimg=preset.ema_half_life_kimg, batch_size=batch)
    opt = torch.optim.AdamW(net.parameters(), lr=preset.lr)
    g = torch.Generator(device).manual_seed(1)

    def steps(mode: str, k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            x = streams[mode].next(device)
            loss = diffusion_loss(denoiser, x, generator=g).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), preset.grad_clip or 1.0)
            opt.step()
            ema.update(net)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return k * batch / (time.perf_counter() - t0)

    for mode in streams:  # warm-up: workers started, allocator, first-call costs
        steps(mode, 2)
    rates: dict[str, list[float]] = {"memory": [], "stream": []}
    for r in range(cfg["rounds"]):
        for mode in ("memory", "stream") if r % 2 == 0 else ("stream", "memory"):
            rates[mode].append(steps(mode, cfg["steps"]))
    out: dict[str, Any] = {"n": streams["memory"].n_images}
    for mode, got in rates.items():
        got.sort()
        out[f"{mode}_median"] = got[len(got) // 2]
        out[f"{mode}_best"] = got[-1]
        out[f"{mode}_all"] = got
    return out


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": str(cfg["threads"])},
    )
    if proc.returncode:
        raise SystemExit(f"child failed: {cfg}\n{proc.stderr[-3000:]}")
    r: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if r["what"] == "train":
        rates = " ".join(f"{m} {' '.join(f'{v:.1f}' for v in r[f'{m}_all'])}" for m in ("memory", "stream"))
        print(f"  train    {r['preset']:13s} n={r['n']:<6d} img/s per block: {rates}", flush=True)
    else:
        print(
            f"  pipeline {r['preset']:13s} n={r['n']:<6d} {'stream' if r['streaming'] else 'memory'} "
            f"{r['img_s']:9.1f} img/s  start {r['start_s']:5.1f} s  RSS {r['rss_mb']:6.0f} MB "
            f"(worker {r['worker_rss_mb']:.0f})",
            flush=True,
        )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/utkface"))
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed block")
    ap.add_argument("--rounds", type=int, default=4, help="timed blocks per input mode (alternating)")
    ap.add_argument("--batches", type=int, default=60, help="timed pipeline batches per configuration")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the 2-core box: 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    root = Path(tempfile.gettempdir()) / "diffengine-bench-data"
    small, large = _subset(args.data, 5000, root), _subset(args.data, 20000, root)
    base = {"workers": args.workers, "threads": args.threads, "device": args.device, "steps": args.steps}
    base["batches"] = args.batches
    base["rounds"] = args.rounds
    print(f"{args.device}, {os.cpu_count()} cores, torch threads {args.threads}, workers {args.workers}")
    pipe: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for preset, data in (("faces32", small), ("faces64-small", small), ("faces64-small", large)):
        for streaming in (False, True):
            r = run({**base, "what": "pipeline", "preset": preset, "data": str(data), "streaming": streaming})
            pipe[(preset, r["n"], streaming)] = r
    trains = {
        p: run({**base, "what": "train", "preset": p, "data": str(small)})
        for p in ("faces32", "faces64-small")
    }

    print("\n| measure | px (preset) | images | in memory | streamed | streamed / memory |")
    print("|---|---|---|---|---|---|")
    for (preset, n, streaming), mem in pipe.items():
        if streaming:
            continue
        st, px = pipe[(preset, n, True)], 32 if preset == "faces32" else 64
        print(
            f"| input pipeline img/s | {px} ({preset}) | {n} | {mem['img_s']:.0f} | {st['img_s']:.0f} | "
            f"{st['img_s'] / mem['img_s']:.3f} |"
        )
        print(
            f"| time to first batch s | {px} ({preset}) | {n} | {mem['start_s']:.1f} | {st['start_s']:.1f} | "
            f"{st['start_s'] / mem['start_s']:.2f} |"
        )
    for preset, t in trains.items():
        px = 32 if preset == "faces32" else 64
        for stat in ("median", "best"):
            m, s_ = t[f"memory_{stat}"], t[f"stream_{stat}"]
            print(
                f"| training img/s ({stat}) | {px} ({preset}) | {t['n']} | {m:.1f} | {s_:.1f} "
                f"| {s_ / m:.3f} |"
            )
    for streaming in (False, True):
        a, b = pipe[("faces64-small", 5000, streaming)], pipe[("faces64-small", 20000, streaming)]
        label = "streamed" if streaming else "in memory"
        print(
            f"| peak RSS MB of the rank, {label} | 64 | 5000 -> 20000 | {a['rss_mb']:.0f} "
            f"| {b['rss_mb']:.0f} "
            f"| x{b['rss_mb'] / a['rss_mb']:.2f} (each worker {a['worker_rss_mb']:.0f} -> "
            f"{b['worker_rss_mb']:.0f}) |"
        )


if __name__ == "__main__":
    main()
