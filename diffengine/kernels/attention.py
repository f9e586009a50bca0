"""Self-attention ``softmax(q kᵀ / √d) v`` for the UNet: a flash-style Triton kernel or SDPA.

Forward (FlashAttention-2 style): one program per (query block, batch·head) streams key/value blocks
with an online softmax in base 2 and stores the log-sum-exp; nothing of size N×N is materialised.
Backward recomputes the probabilities from the log-sum-exp: one kernel accumulates dK, dV per key
block, another dQ per query block (no atomics, deterministic). Sequence lengths that are not a
multiple of the block are masked; head dims up to 128 (32/64/128 are the UNet's).

Dispatch: ``F.scaled_dot_product_attention`` ships FlashAttention-2/cuDNN kernels that a plain Triton
kernel rarely beats: on an H200 (torch 2.11, Triton 3.6) the kernel ran at 0.37x / 0.48x / 0.59x
SDPA's speed for N = 256 / 1024 / 4096 (D=64, bf16), so ``backend.AUTO["attention"]`` is "never":
``auto`` uses SDPA and only a forced ``DIFFENGINE_KERNELS=triton`` runs the kernel (tests, benchmarks).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from diffengine.kernels._triton import cdiv, kernel, next_pow2, tl
from diffengine.kernels.backend import interpreting, use_triton

MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax(q kᵀ / sqrt(d)) v. q, k, v: (B, heads, N, D)."""
    return F.scaled_dot_product_attention(q, k, v)


@kernel
def _attn_fwd_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, O, LSE, qk_scale, N, H, D,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DOT_T: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < N
    dmask = offs_d < D
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=mmask[:, None] & dmask[None, :], other=0.0).to(DOT_T)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0).to(DOT_T)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0).to(DOT_T)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (M, N), log2 units
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(O.dtype.element_ty).to(DOT_T), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])
    tl.store(LSE + bh * N + offs_m, m_i + tl.math.log2(l_i), mask=mmask)


@kernel
def _attn_bwd_dkdv_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, DO, LSE, DELTA, DK, DV, sm_scale, qk_scale, N, H, D,
    stride_b, stride_h, stride_n,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DOT_T: tl.constexpr,
):  # fmt: skip
    # All tensors here share one contiguous (B, H, N, D) layout (the launcher makes it so).
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    base = (bh // H) * stride_b + (bh % H) * stride_h
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    nmask = offs_n < N
    dmask = offs_d < D
    kv_mask = nmask[:, None] & dmask[None, :]
    kv_off = base + offs_n[:, None] * stride_n + offs_d[None, :]
    k = tl.load(K + kv_off, mask=kv_mask, other=0.0).to(DOT_T)
    v = tl.load(V + kv_off, mask=kv_mask, other=0.0).to(DOT_T)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mmask = offs_m < N
        q_mask = mmask[:, None] & dmask[None, :]
        q_off = base + offs_m[:, None] * stride_n + offs_d[None, :]
        q = tl.load(Q + q_off, mask=q_mask, other=0.0).to(DOT_T)
        do = tl.load(DO + q_off, mask=q_mask, other=0.0).to(DOT_T)
        lse = tl.load(LSE + bh * N + offs_m, mask=mmask, other=0.0)
        delta = tl.load(DELTA + bh * N + offs_m, mask=mmask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(mmask[:, None] & nmask[None, :], p, 0.0)
        dv += tl.dot(tl.trans(p).to(DV.dtype.element_ty).to(DOT_T), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(DK.dtype.element_ty).to(DOT_T), q, input_precision=PRECISION)
    tl.store(DK + kv_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@kernel
def _attn_bwd_dq_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, DO, LSE, DELTA, DQ, sm_scale, qk_scale, N, H, D,
    stride_b, stride_h, stride_n,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DOT_T: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    base = (bh // H) * stride_b + (bh % H) * stride_h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < N
    dmask = offs_d < D
    q_mask = mmask[:, None] & dmask[None, :]
    q_off = base + offs_m[:, None] * stride_n + offs_d[None, :]
    q = tl.load(Q + q_off, mask=q_mask, other=0.0).to(DOT_T)
    do = tl.load(DO + q_off, mask=q_mask, other=0.0).to(DOT_T)
    lse = tl.load(LSE + bh * N + offs_m, mask=mmask, other=0.0)
    delta = tl.load(DELTA + bh * N + offs_m, mask=mmask, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        kv_mask = nmask[:, None] & dmask[None, :]
        kv_off = base + offs_n[:, None] * stride_n + offs_d[None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0).to(DOT_T)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0).to(DOT_T)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(nmask[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DQ.dtype.element_ty).to(DOT_T), k, input_precision=PRECISION)
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


def _dot_type(dtype: torch.dtype) -> object:
    """Operand type of ``tl.dot``: the input's, except fp32 under the interpreter (its dot multiplies
    bf16 bit patterns as integers); bf16 products are exact in fp32, so the math is unchanged."""
    if interpreting() and dtype != torch.float32:
        return tl.float32
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def _meta(q: torch.Tensor, block_m: int | None, block_n: int | None) -> dict[str, Any]:
    """Tile sizes, matmul precision and operand type shared by the forward and backward launches."""
    n, d = q.shape[-2:]
    block_d = max(16, next_pow2(d))
    small = max(16, next_pow2(n))
    return {
        "BLOCK_M": block_m or (64 if n >= 64 else small),
        "BLOCK_N": block_n or ((32 if block_d > 64 else 64) if n >= 64 else small),
        "BLOCK_D": block_d,
        "PRECISION": "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32",
        "DOT_T": _dot_type(q.dtype),
        "num_warps": 4,
    }


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        block_m: int | None,
        block_n: int | None,
    ) -> torch.Tensor:
        q, k, v = (t.contiguous() for t in (q, k, v))
        b, h, n, d = q.shape
        meta = _meta(q, block_m, block_n)
        sm_scale = 1.0 / math.sqrt(d)
        o = torch.empty_like(q)
        lse = torch.empty(b * h, n, device=q.device, dtype=torch.float32)
        _attn_fwd_kernel[(cdiv(n, meta["BLOCK_M"]), b * h)](
            q, k, v, o, lse, sm_scale * _LOG2E, n, h, d,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            **meta, num_stages=2,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.meta = meta  # type: ignore[attr-defined]
        return o

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, do: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        do = do.contiguous()
        b, h, n, d = q.shape
        meta = ctx.meta  # type: ignore[attr-defined]
        sm_scale = 1.0 / math.sqrt(d)
        delta = (do.float() * o.float()).sum(-1).view(b * h, n)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = (sm_scale, sm_scale * _LOG2E, n, h, d, q.stride(0), q.stride(1), q.stride(2))
        dkdv_grid = (cdiv(n, meta["BLOCK_N"]), b * h)
        _attn_bwd_dkdv_kernel[dkdv_grid](q, k, v, do, lse, delta, dk, dv, *common, **meta)
        _attn_bwd_dq_kernel[(cdiv(n, meta["BLOCK_M"]), b * h)](q, k, v, do, lse, delta, dq, *common, **meta)
        return dq, dk, dv, None, None


def _unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        return f"attention kernel needs equal (B, heads, N, D) shapes, got {q.shape}, {k.shape}, {v.shape}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if not q.dtype == k.dtype == v.dtype:
        return "q, k, v dtypes differ"
    return None


def attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int | None = None, block_n: int | None = None
) -> torch.Tensor:
    """The Triton path of ``attention``; ``block_m``/``block_n`` override the tile sizes (tests)."""
    reason = _unsupported(q, k, v)
    if reason is not None:
        raise ValueError(reason)
    return _FlashAttention.apply(q, k, v, block_m, block_n)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax(q kᵀ / sqrt(d)) v. q, k, v: (B, heads, N, D); returns (B, heads, N, D).

    Triton kernel where the backend policy allows (only when forced: ``backend.AUTO``),
    ``F.scaled_dot_product_attention`` otherwise.
    """
    if use_triton(q, k, v, op="attention", unsupported=_unsupported(q, k, v)):
        return attention_triton(q, k, v)
    return attention_reference(q, k, v)
