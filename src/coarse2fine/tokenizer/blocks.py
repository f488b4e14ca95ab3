"""Convolutional encoder/decoder of the LlamaGen VQ autoencoder.

Module and parameter names follow LlamaGen exactly (encoder.conv_blocks.{i}.res.{j}.norm1, ...), so
its released state dicts load without a key map. Shapes: images [B, 3, H, W]; the encoder returns
[B, z_channels, H/2**(n-1), W/2**(n-1)] for n = len(ch_mult); the decoder inverts that.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, eps 1e-6) as in LlamaGen. Channel counts that are not a multiple of 32 (only the
    small CPU presets) fall back to gcd(32, channels) groups so any width is valid."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm-swish-conv3x3 twice with a residual; a 1x1 `nin_shortcut` when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, 1x1-conv projections, residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = group_norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head of width C
        q, k, v = (t(y).reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        out = out.transpose(2, 3).reshape(b, c, h, w)  # back to [B, C, H, W]
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Asymmetric pad (right/bottom by one) then 3x3 stride-2 conv: H -> H/2."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _attn_or_identity(ch: int, use_attn: bool) -> nn.Module:
    # Identity keeps the mid-block indices (mid.0, mid.2) identical with and without attention.
    return AttnBlock(ch) if use_attn else nn.Identity()


class Encoder(nn.Module):
    """conv_in -> levels (res blocks [+ attn on the last level], downsample on all but the last)
    -> mid [res, attn, res] -> norm_out, swish, conv_out. [B,3,H,W] -> [B,z,H/f,W/f]."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, use_attn: bool = True, in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels = len(ch_mult)
        block_in = ch
        self.conv_blocks = nn.ModuleList()
        for i in range(levels):
            level = nn.Module()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks):
                level.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i == levels - 1 and use_attn:
                    level.attn.append(AttnBlock(block_in))
            if i != levels - 1:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout),
                                  _attn_or_identity(block_in, use_attn),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = _run_level(level, h, "downsample")
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in -> mid -> reversed levels (num_res_blocks+1 res blocks [+ attn on the first],
    upsample on all but the last) -> norm_out, swish, conv_out. [B,z,h,w] -> [B,3,h*f,w*f]."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, use_attn: bool = True, out_channels: int = 3):
        super().__init__()
        levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout),
                                  _attn_or_identity(block_in, use_attn),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.conv_blocks = nn.ModuleList()
        for i in range(levels):
            level = nn.Module()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = ch * ch_mult[levels - 1 - i]
            for _ in range(num_res_blocks + 1):
                level.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i == 0 and use_attn:
                    level.attn.append(AttnBlock(block_in))
            if i != levels - 1:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = _run_level(level, h, "upsample")
        return self.conv_out(swish(self.norm_out(h)))


def _run_level(level: nn.Module, h: torch.Tensor, resample: str) -> torch.Tensor:
    """One resolution level of the encoder or decoder: res blocks (each followed by its attention block
    where the level has them), then the level's "downsample" / "upsample" module if it has one."""
    for j, res in enumerate(level.res):
        h = res(h)
        if len(level.attn) > 0:
            h = level.attn[j](h)
    return getattr(level, resample)(h) if hasattr(level, resample) else h
