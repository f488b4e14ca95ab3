"""2-D rotary position embedding as in LlamaGen.

The head dimension is split in halves: the first half rotates with the row index, the second with
the column index, each with hd/4 frequencies. Rotation acts on interleaved pairs (x[2k], x[2k+1]).
Class-token positions get cos = sin = 0 (LlamaGen's quirk: their rotated q/k are zero vectors);
released weights were trained with it, so it is reproduced here.
"""
from __future__ import annotations

import torch


def rope_2d(grid: int, head_dim: int, base: float = 10000.0, cls_tokens: int = 1) -> torch.Tensor:
    """Return cos/sin table [cls_tokens + grid*grid, head_dim // 2, 2] in raster order p = row*grid+col."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.float64)[: half // 2] / half))
    idx = torch.arange(grid, dtype=torch.float64)
    ang = torch.outer(idx, inv_freq)  # [grid, hd/4]
    rows = ang[:, None, :].expand(grid, grid, -1)  # varies with the row index
    cols = ang[None, :, :].expand(grid, grid, -1)  # varies with the column index
    ang2d = torch.cat([rows, cols], dim=-1).reshape(grid * grid, half)  # [N, hd/2]
    table = torch.stack([ang2d.cos(), ang2d.sin()], dim=-1).float()  # [N, hd/2, 2]
    return torch.cat([torch.zeros(cls_tokens, half, 2), table], dim=0)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, hd]; table [T, hd/2, 2] -> rotated x, same dtype.

    Eager: each pair (x[2k], x[2k+1]) is a complex number times (cos + i sin), one kernel each way: 3x
    faster than the pairwise real form on a CPU, where RoPE was ~5% of a training step. Under
    torch.compile the real form (inductor generates no code for complex tensors); both give the same
    products and sums."""
    if torch.compiler.is_compiling():
        return rope_real(x, table)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, T, H, hd/2]
    t = torch.view_as_complex(table.reshape(1, xc.size(1), 1, xc.size(3), 2))  # [1, T, 1, hd/2]
    return torch.view_as_real(xc * t).flatten(3).type_as(x)


def rope_real(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """apply_rope in real arithmetic: x0 cos - x1 sin, x1 cos + x0 sin for each pair (x0, x1)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, T, H, hd/2, 2]
    t = table.view(1, xs.size(1), 1, xs.size(3), 2)
    x0, x1 = xs[..., 0], xs[..., 1]
    cos, sin = t[..., 0], t[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(3).type_as(x)
