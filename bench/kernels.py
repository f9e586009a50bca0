"""Benchmark diffengine's kernels: Triton vs PyTorch eager vs torch.compile, against the hardware floor.

    PYTHONPATH=. python bench/kernels.py                 # GPU: all tables (< 5 min on an H100)
    PYTHONPATH=. python bench/kernels.py --only train    # just the training-step table
    PYTHONPATH=. python bench/kernels.py --no-cpu-study  # CPU: only says that there is no GPU

GPU part (CUDA events, median of N after warm-up): GroupNorm+SiLU fwd/bwd, attention fwd+bwd (Triton
vs SDPA), fused loss; a whole faces64 training step (bf16 autocast UNet forward, EDM loss through
``diffengine.loss.diffusion_loss``, backward, grad clip, AdamW: the body of the training loop) with the
Triton kernels, PyTorch eager and torch.compile; a 20-step sampling run, eager vs CUDA graph
(``kernels.capture``); ``diffengine.generate.generate`` (what ``diffengine sample`` / ``eval`` run) in
images/s with ``graph=False`` vs ``graph=True`` at batch 1, 32 and 256. Each kernel row has its floor
(bytes / bandwidth or flops / peak) and the % of floor reached.
CPU part: is Python the bottleneck of sampling? Per-step time of the faces32 UNet vs the Python glue of
the sampling loop (same loop, a free denoiser).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import cast

import torch

from diffengine.kernels import capture, set_backend
from diffengine.kernels.attention import attention_reference, attention_triton
from diffengine.kernels.backend import Backend
from diffengine.kernels.group_norm import group_norm_silu_reference, group_norm_silu_triton
from diffengine.kernels.precond_loss import precond_loss_reference
from diffengine.samplers import sample_euler

# (memory bandwidth GB/s, dense bf16 TFLOP/s) for cards whose properties do not expose them.
KNOWN_CARDS = {"H100": (3350, 989), "H200": (4800, 989), "A100": (2039, 312), "GTX 1060": (192, 4.4)}


def cpu_median(fn: Callable[[], object], n: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gpu_median(fn: Callable[[], object], n: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def unet_denoiser(preset: str, device: str) -> tuple[torch.nn.Module, Callable[..., torch.Tensor]]:
    from diffengine.config import get_preset
    from diffengine.networks.unet import UNet

    net = UNet(get_preset(preset).unet).to(device).eval()
    return net, lambda x, sigma: net(x, sigma.log() / 4)


def cpu_overhead_study() -> None:
    """Python glue vs network time per sampling step (faces32, batch 8, 20 Euler steps)."""
    torch.manual_seed(0)
    _net, denoise = unet_denoiser("faces32", "cpu")
    x = torch.randn(8, 3, 32, 32) * 80
    sigmas = torch.cat([torch.logspace(1.9, -2.7, 20), torch.zeros(1)])
    with torch.no_grad():
        full = cpu_median(lambda: sample_euler(denoise, x, sigmas), n=3, warmup=1)
        net_only = cpu_median(lambda: denoise(x, sigmas[:1].expand(8)), n=10, warmup=2)
        glue = cpu_median(lambda: sample_euler(lambda x, s: x, x, sigmas), n=20, warmup=3)
    steps = 20
    print("CPU: is Python the bottleneck of sampling? (faces32, batch 8, 20 Euler steps, 1 process)")
    print(f"  whole loop            {full * 1e3:9.1f} ms  ({full / steps * 1e3:.2f} ms/step)")
    print(f"  UNet forward          {net_only * 1e3:9.2f} ms/step")
    print(f"  loop glue (no net)    {glue / steps * 1e6:9.1f} us/step = {glue / full * 100:.3f}% of the loop")


def floors(props: torch.cuda._CudaDeviceProperties) -> tuple[float, float]:
    for name, (bw, tflops) in KNOWN_CARDS.items():
        if name in props.name:
            return bw * 1e9, tflops * 1e12
    # unknown card: bus width x clock is not exposed by torch; say so rather than guess
    raise SystemExit(f"unknown card {props.name!r}: add its bandwidth and peak to KNOWN_CARDS")


def row(name: str, t: float, base: float, floor: float) -> None:
    print(
        f"  {name:34s} {t * 1e6:10.1f} us  {base / t:6.2f}x eager  floor {floor * 1e6:8.1f} us"
        f"  ({floor / t * 100:5.1f}% of floor)"
    )


def kernel_tables(bandwidth: float, peak: float) -> None:
    """Per-kernel rows: GroupNorm+SiLU, attention, fused loss (Triton forced where it is timed)."""
    dev = "cuda"
    set_backend("triton")
    dt = torch.bfloat16
    # GroupNorm+SiLU at faces64's widest activation: (32, 128, 64, 64)
    x = torch.randn(32, 128, 64, 64, device=dev, dtype=dt, requires_grad=True)
    w, b = torch.ones(128, device=dev, dtype=dt), torch.zeros(128, device=dev, dtype=dt)
    s, sh = torch.randn(32, 128, device=dev, dtype=dt), torch.randn(32, 128, device=dev, dtype=dt)
    compiled = torch.compile(group_norm_silu_reference)
    nbytes = 2 * x.numel() * x.element_size()
    print("GroupNorm+SiLU fwd (32x128x64x64 bf16):")
    gn_args = (x, w, b, 32, s, sh)
    base = gpu_median(functools.partial(group_norm_silu_reference, *gn_args))
    for name, fn in [
        ("eager", group_norm_silu_reference),
        ("torch.compile", compiled),
        ("triton", group_norm_silu_triton),
    ]:
        row(name, gpu_median(functools.partial(fn, *gn_args)), base, nbytes / bandwidth)
    print("GroupNorm+SiLU fwd+bwd:")
    g = torch.randn_like(x)

    def fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        return lambda: fn(*gn_args).backward(g)

    base = gpu_median(fwd_bwd(group_norm_silu_reference))
    for name, fn in [("eager", group_norm_silu_reference), ("triton", group_norm_silu_triton)]:
        row(name, gpu_median(fwd_bwd(fn)), base, 5 * nbytes / 2 / bandwidth)
    print("attention fwd (B·heads=32x4, N=256/1024/4096, D=64, bf16):")
    for n in (256, 1024, 4096):
        q, k, v = (torch.randn(32 if n < 4096 else 4, 4, n, 64, device=dev, dtype=dt) for _ in range(3))
        flops = 4 * q.shape[0] * q.shape[1] * n * n * 64
        base = gpu_median(functools.partial(attention_reference, q, k, v))
        row(f"SDPA N={n}", base, base, flops / peak)
        row(f"triton N={n}", gpu_median(functools.partial(attention_triton, q, k, v)), base, flops / peak)
    print("precond loss fwd (32x3x64x64):")
    f = torch.randn(32, 3, 64, 64, device=dev)
    c = torch.rand(32, device=dev)
    base = gpu_median(lambda: precond_loss_reference(f, f, f, c, c, c))
    from diffengine.kernels import precond_loss

    row("eager", base, base, 3 * f.numel() * 4 / bandwidth)
    row("triton", gpu_median(lambda: precond_loss(f, f, f, c, c, c)), base, 3 * f.numel() * 4 / bandwidth)
    set_backend(None)


def training_step_table(peak: float, batch: int, steps: int, warmup: int) -> None:
    """One whole faces64 training step per backend, as ``diffengine.train`` runs it on a CUDA card."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffengine.config import get_preset
    from diffengine.generate import build_denoiser
    from diffengine.loss import diffusion_loss
    from diffengine.precond import Denoiser

    preset = get_preset("faces64")
    torch.manual_seed(0)
    denoiser = build_denoiser(preset).to("cuda").train()
    net = denoiser.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(net.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    x = (torch.rand(batch, 3, 64, 64, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)
    gen = torch.Generator("cuda").manual_seed(0)

    def training_step(model: Denoiser) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = diffusion_loss(model, x, generator=gen).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), preset.grad_clip)
            opt.step()

        return step

    eager_step = training_step(denoiser)
    compiled_net = cast(torch.nn.Module, torch.compile(net))
    compiled_step = training_step(Denoiser(compiled_net, denoiser.formulation))
    set_backend("torch")
    eager_step()  # allocator and cuDNN warm-up before counting
    with FlopCounterMode(display=False) as counter:
        eager_step()
    flops = counter.get_total_flops()
    print(
        f"training step, faces64 UNet ({sum(p.numel() for p in net.parameters()) / 1e6:.0f}M params, "
        f"checkpointing={preset.unet.checkpointing}), batch {batch}, bf16 autocast, EDM loss, AdamW "
        f"({flops / 1e12:.2f} TFLOP/step; median of {steps} after {warmup} warm-up):"
    )
    base = gpu_median(eager_step, n=steps, warmup=warmup)
    row("eager PyTorch", base, base, flops / peak)
    variants: list[tuple[str, Backend, Callable[[], None]]] = [
        ("triton kernels", "triton", eager_step),
        ("torch.compile", "torch", compiled_step),  # PyTorch ops, so Inductor sees (and fuses) all of them
    ]  # compile last: its compile time must not keep the Triton row from printing under a time cap
    for name, backend, fn in variants:
        set_backend(backend)
        try:
            row(name, gpu_median(fn, n=steps, warmup=warmup), base, flops / peak)
        except Exception as exc:  # report and go on: one failing variant must not hide the others
            print(f"  {name:34s} failed: {type(exc).__name__}: {str(exc)[:200]}")
    set_backend(None)


def sampling_table() -> None:
    """20 Euler steps of the faces64 UNet: the eager loop vs the same loop replayed as a CUDA graph."""
    dev = "cuda"
    dt = torch.bfloat16
    set_backend("triton")
    print("20-step Euler sampling, faces64, batch 32:")
    _, denoise = unet_denoiser("faces64", dev)
    sigmas = torch.cat([torch.logspace(1.9, -2.7, 20, device=dev), torch.zeros(1, device=dev)])
    noise = torch.randn(32, 3, 64, 64, device=dev) * 80
    with torch.no_grad(), torch.autocast("cuda", dtype=dt):
        eager = gpu_median(lambda: sample_euler(denoise, noise, sigmas), n=5, warmup=2)
        graphed = capture(sample_euler, denoise, sigmas, tuple(noise.shape), graph=True)
        graph = gpu_median(lambda: graphed(noise), n=5, warmup=2)
    print(
        f"  eager {eager * 1e3:.1f} ms, CUDA graph {graph * 1e3:.1f} ms, "
        f"per-step overhead removed {(eager - graph) / 20 * 1e3:.2f} ms "
        f"({(eager - graph) / eager * 100:.1f}%)"
    )
    set_backend(None)


def generate_table(batches: tuple[int, ...] = (1, 32, 256), preset: str = "faces64") -> None:
    """``generate()`` images/s, eager loop vs CUDA graph, for the preset's default sampler and steps
    (``auto`` kernel backend, fp32: exactly what ``diffengine sample --batch-size B`` runs)."""
    from diffengine.config import get_preset
    from diffengine.generate import build_denoiser, generate

    settings = get_preset(preset)
    torch.manual_seed(0)
    denoiser = build_denoiser(settings).to("cuda").eval()
    print(f"generate(), {preset}, {settings.sampler} {settings.sample_steps} steps, images/s:")
    for batch in batches:
        n = max(8 * batch, 256)  # many batches of one shape, as eval runs them; the capture is counted
        rates = {}
        for graph in (False, True):

            def run(count: int, graph: bool = graph, batch: int = batch) -> None:
                generate(
                    denoiser, count, settings.sampler, settings.sample_steps, batch_size=batch, graph=graph
                )

            run(batch)  # warm-up: allocator, cuDNN, Triton autotuning
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(n)
            torch.cuda.synchronize()
            rates[graph] = n / (time.perf_counter() - t0)
        print(
            f"  batch {batch:4d}: eager {rates[False]:9.1f}, CUDA graph {rates[True]:9.1f} "
            f"({rates[True] / rates[False]:.2f}x, the graph's capture included)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=("all", "kernels", "train", "sample", "generate"),
        default="all",
        help="GPU tables to run (default: all)",
    )
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps per backend")
    parser.add_argument(
        "--train-warmup", type=int, default=3, help="untimed steps first (compile happens here)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training-step batch (faces64 preset: 32)")
    parser.add_argument("--no-cpu-study", action="store_true", help="skip the CPU Python-overhead study")
    args = parser.parse_args(argv)
    if args.train_steps < 1 or args.train_warmup < 1 or args.batch_size < 1:
        parser.error("--train-steps, --train-warmup and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_cpu_study:
        cpu_overhead_study()
    if not torch.cuda.is_available():
        print("no CUDA device: skipping timings")
        return 0
    props = torch.cuda.get_device_properties(0)
    bandwidth, peak = floors(props)
    print(
        f"card: {props.name} (sm_{props.major}{props.minor}), floor: {bandwidth / 1e9:.0f} GB/s, "
        f"{peak / 1e12:.0f} TFLOP/s bf16"
    )
    try:
        if args.only in ("all", "kernels"):
            kernel_tables(bandwidth, peak)
        if args.only in ("all", "train"):
            training_step_table(peak, args.batch_size, args.train_steps, args.train_warmup)
        if args.only in ("all", "sample"):
            sampling_table()
        if args.only in ("all", "generate"):
            generate_table()
    finally:
        set_backend(None)  # a table that fails partway must not leave a forced backend behind
    return 0


if __name__ == "__main__":
    sys.exit(main())
