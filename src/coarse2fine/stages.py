"""The CTF method's data side: what each stage (coarse, fine, baseline) reads and predicts, its batches,
its loss and its held-out evaluation."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from coarse2fine.config import UserError
from coarse2fine.data.codes import CodeStore
from coarse2fine.tokenizer.clustering import CoarseMap


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


class StageBatches:
    """Turns a code store into (tokens, cond, targets) batches for one stage."""

    def __init__(self, store: CodeStore, stage: str, cmap: CoarseMap | None):
        self.store, self.stage, self.cmap = store, stage, cmap
        if stage != "baseline" and cmap is None:
            raise UserError(f"stage {stage} needs a coarse map (--coarse-map); create it with `coarse2fine cluster`")
        if cmap is not None:
            fp = store.meta.get("tokenizer_fingerprint")
            if fp:
                cmap.check_fingerprint(fp, source=f"code store {store.dir}")
            if cmap.num_codes != store.meta["codebook_size"]:
                raise UserError(f"coarse map has {cmap.num_codes} codes, the code store {store.meta['codebook_size']}")

    def __len__(self) -> int:
        return len(self.store)

    def get(self, idx: np.ndarray, device: torch.device):
        """idx [b] -> tokens_in [b, T], cond [b], targets [b, N] (see model.forward for the layout)."""
        order = np.argsort(idx)  # sorted reads are friendlier to the memory map
        codes = torch.from_numpy(np.asarray(self.store.codes[idx[order]], dtype=np.int64))
        labels = torch.from_numpy(np.asarray(self.store.labels[idx[order]], dtype=np.int64))
        inv = torch.from_numpy(np.argsort(order))
        codes, labels = codes[inv].to(device), labels[inv].to(device)  # [b, N], [b]
        if self.stage == "baseline":
            return codes[:, :-1], labels, codes
        coarse = self.cmap.coarse_of(codes)
        if self.stage == "coarse":
            return coarse[:, :-1], labels, coarse
        return coarse, labels, codes  # fine: all coarse labels in, all fine codes out


def stage_loss(model: nn.Module, stage: str, tokens, cond, targets, members=None):
    logits = model(tokens, cond)
    if stage == "fine":
        return fine_ce(logits[:, 1:], targets, tokens, members)  # drop the class position
    return token_ce(logits, targets)


@torch.no_grad()
def evaluate_tokens(model: nn.Module, batches: StageBatches, device: torch.device, batch_size: int = 256,
                    members=None, max_seqs: int | None = None) -> dict[str, float]:
    """Mean NLL (nats/token) and token accuracy over a held-out code store, eval mode."""
    was = model.training
    model.eval()
    n = len(batches) if max_seqs is None else min(len(batches), max_seqs)
    tot_loss = tot_acc = 0.0
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(n, s + batch_size))
        tokens, cond, targets = batches.get(idx, device)
        loss, acc = stage_loss(model, batches.stage, tokens, cond, targets, members)
        tot_loss += loss.item() * len(idx)
        tot_acc += acc.item() * len(idx)
    model.train(was)
    return {"nll": tot_loss / n, "acc": tot_acc / n, "count": n}
