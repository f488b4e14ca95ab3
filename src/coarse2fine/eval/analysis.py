"""The redundancy check of the paper's Figure 1(b).

Encode real images, replace every code by a uniformly drawn member of its cluster, decode, and
measure how far the picture moves (PSNR against the plain reconstruction). With k-means clusters
the swap should barely matter; with random clusters of the same sizes it should wreck the image.
"""
from __future__ import annotations

import numpy as np
import torch

from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.tokenizer.vq import VQModel


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between uint8 images [B, H, W, 3]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp(min=1e-10))


def swap_within_clusters(codes: torch.Tensor, cmap: CoarseMap, generator: torch.Generator) -> torch.Tensor:
    """codes [B, N] -> codes where each entry is a uniformly random member of its own cluster."""
    coarse = cmap.coarse_of(codes)
    size = cmap.sizes[coarse]  # [B, N]
    pick = (torch.rand(codes.shape, generator=generator) * size).long().clamp(max=size - 1)
    return cmap.members[coarse, pick]


@torch.no_grad()
def redundancy(vq: VQModel, images: torch.Tensor, maps: dict[str, CoarseMap], seed: int = 0,
               batch_size: int = 64) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """images [B, 3, H, W] in [-1, 1]. Returns (stats per map name, uint8 image rows for a figure)."""
    from coarse2fine.data.sample_folder import decode_images as decode

    g = torch.Generator().manual_seed(seed)
    codes = torch.cat([vq.encode(images[i:i + batch_size]).flatten(1) for i in range(0, len(images), batch_size)])
    recon = decode(vq, codes, batch_size=batch_size)
    orig = torch.clamp(127.5 * images + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    rows = {"original": orig, "reconstruction": recon}
    stats = {"reconstruction": {"psnr_vs_original": psnr(recon, orig).mean().item()}}
    for name, cmap in maps.items():
        swapped = decode(vq, swap_within_clusters(codes, cmap, g), batch_size=batch_size)
        rows[name] = swapped
        p = psnr(swapped, recon)
        stats[name] = {"psnr_vs_reconstruction": p.mean().item(), "psnr_std": p.std().item(),
                       "psnr_vs_original": psnr(swapped, orig).mean().item(),
                       "codes_changed": float((swap_within_clusters(codes, cmap, g) != codes).float().mean()),
                       "clusters": cmap.num_coarse, "method": cmap.method}
    return stats, rows


def figure(rows: dict[str, torch.Tensor], n: int) -> np.ndarray:
    """Stack the first n images of each row into one uint8 array [rows*n images] for save_grid."""
    return torch.cat([r[:n] for r in rows.values()]).numpy()
