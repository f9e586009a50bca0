"""Fused sampler updates, one elementwise kernel each: Euler, Heun's correction, DPM-Solver++(2M) and
``weighted_sum`` (Σ wᵢ·tᵢ over up to five tensors: the multistep and stochastic updates).

σ values may be Python floats or 0-d/1-element tensors on the device (read inside the kernel, so a
step never synchronises with the host); ``diffengine.samplers`` passes floats, which a CUDA graph
records as kernel arguments (``cuda_graph.capture``). Coefficients are computed in fp32 in the kernel,
every tensor is read once and the result written once. Sampling runs without gradients
(``backend.AUTO["sampler_steps"]`` is "no_grad"); an input that requires grad uses the PyTorch
reference (or raises under a forced ``triton`` backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffengine.kernels._triton import Kernel, cdiv, dense_like, flat_dense, kernel, tl
from diffengine.kernels.backend import use_triton

Sigma = float | torch.Tensor
BLOCK = 2048
MAX_TERMS = 5  # tensors one ``weighted_sum`` kernel reads (iPNDM's x and four derivatives)


# --- PyTorch references (also the fallback); σ may be floats or tensors ---------------------------


def euler_step_reference(
    x: torch.Tensor, denoised: torch.Tensor, sigma: Sigma, sigma_next: Sigma
) -> torch.Tensor:
    """x + (sigma_next − sigma) · (x − denoised) / sigma (EDM eq. 5 Euler step)."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def heun_correct_reference(
    x: torch.Tensor,
    x_next: torch.Tensor,
    denoised: torch.Tensor,
    denoised_next: torch.Tensor,
    sigma: Sigma,
    sigma_next: Sigma,
) -> torch.Tensor:
    """Heun's second-order correction (EDM Algorithm 1, lines 9–11), from x at sigma."""
    d = (x - denoised) / sigma
    d_next = (x_next - denoised_next) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (d + d_next)


def _dpm_coefficients(
    sigma: Sigma, sigma_next: Sigma, sigma_prev: Sigma | None
) -> tuple[Sigma, Sigma, Sigma]:
    """(ratio, c1, c2) with x_next = ratio·x + (1 − ratio)·(c1·denoised + c2·old_denoised).

    h = log(σ/σ_next), −expm1(−h) = 1 − σ_next/σ, r = log(σ_prev/σ)/h; first order (c1 = 1, c2 = 0)
    at the first step (no σ_prev) and at the last (σ_next = 0).
    """
    if not any(isinstance(s, torch.Tensor) for s in (sigma, sigma_next, sigma_prev)):
        s, sn = float(sigma), float(sigma_next)
        if sigma_prev is None or sn == 0:
            return sn / s, 1.0, 0.0
        r = math.log(float(sigma_prev) / s) / math.log(s / sn)
        return sn / s, 1 + 1 / (2 * r), -1 / (2 * r)
    st, snt = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
    ratio = snt / st
    if sigma_prev is None:
        return ratio, 1.0, 0.0
    half_inv_r = 0.5 * torch.log(st / snt) / torch.log(torch.as_tensor(sigma_prev) / st)
    second = snt > 0
    return ratio, torch.where(second, 1 + half_inv_r, 1.0), torch.where(second, -half_inv_r, 0.0)


def dpmpp2m_step_reference(
    x: torch.Tensor,
    denoised: torch.Tensor,
    old_denoised: torch.Tensor | None,
    sigma: Sigma,
    sigma_next: Sigma,
    sigma_prev: Sigma | None,
) -> torch.Tensor:
    """One DPM-Solver++(2M) step in the σ parametrisation (Lu et al. 2022, k-diffusion form)."""
    if old_denoised is None:
        sigma_prev = None
    ratio, c1, c2 = _dpm_coefficients(sigma, sigma_next, sigma_prev)
    d = denoised if old_denoised is None else c1 * denoised + c2 * old_denoised
    return ratio * x + (1 - ratio) * d


def weighted_sum_reference(weights: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ wᵢ·tᵢ (float weights, tensors of one shape), accumulated in at least fp32, returned in the first
    tensor's dtype."""
    acc = torch.promote_types(tensors[0].dtype, torch.float32)
    out = weights[0] * tensors[0].to(acc)
    for w, t in zip(weights[1:], tensors[1:], strict=True):
        out = out + w * t.to(acc)
    return out.to(tensors[0].dtype)


# --- Triton kernels ---------------------------------------------------------------------------------


@kernel
def _euler_kernel(  # type: ignore[no-untyped-def]
    X, DEN, OUT, n, S, SN, s_val, sn_val, SIG_PTR: tl.constexpr, BLOCK: tl.constexpr
):  # fmt: skip
    if SIG_PTR:
        s = tl.load(S).to(tl.float32)
        sn = tl.load(SN).to(tl.float32)
    else:
        s = s_val
        sn = sn_val
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask).to(tl.float32)
    den = tl.load(DEN + offs, mask=mask).to(tl.float32)
    out = x + (sn - s) * (x - den) / s
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@kernel
def _heun_kernel(  # type: ignore[no-untyped-def]
    X, XN, DEN, DENN, OUT, n, S, SN, s_val, sn_val, SIG_PTR: tl.constexpr, BLOCK: tl.constexpr
):  # fmt: skip
    if SIG_PTR:
        s = tl.load(S).to(tl.float32)
        sn = tl.load(SN).to(tl.float32)
    else:
        s = s_val
        sn = sn_val
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask).to(tl.float32)
    xn = tl.load(XN + offs, mask=mask).to(tl.float32)
    den = tl.load(DEN + offs, mask=mask).to(tl.float32)
    denn = tl.load(DENN + offs, mask=mask).to(tl.float32)
    out = x + (sn - s) * 0.5 * ((x - den) / s + (xn - denn) / sn)
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@kernel
def _dpmpp2m_kernel(  # type: ignore[no-untyped-def]
    X, DEN, OLD, OUT, n, S, SN, SP, s_val, sn_val, sp_val,
    SIG_PTR: tl.constexpr, HAS_OLD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    if SIG_PTR:
        s = tl.load(S).to(tl.float32)
        sn = tl.load(SN).to(tl.float32)
    else:
        s = s_val
        sn = sn_val
    ratio = sn / s
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask).to(tl.float32)
    d = tl.load(DEN + offs, mask=mask).to(tl.float32)
    if HAS_OLD:
        sp = tl.load(SP).to(tl.float32) if SIG_PTR else sp_val
        half_inv_r = 0.5 * tl.log(s / sn) / tl.log(sp / s)
        second = sn > 0.0
        c1 = tl.where(second, 1.0 + half_inv_r, 1.0)
        c2 = tl.where(second, -half_inv_r, 0.0)
        d = c1 * d + c2 * tl.load(OLD + offs, mask=mask).to(tl.float32)
    out = ratio * x + (1.0 - ratio) * d
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@kernel
def _weighted_sum_kernel(  # type: ignore[no-untyped-def]
    T0, T1, T2, T3, T4, OUT, n, w0, w1, w2, w3, w4, TERMS: tl.constexpr, BLOCK: tl.constexpr
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = w0 * tl.load(T0 + offs, mask=mask).to(tl.float32)
    if TERMS > 1:
        acc += w1 * tl.load(T1 + offs, mask=mask).to(tl.float32)
    if TERMS > 2:
        acc += w2 * tl.load(T2 + offs, mask=mask).to(tl.float32)
    if TERMS > 3:
        acc += w3 * tl.load(T3 + offs, mask=mask).to(tl.float32)
    if TERMS > 4:
        acc += w4 * tl.load(T4 + offs, mask=mask).to(tl.float32)
    tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=mask)


# --- launch and dispatch ----------------------------------------------------------------------------


def _sigma_args(*sigmas: Sigma | None, like: torch.Tensor) -> tuple[list[object], bool]:
    """Kernel arguments for σ: (pointers..., values...) and whether pointers are used."""
    if any(isinstance(s, torch.Tensor) for s in sigmas):
        ptrs = [torch.as_tensor(s, device=like.device).reshape(()) if s is not None else like for s in sigmas]
        return [*ptrs, *([0.0] * len(sigmas))], True
    return [*([like] * len(sigmas)), *(float(s) if s is not None else 1.0 for s in sigmas)], False


def _unsupported(*tensors: torch.Tensor, sigmas: tuple[Sigma | None, ...]) -> str | None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "sampler-step kernels have no backward, but an input requires grad"
    for s in sigmas:
        if isinstance(s, torch.Tensor) and (s.numel() != 1 or s.device != tensors[0].device):
            return f"sigma must be a float or a 1-element tensor on {tensors[0].device}"
    for t in tensors[1:]:
        if t.shape != tensors[0].shape:
            return f"shapes differ: {tuple(tensors[0].shape)} vs {tuple(t.shape)}"
    return None


def _dispatch(tensors: tuple[torch.Tensor, ...], sigmas: tuple[Sigma | None, ...]) -> bool:
    sigma_tensors = [s for s in sigmas if isinstance(s, torch.Tensor)]
    return use_triton(
        *tensors, *sigma_tensors, op="sampler_steps", unsupported=_unsupported(*tensors, sigmas=sigmas)
    )


def _launch(
    kern: Kernel, tensors: tuple[torch.Tensor, ...], sigmas: tuple[Sigma | None, ...], **meta: bool
) -> torch.Tensor:
    """Run a step kernel over ``tensors`` (laid out like the first; the output too), then n and the σ."""
    x = flat_dense(tensors[0])
    out = torch.empty_like(x)
    n = x.numel()
    args, ptr = _sigma_args(*sigmas, like=x)
    others = (dense_like(t, x) for t in tensors[1:])
    kern[(cdiv(n, BLOCK),)](x, *others, out, n, *args, SIG_PTR=ptr, BLOCK=BLOCK, **meta)
    return out


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: Sigma, sigma_next: Sigma) -> torch.Tensor:
    """x + (sigma_next − sigma) · (x − denoised) / sigma (EDM eq. 5 Euler step)."""
    if not _dispatch((x, denoised), (sigma, sigma_next)):
        return euler_step_reference(x, denoised, sigma, sigma_next)
    return _launch(_euler_kernel, (x, denoised), (sigma, sigma_next))


def heun_correct(
    x: torch.Tensor,
    x_next: torch.Tensor,
    denoised: torch.Tensor,
    denoised_next: torch.Tensor,
    sigma: Sigma,
    sigma_next: Sigma,
) -> torch.Tensor:
    """Heun's second-order correction (EDM Algorithm 1, lines 9–11), from x at sigma."""
    tensors = (x, x_next, denoised, denoised_next)
    if not _dispatch(tensors, (sigma, sigma_next)):
        return heun_correct_reference(*tensors, sigma, sigma_next)
    return _launch(_heun_kernel, tensors, (sigma, sigma_next))


def dpmpp2m_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    old_denoised: torch.Tensor | None,
    sigma: Sigma,
    sigma_next: Sigma,
    sigma_prev: Sigma | None,
) -> torch.Tensor:
    """One DPM-Solver++(2M) step in the σ parametrisation (Lu et al. 2022, k-diffusion form).

    First order when ``old_denoised`` or ``sigma_prev`` is None and when ``sigma_next`` is 0.
    """
    if old_denoised is None or sigma_prev is None:
        old_denoised, sigma_prev = None, None
    sigmas = (sigma, sigma_next, sigma_prev)
    tensors: tuple[torch.Tensor, ...] = (x, denoised) if old_denoised is None else (x, denoised, old_denoised)
    if not _dispatch(tensors, sigmas):
        return dpmpp2m_step_reference(x, denoised, old_denoised, *sigmas)
    has_old = old_denoised is not None
    return _launch(_dpmpp2m_kernel, tensors if has_old else (*tensors, x), sigmas, HAS_OLD=has_old)


def weighted_sum(weights: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ wᵢ·tᵢ in one pass (fp32 accumulation), for 1 to ``MAX_TERMS`` tensors of one shape and float
    weights; the result has the first tensor's dtype and layout. The linear update of every multistep
    solver (iPNDM, DPM-Solver++(3M)) and of the EDM sampler's noise injection is one such sum."""
    if not 1 <= len(tensors) <= MAX_TERMS or len(weights) != len(tensors):
        raise ValueError(
            f"need 1 to {MAX_TERMS} tensors and one weight each, got {len(tensors)}, {len(weights)}"
        )
    ws = [float(w) for w in weights]
    if not _dispatch(tuple(tensors), ()):
        return weighted_sum_reference(ws, tensors)
    first = flat_dense(tensors[0])
    out = torch.empty_like(first)
    n = first.numel()
    ptrs = [first, *(dense_like(t, first) for t in tensors[1:])]
    pad = MAX_TERMS - len(ptrs)
    _weighted_sum_kernel[(cdiv(n, BLOCK),)](
        *ptrs, *([first] * pad), out, n, *ws, *([0.0] * pad), TERMS=len(ptrs), BLOCK=BLOCK
    )
    return out
