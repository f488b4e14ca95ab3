"""Loss functions (pure): next-token cross-entropy and the stage-2 fine losses."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, N, V], targets [B, N] -> (mean cross-entropy, token accuracy), both scalars."""
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
    acc = (logits.argmax(-1) == targets).float().mean()
    return loss, acc


def restrict_to_cluster(logits: torch.Tensor, coarse: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Keep, at each position, only the fine codes of that position's cluster.

    logits [B, N, K]; coarse [B, N]; members [C, M] (-1 padded) -> logits [B, N, M] over the
    cluster's members (padding at -inf). Index m of the result is fine code members[coarse, m].
    """
    idx = members.to(logits.device)[coarse]  # [B, N, M]
    out = logits.gather(-1, idx.clamp(min=0))
    return out.masked_fill(idx < 0, float("-inf"))


def fine_ce(logits: torch.Tensor, codes: torch.Tensor, coarse: torch.Tensor | None = None,
            members: torch.Tensor | None = None, phi: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-2 loss. Full head (paper): K-way cross-entropy. Restricted head (members given):
    cross-entropy over the members of the true coarse cluster only; the target's rank inside its
    cluster is found through `members`. Returns (loss, fine-token accuracy)."""
    if members is None:
        return token_ce(logits, codes)
    assert coarse is not None
    sub = restrict_to_cluster(logits, coarse, members)  # [B, N, M]
    target = (members.to(codes.device)[coarse] == codes.unsqueeze(-1)).float().argmax(-1)  # [B, N]
    loss = F.cross_entropy(sub.reshape(-1, sub.size(-1)).float(), target.reshape(-1))
    acc = (sub.argmax(-1) == target).float().mean()
    return loss, acc
