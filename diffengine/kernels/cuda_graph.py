"""A whole sampling loop as one CUDA graph: ``capture(sampler, denoiser, sigmas, shape)``.

Any deterministic sampler of :mod:`diffengine.samplers` can be recorded: it reads σ once as host
floats, so its loop has no data-dependent control flow, and its σ end up in the graph as kernel
arguments. ``capture`` runs the sampler a few times on a side stream (autotuning, allocator and lazy
initialisation), records one full run from a static input buffer, and returns ``x -> sample``: copy
into the buffer, replay, clone the static output. The denoiser must be capturable too (no ``.item()``,
no host sync, static shapes); ``precond.Denoiser`` over the UNet is. Off CUDA, or with
``graph=False``, the same function runs the sampler eagerly, so callers need no second code path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffengine.precond import DenoiseFn

Sampler = Callable[..., torch.Tensor]  # ``sample_x(model, x, sigmas, *, generator, callback)``


def capture(
    sampler: Sampler,
    denoiser: DenoiseFn,
    sigmas: torch.Tensor,
    shape: tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    graph: bool | None = None,
    warmup: int = 2,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> sampler(denoiser, x, sigmas)`` for x of ``shape`` (noise already scaled by σ₀), replayed
    from a CUDA graph of the whole loop.

    ``device`` (default: sigmas' device) holds the static buffers. ``graph=None`` captures on CUDA and
    runs eagerly elsewhere; ``graph=True`` off CUDA is an error. Only deterministic samplers may be
    captured: noise drawn inside the graph would not follow the caller's generator. The returned
    sample is a fresh tensor, not the graph's static output.
    """
    dev = torch.device(device) if device is not None else sigmas.device
    # σ as host values: the sampler never synchronises, even while the stream is being captured.
    host_sigmas = sigmas.detach().to("cpu", torch.float64)
    if graph is None:
        graph = dev.type == "cuda"
    if not graph:
        return lambda x: sampler(denoiser, x, host_sigmas)
    if dev.type != "cuda":
        raise ValueError(f"CUDA-graph capture needs a CUDA device, got {dev}")
    static_x = torch.zeros(shape, device=dev, dtype=dtype)
    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream), torch.no_grad():  # warm-up: autotune, allocator, lazy init
        for _ in range(warmup):
            sampler(denoiser, static_x, host_sigmas)
    torch.cuda.current_stream(dev).wait_stream(stream)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph), torch.no_grad():
        static_out = sampler(denoiser, static_x, host_sigmas)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape != static_x.shape:
            raise ValueError(f"captured for shape {tuple(static_x.shape)}, got {tuple(x.shape)}")
        static_x.copy_(x)
        cuda_graph.replay()
        return static_out.clone()

    return run
