"""A whole ODE sampling loop as one CUDA graph: Python runs once at capture, replays cost one launch.

``sampling_loop`` is the plain loop (Euler, Heun or DPM-Solver++(2M)) written so that it never
synchronises with the host: σ stay on the device and each step reads its σ through a 0-d view, the
fused step kernels read it in-kernel. ``make_sampler`` captures that loop for fixed shapes on CUDA
(``torch.cuda.CUDAGraph``) and, anywhere else or when capture is off, returns the same loop run eagerly.

The denoiser is ``denoiser(x, sigma) -> denoised`` with ``sigma`` a (B,) tensor on x's device; for
capture it must itself be capturable (no ``.item()``, no host sync, static shapes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from diffengine.kernels.sampler_steps import dpmpp2m_step, euler_step, heun_correct

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Method = Literal["euler", "heun", "dpmpp2m"]
METHODS: tuple[Method, ...] = ("euler", "heun", "dpmpp2m")


def sampling_loop(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    method: Method = "euler",
    sigmas_host: list[float] | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from ``x`` (noise already scaled by σ₀) along ``sigmas``.

    sigmas: (steps + 1,) decreasing, usually ending in 0, on x's device. ``sigmas_host`` (the same
    values as floats) decides only which Heun steps get a correction; pass it to avoid a host sync.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values, got shape {tuple(sigmas.shape)}")
    host = sigmas_host if sigmas_host is not None else sigmas.tolist()
    batch = x.shape[0]
    old: torch.Tensor | None = None
    for i in range(sigmas.numel() - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, s.expand(batch))
        if method == "euler":
            x = euler_step(x, denoised, s, s_next)
        elif method == "heun":
            x_next = euler_step(x, denoised, s, s_next)
            if host[i + 1] > 0:
                denoised_next = denoiser(x_next, s_next.expand(batch))
                x_next = heun_correct(x, x_next, denoised, denoised_next, s, s_next)
            x = x_next
        else:
            x = dpmpp2m_step(x, denoised, old, s, s_next, sigmas[i - 1] if i > 0 else None)
            old = denoised
    return x


def make_sampler(
    denoiser: Denoiser,
    sigmas: torch.Tensor,
    shape: tuple[int, ...],
    method: Method = "euler",
    dtype: torch.dtype = torch.float32,
    graph: bool | None = None,
    warmup: int = 2,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``noise -> sample`` for inputs of ``shape``; captured as a CUDA graph when possible.

    ``graph=None`` captures on CUDA devices and runs eagerly elsewhere; ``graph=True`` on a non-CUDA
    device is an error. The returned sample is a fresh tensor (not the graph's static output).
    """
    host = sigmas.tolist()
    if graph is None:
        graph = sigmas.is_cuda
    if not graph:
        return lambda x: sampling_loop(denoiser, x, sigmas, method, host)
    if not sigmas.is_cuda:
        raise ValueError("CUDA-graph capture needs sigmas (and the model) on a CUDA device")
    static_x = torch.zeros(shape, device=sigmas.device, dtype=dtype)
    stream = torch.cuda.Stream(sigmas.device)
    stream.wait_stream(torch.cuda.current_stream(sigmas.device))
    with torch.cuda.stream(stream), torch.no_grad():  # warm-up: autotune, allocator, lazy init
        for _ in range(warmup):
            sampling_loop(denoiser, static_x, sigmas, method, host)
    torch.cuda.current_stream(sigmas.device).wait_stream(stream)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph), torch.no_grad():
        static_out = sampling_loop(denoiser, static_x, sigmas, method, host)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape != static_x.shape:
            raise ValueError(f"captured for shape {tuple(static_x.shape)}, got {tuple(x.shape)}")
        static_x.copy_(x)
        cuda_graph.replay()
        return static_out.clone()

    return run
