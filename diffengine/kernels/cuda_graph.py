"""The ODE sampling loop, shared by ``diffengine.samplers`` and a CUDA graph that replays it in one launch.

Each solver is one *update rule* ``(model, x, step, previous denoised) -> (x_next, denoised)`` over the
fused step ops of ``sampler_steps.py``; ``run_steps`` drives a rule along a schedule. A :class:`Step`
holds its σ either as Python floats (``diffengine.samplers``) or as 0-d views of a σ tensor on the
device, which the fused kernels read in-kernel, so the loop never synchronises with the host.
``sampling_loop`` is that loop for Euler, Heun or DPM-Solver++(2M); ``make_sampler`` captures it for
fixed shapes on CUDA (``torch.cuda.CUDAGraph``) and, anywhere else or when capture is off, returns the
same loop run eagerly.

The denoiser is ``denoiser(x, sigma) -> denoised`` with ``sigma`` a (B,) tensor on x's device; for
capture it must itself be capturable (no ``.item()``, no host sync, static shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from diffengine.kernels.sampler_steps import Sigma, dpmpp2m_step, euler_step, heun_correct

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
Method = Literal["euler", "heun", "dpmpp2m"]
METHODS: tuple[Method, ...] = ("euler", "heun", "dpmpp2m")


@dataclass(frozen=True)
class Step:
    """Step ``i`` of a schedule, σ_i → σ_{i+1}; ``to_zero`` (σ_{i+1} = 0) is known on the host."""

    i: int
    sigma: Sigma
    sigma_next: Sigma
    sigma_prev: Sigma | None  # σ_{i−1}; None at the first step
    to_zero: bool


# (model, x, step, denoised of the previous step or None) -> (x_next, denoised at x)
Update = Callable[[Denoiser, torch.Tensor, Step, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def schedule_steps(sigmas: Sequence[Sigma], host: Sequence[float]) -> list[Step]:
    """The steps along ``sigmas`` (floats, or a 1-D tensor whose 0-d views become the step σ);
    ``host`` holds the same values as floats."""
    return [
        Step(i, sigmas[i], sigmas[i + 1], sigmas[i - 1] if i > 0 else None, host[i + 1] == 0)
        for i in range(len(host) - 1)
    ]


def denoise(model: Denoiser, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """D(x; σ) with σ broadcast to the batch (a float becomes an fp32 tensor), in x's dtype."""
    if isinstance(sigma, torch.Tensor):
        sigma_b = sigma.expand(x.shape[0])
    else:
        sigma_b = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
    return model(x, sigma_b).to(x.dtype)


def euler_update(
    model: Denoiser, x: torch.Tensor, step: Step, old: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order Euler on the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (EDM eq. 4)."""
    d = denoise(model, x, step.sigma)
    return euler_step(x, d, step.sigma, step.sigma_next), d


def heun_update(
    model: Denoiser, x: torch.Tensor, step: Step, old: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM Algorithm 1 (deterministic Heun): Euler, then the trapezoidal correction unless σ_next = 0."""
    d = denoise(model, x, step.sigma)
    x_next = euler_step(x, d, step.sigma, step.sigma_next)
    if not step.to_zero:
        d_next = denoise(model, x_next, step.sigma_next)
        x_next = heun_correct(x, x_next, d, d_next, step.sigma, step.sigma_next)
    return x_next, d


def dpmpp2m_update(
    model: Denoiser, x: torch.Tensor, step: Step, old: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2M) (Lu et al. 2022): multistep second order from the previous denoised, one NFE."""
    d = denoise(model, x, step.sigma)
    return dpmpp2m_step(x, d, old, step.sigma, step.sigma_next, step.sigma_prev), d


UPDATES: dict[Method, Update] = {"euler": euler_update, "heun": heun_update, "dpmpp2m": dpmpp2m_update}


def run_steps(
    update: Update, model: Denoiser, x: torch.Tensor, steps: Sequence[Step], callback: Callback | None = None
) -> torch.Tensor:
    """Apply ``update`` along ``steps``; ``callback`` gets (i, x, sigma, sigma_next, denoised) after each."""
    old: torch.Tensor | None = None
    for step in steps:
        x, old = update(model, x, step, old)
        if callback is not None:
            callback(
                {"i": step.i, "x": x, "sigma": step.sigma, "sigma_next": step.sigma_next, "denoised": old}
            )
    return x


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
    return run_steps(UPDATES[method], denoiser, x, schedule_steps(list(sigmas.unbind()), host))


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
