"""Fused preconditioned, weighted loss from the raw network output.

``precond_loss``: ``weight · mean((c_skip·x_noisy + c_out·F − x)²)`` per sample in one pass over the
batch (3 reads, a tiny partial-sum buffer); its backward to ``F`` is one more pass
(3 reads, 1 write): ``dF = g·weight·c_out·2/M·(c_skip·x_noisy + c_out·F − x)``. Per-sample
coefficients are (B,). Partial sums are reduced in a fixed order, so the loss is deterministic.
Only ``net_out`` is differentiated (the other inputs are data and σ-functions).

Dispatch: ``backend.AUTO["precond_loss"]`` is "never" (0.98x eager on an H200), so ``auto`` runs the
PyTorch reference and only a forced ``DIFFENGINE_KERNELS=triton`` runs the kernel (``bench/kernels.py``).
"""

from __future__ import annotations

import torch

from diffengine.kernels._triton import cdiv, dense_like, flat_dense, kernel, tl
from diffengine.kernels.backend import use_triton

BLOCK = 4096


def precond_loss_reference(
    net_out: torch.Tensor,
    x_noisy: torch.Tensor,
    x_clean: torch.Tensor,
    c_skip: torch.Tensor,
    c_out: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """Per-sample weight · mean((c_skip·x_noisy + c_out·F − x)²). Coefficients: (B,). Returns (B,)."""
    shape = (-1,) + (1,) * (x_clean.ndim - 1)
    denoised = c_skip.view(shape) * x_noisy + c_out.view(shape) * net_out
    return weight * (denoised - x_clean).square().flatten(1).mean(1)


@kernel
def _loss_kernel(  # type: ignore[no-untyped-def]
    F, XN, X0, CSKIP, COUT, COEF, OUT, M, n_chunks, BACKWARD: tl.constexpr, BLOCK: tl.constexpr
):
    # One (sample, chunk) per program; both passes need the residual r = c_skip·x_noisy + c_out·F − x.
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    base = b.to(tl.int64) * M
    f = tl.load(F + base + offs, mask=mask, other=0.0).to(tl.float32)
    xn = tl.load(XN + base + offs, mask=mask, other=0.0).to(tl.float32)
    x0 = tl.load(X0 + base + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(CSKIP + b).to(tl.float32) * xn + tl.load(COUT + b).to(tl.float32) * f - x0
    if BACKWARD:  # dF = coef·r with coef = g·weight·c_out·2/M per sample
        tl.store(OUT + base + offs, (tl.load(COEF + b) * r).to(OUT.dtype.element_ty), mask=mask)
    else:  # this chunk's partial sum of r²
        r = tl.where(mask, r, 0.0)
        tl.store(OUT + b * n_chunks + chunk, tl.sum(r * r, axis=0))


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(B, values per sample) of a batch-outermost dense tensor."""
    b = t.shape[0]
    return b, t.numel() // b


def _per_sample(*coeffs: torch.Tensor, batch: int) -> list[torch.Tensor]:
    out = []
    for c in coeffs:
        if c.numel() != batch:
            raise ValueError(f"per-sample coefficient must have {batch} values, got shape {tuple(c.shape)}")
        out.append(c.reshape(batch).contiguous())
    return out


class _PrecondLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        net_out: torch.Tensor,
        x_noisy: torch.Tensor,
        x_clean: torch.Tensor,
        c_skip: torch.Tensor,
        c_out: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        f = flat_dense(net_out)
        xn, x0 = dense_like(x_noisy, f), dense_like(x_clean, f)
        b, m = _rows(f)
        c_skip, c_out, weight = _per_sample(c_skip, c_out, weight, batch=b)
        n_chunks = cdiv(m, BLOCK)
        partial = torch.empty(b, n_chunks, device=f.device, dtype=torch.float32)
        _loss_kernel[(b, n_chunks)](
            f, xn, x0, c_skip, c_out, f, partial, m, n_chunks, BACKWARD=False, BLOCK=BLOCK
        )
        ctx.save_for_backward(f, xn, x0, c_skip, c_out, weight)
        out_dtype = torch.promote_types(torch.promote_types(net_out.dtype, weight.dtype), c_out.dtype)
        return (weight.float() * partial.sum(1) / m).to(out_dtype)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        f, xn, x0, c_skip, c_out, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        b, m = _rows(f)
        coef = (grad.float() * weight.float() * c_out.float() * (2.0 / m)).contiguous()
        df = torch.empty_like(f)
        n_chunks = cdiv(m, BLOCK)
        _loss_kernel[(b, n_chunks)](
            f, xn, x0, c_skip, c_out, coef, df, m, n_chunks, BACKWARD=True, BLOCK=BLOCK
        )
        return df, None, None, None, None, None


def _no_grad_reason(*tensors: torch.Tensor) -> str | None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "the kernel differentiates net_out only, but another input requires grad"
    return None


def precond_loss(
    net_out: torch.Tensor,
    x_noisy: torch.Tensor,
    x_clean: torch.Tensor,
    c_skip: torch.Tensor,
    c_out: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """Per-sample weight · mean((c_skip·x_noisy + c_out·F − x)²). Coefficients: (B,). Returns (B,).

    Differentiable with respect to ``net_out`` on both backends.
    """
    tensors = (net_out, x_noisy, x_clean, c_skip, c_out, weight)
    if net_out.shape != x_noisy.shape or net_out.shape != x_clean.shape:
        raise ValueError(f"shapes differ: {net_out.shape}, {x_noisy.shape}, {x_clean.shape}")
    if use_triton(*tensors, op="precond_loss", unsupported=_no_grad_reason(*tensors[1:])):
        return _PrecondLoss.apply(*tensors)
    return precond_loss_reference(*tensors)
