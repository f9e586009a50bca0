"""ADM/EDM-style UNet: residual blocks with adaptive GroupNorm + SiLU, self-attention, skip connections.

Shapes: x (B, C, H, W), c_noise (B,). The noise level enters through an embedding (positional or
Fourier features of c_noise → MLP) that gives every residual block a per-channel scale and shift for
its second normalisation (ADM's "scale-shift norm"). The fused norm/modulation/SiLU and the attention
go through :mod:`diffengine.kernels`, so the Triton path and the PyTorch path run the same model.
Output convolutions of every residual branch and of the network are zero-initialised, so a fresh
network is the identity on each residual path and outputs exactly 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffengine import kernels
from diffengine.config import UNetConfig

_SKIP_SCALE = 1 / math.sqrt(2)  # keeps the variance of residual sums constant (EDM's skip_scale)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm(nn.GroupNorm):
    """GroupNorm with optional modulation and SiLU, computed by ``kernels.group_norm_silu``."""

    def forward(
        self,
        x: torch.Tensor,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        silu: bool = True,
    ) -> torch.Tensor:
        return kernels.group_norm_silu(
            x, self.weight, self.bias, self.num_groups, scale, shift, eps=self.eps, silu=silu
        )


class NoiseEmbedding(nn.Module):
    """c_noise (B,) → (B, channels) sin/cos features: positional (fixed frequencies) or random Fourier."""

    freqs: torch.Tensor

    def __init__(
        self, channels: int, kind: str = "positional", scale: float = 1.0, max_positions: int = 10000
    ) -> None:
        super().__init__()
        half = channels // 2
        if kind == "positional":
            freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        else:
            freqs = 2 * math.pi * scale * torch.randn(half, generator=torch.Generator().manual_seed(0))
        self.register_buffer("freqs", freqs)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.float()[:, None] * self.freqs[None, :]  # (B, half)
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, groups: int, dropout: float):
        super().__init__()
        self.norm0 = GroupNorm(groups, in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_ch, 2 * out_ch)  # per-channel (scale, shift) from the embedding
        self.norm1 = GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self.norm0(x))
        scale, shift = self.affine(emb).to(h.dtype).chunk(2, dim=1)  # (B, out_ch) each
        h = self.conv1(self.dropout(self.norm1(h, scale, shift)))
        return (h + self.skip(x)) * _SKIP_SCALE


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = channels // head_dim
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x, silu=False)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # (B, heads, N, D) each
        out = kernels.attention(q.contiguous(), k.contiguous(), v.contiguous())  # (B, heads, N, D)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * _SKIP_SCALE


class Block(nn.Module):
    """A residual block, optionally followed by self-attention; checkpointed when asked."""

    def __init__(self, in_ch: int, out_ch: int, attn: bool, config: UNetConfig):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, config.emb_channels, config.num_groups, config.dropout)
        self.attn = AttentionBlock(out_ch, config.head_dim, config.num_groups) if attn else None
        self.checkpointing = config.checkpointing

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            out: torch.Tensor = checkpoint(self._forward, x, emb, use_reentrant=False)
            return out
        return self._forward(x, emb)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """``UNet(config)(x, c_noise)`` → tensor shaped like x. See :class:`~diffengine.config.UNetConfig`.

    Conditioned networks (inpainting: the masked image and the mask) take ``cond_channels`` more input
    channels: ``UNet(config, cond_channels=4)(x, c_noise, cond)`` concatenates ``cond`` (B, 4, H, W)
    to x before the first convolution; the output still has x's ``in_channels``. ``cond_channels``
    defaults to ``config.cond_channels`` where the config has that field, else 0 (unconditional).
    """

    def __init__(self, config: UNetConfig, cond_channels: int | None = None):
        super().__init__()
        self.config = config
        self.cond_channels = int(
            cond_channels if cond_channels is not None else getattr(config, "cond_channels", 0) or 0
        )
        mc, emb_ch = config.model_channels, config.emb_channels
        self.embed = NoiseEmbedding(mc, config.noise_embedding, config.fourier_scale)
        self.embed_mlp = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch), nn.SiLU())
        self.conv_in = nn.Conv2d(config.in_channels + self.cond_channels, mc, 3, padding=1)

        # Encoder: remember the channel count of every output that becomes a skip connection.
        self.down = nn.ModuleList()
        skips, ch, res = [mc], mc, config.resolution
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(Block(ch, mc * mult, res in config.attn_resolutions, config))
                ch = mc * mult
                skips.append(ch)
            if level < len(config.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2

        self.mid = nn.ModuleList([Block(ch, ch, True, config), Block(ch, ch, False, config)])

        # Decoder: one more block per level than the encoder, each eating one skip connection.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(Block(ch + skips.pop(), mc * mult, res in config.attn_resolutions, config))
                ch = mc * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.norm_out = GroupNorm(config.num_groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, config.in_channels, 3, padding=1))

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[-2:] != (cfg.resolution,) * 2:
            raise ValueError(
                f"UNet expects x of shape (B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}), "
                f"got {tuple(x.shape)}"
            )
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"c_noise must have shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        if self.cond_channels:
            want = (x.shape[0], self.cond_channels, *x.shape[-2:])
            if cond is None or tuple(cond.shape) != want:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this UNet is conditioned: cond must have shape {want}, got {got}")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("cond given to an unconditional UNet (cond_channels=0)")
        emb = self.embed_mlp(self.embed(c_noise).to(x.dtype))  # (B, emb_ch), already SiLU-activated

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            if isinstance(block, Block):
                h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(self.norm_out(h))
