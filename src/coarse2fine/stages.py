"""The CTF method's data side, in one place: what each stage (coarse, fine, baseline) reads and
predicts (STAGE_SPECS), its model config, its batches, its loss and its held-out evaluation.

    stage     input tokens   predicts      attention  coarse map
    coarse    coarse ids     coarse ids    causal     needed
    fine      coarse ids     fine codes    full       needed (optional restricted head)
    baseline  fine codes     fine codes    causal     only for the IAR cluster loss

Causal stages are trained by teacher forcing: the input is the target shifted right behind the
class token. The full-attention stage reads every input token and predicts at every image position.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from coarse2fine.config import GPTConfig, UserError, gpt_config
from coarse2fine.data.codes import CodeStore
from coarse2fine.tokenizer.clustering import CoarseMap, member_table, restrict_to_cluster


@dataclass(frozen=True)
class StageSpec:
    """One stage of the method. Vocabularies are "fine" (the K codes) or "coarse" (the C clusters)."""

    name: str
    inputs: str            # vocabulary of the tokens the model reads
    outputs: str           # vocabulary it predicts
    causal: bool           # causal (teacher forcing, KV-cache decoding) or full attention (one pass)
    needs_coarse_map: bool
    restricted_head: bool  # can score only the members of each position's true cluster (--head restricted)
    cluster_loss: bool     # can add the IAR cluster-level cross-entropy (--cluster-loss-weight)
    target_name: str       # what its token accuracy counts, for reports

    def vocab(self, kind: str, codebook_size: int, num_coarse: int) -> int:
        return codebook_size if kind == "fine" else num_coarse

    def gpt_config(self, preset: str, codebook_size: int, num_coarse: int, num_classes: int, grid: int,
                   **overrides) -> GPTConfig:
        """Resolve a preset for this stage: vocabularies and attention direction follow from the stage."""
        out_v = self.vocab(self.outputs, codebook_size, num_coarse)
        in_v = self.vocab(self.inputs, codebook_size, num_coarse)
        kw = dict(vocab_size=out_v, causal=self.causal, num_classes=num_classes, grid=grid)
        if self.inputs != self.outputs:  # else 0: the input embedding shares the output vocabulary
            kw["input_vocab_size"] = in_v
        return gpt_config(preset, **{**kw, **overrides})

    def batch(self, codes: torch.Tensor, coarse: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, N] fine ids, coarse [B, N] their cluster ids (None when not needed)
        -> (tokens [B, N - 1] causal / [B, N] full attention, targets [B, N])."""
        src = codes if self.inputs == "fine" else coarse
        tgt = codes if self.outputs == "fine" else coarse
        return (src[:, :-1] if self.causal else src), tgt

    def logits(self, model: nn.Module, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """-> [B, N, V]: one prediction per image position (full attention drops the class position)."""
        out = model(tokens, cond)
        return out if self.causal else out[:, 1:]


STAGE_SPECS: dict[str, StageSpec] = {
    "coarse": StageSpec("coarse", inputs="coarse", outputs="coarse", causal=True, needs_coarse_map=True,
                        restricted_head=False, cluster_loss=False, target_name="coarse-label"),
    "fine": StageSpec("fine", inputs="coarse", outputs="fine", causal=False, needs_coarse_map=True,
                      restricted_head=True, cluster_loss=False,
                      target_name="fine-code (given the true coarse labels)"),
    "baseline": StageSpec("baseline", inputs="fine", outputs="fine", causal=True, needs_coarse_map=False,
                          restricted_head=False, cluster_loss=True, target_name="fine-code"),
}


def stage_spec(stage: str) -> StageSpec:
    if stage not in STAGE_SPECS:
        raise UserError(f"unknown stage {stage!r}; choose one of {sorted(STAGE_SPECS)}")
    return STAGE_SPECS[stage]


def stage_config(preset: str, stage: str, codebook_size: int, num_coarse: int, num_classes: int,
                 grid: int, **overrides) -> GPTConfig:
    """STAGE_SPECS[stage].gpt_config(...): the model config of `preset` for a stage."""
    return stage_spec(stage).gpt_config(preset, codebook_size, num_coarse, num_classes, grid, **overrides)


# ---- losses ------------------------------------------------------------------------------------

def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, N, V], targets [B, N] -> (mean cross-entropy, token accuracy), both scalars."""
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
    acc = (logits.argmax(-1) == targets).float().mean()
    return loss, acc


def fine_ce(logits: torch.Tensor, codes: torch.Tensor, coarse: torch.Tensor | None = None,
            members: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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


def restricted_head_ce(coarse: torch.Tensor, codes: torch.Tensor, members: torch.Tensor):
    """The restricted head's loss for `Transformer.forward(head=...)`: fine_ce(logits, codes, coarse,
    members) without the full logits. Each cluster's positions meet only its members' rows of the
    output weight (about K/C rows instead of K): on a CPU the K-way head matmul and its softmax were a
    third of a stage-2 training step. Equal to fine_ce on the full logits up to float rounding.

    coarse, codes [B, N] (coarse = each code's cluster); members [C, M] (-1 padded)
    -> head(h [B, T, D] normed hidden states (the last N are the image positions), weight [K, D])
    -> (mean cross-entropy over the cluster's members, fine-token accuracy), both scalars."""
    def head(h: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = codes.shape
        mem = members.to(codes.device)
        valid = mem >= 0
        rank_of = torch.zeros(weight.size(0), dtype=torch.long, device=codes.device)  # [K] place in its cluster
        rank_of[mem[valid]] = torch.arange(mem.size(1), device=codes.device).expand_as(mem)[valid]
        c = coarse.reshape(-1)  # [B*N]
        order = torch.argsort(c, stable=True)  # positions grouped by cluster
        counts = torch.bincount(c, minlength=mem.size(0)).tolist()  # [C]
        xs = h[:, -N:].reshape(B * N, -1)[order].split(counts)  # C x [n_c, D]
        ws = weight[mem[valid]].split(valid.sum(1).tolist())  # C x [M_c, D]: member rows, ascending ids
        ts = rank_of[codes.reshape(-1)[order]].split(counts)  # C x [n_c]
        losses, hits = [], []
        for x, w, t in zip(xs, ws, ts):
            if len(t):
                logits = (x @ w.t()).float()  # [n_c, M_c]
                losses.append(F.cross_entropy(logits, t, reduction="sum"))
                hits.append((logits.argmax(-1) == t).sum())
        return torch.stack(losses).sum() / (B * N), torch.stack(hits).sum().float() / (B * N)

    return head


def cluster_logits(logits: torch.Tensor, phi: torch.Tensor, num_coarse: int) -> torch.Tensor:
    """logits [B, N, K] over fine codes, phi [K] (cluster of each code) -> [B, N, C]: the logit of a
    cluster is the logsumexp of its members' logits (so its softmax is the cluster's total probability).
    Computed per cluster around the cluster's own maximum: exact in float32, memory O(B N K)."""
    x = logits.float()
    idx = phi.to(x.device).expand_as(x)  # [B, N, K]
    shape = (*x.shape[:-1], num_coarse)
    top = x.new_full(shape, float("-inf")).scatter_reduce(-1, idx, x, "amax")  # [B, N, C]
    sums = x.new_zeros(shape).scatter_add(-1, idx, (x - top.gather(-1, idx)).exp())
    return sums.log() + top  # an empty cluster gets -inf: probability 0


@dataclass(frozen=True)
class ClusterLoss:
    """IAR's extra term (arXiv 2501.00880): weight * CE(cluster logits, true cluster of the target).

    The cross-entropy of the cluster softmax needs only the target's cluster: it is
    logsumexp(all logits) - logsumexp(the target cluster's members' logits), exact and stable. Gathering
    the members ([B, N, M], M = the largest cluster) costs about what the token cross-entropy does; the
    scatter over all K codes that `cluster_logits` does made a training step 2.4x the baseline's."""

    phi: torch.Tensor  # [K] cluster id of each fine code
    num_coarse: int
    weight: float
    members: torch.Tensor = field(init=False, repr=False)  # [C, M] codes of each cluster, -1 padded

    def __post_init__(self):
        object.__setattr__(self, "phi", self.phi.long())
        object.__setattr__(self, "members", member_table(self.phi, self.num_coarse)[0])

    @classmethod
    def from_map(cls, cmap: CoarseMap, weight: float, device: torch.device) -> "ClusterLoss":
        return cls(cmap.phi.to(device), cmap.num_coarse, weight)

    def __call__(self, logits: torch.Tensor, codes: torch.Tensor, log_probs: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, N, K], codes [B, N] -> the weighted cluster cross-entropy (scalar). log_probs: the
        logits' log-softmax when the caller has it (stage_loss shares it with the token loss)."""
        target = self.phi.to(codes.device)[codes]  # [B, N]
        if log_probs is None:
            x = logits.float()
            nll = x.logsumexp(-1) - restrict_to_cluster(x, target, self.members).logsumexp(-1)
        else:
            nll = -restrict_to_cluster(log_probs, target, self.members).logsumexp(-1)
        return self.weight * nll.mean()


def stage_loss(model: nn.Module, spec: StageSpec, tokens, cond, targets, members=None,
               cluster: ClusterLoss | None = None):
    """-> (loss, token accuracy) of one batch of the stage `spec` (stage_spec(name)). members [C, M]: the
    fine stage's restricted head; cluster: the IAR term added to the baseline's loss."""
    if members is not None:  # restricted head: the input tokens are each position's true cluster
        return model(tokens, cond, head=restricted_head_ce(tokens, targets, members))
    logits = spec.logits(model, tokens, cond)  # [B, N, V]
    if cluster is None:
        return token_ce(logits, targets)
    logp = logits.float().log_softmax(-1)  # one softmax for both terms
    loss = F.nll_loss(logp.reshape(-1, logp.size(-1)), targets.reshape(-1))
    acc = (logits.argmax(-1) == targets).float().mean()
    return loss + cluster(logits, targets, log_probs=logp), acc


# ---- batches and held-out evaluation --------------------------------------------------------------

class StageBatches:
    """Turns a code store into (tokens, cond, targets) batches for one stage."""

    def __init__(self, store: CodeStore, stage: str, cmap: CoarseMap | None):
        self.store, self.stage, self.spec, self.cmap = store, stage, stage_spec(stage), cmap
        if self.spec.needs_coarse_map and cmap is None:
            raise UserError(f"stage {stage} needs a coarse map (--coarse-map); create it with `coarse2fine cluster`")
        if cmap is not None:
            fp = store.meta.get("tokenizer_fingerprint")
            if fp:
                cmap.check_fingerprint(fp, source=f"code store {store.dir}")
            if cmap.num_codes != store.meta["codebook_size"]:
                raise UserError(f"coarse map has {cmap.num_codes} codes, the code store {store.meta['codebook_size']}")

    def check_model(self, cfg: GPTConfig) -> None:
        """A model config built by hand (train() from Python) must be this stage's on this store: its grid,
        classes and vocabularies, and the stage's attention. A mismatch trained without a word (a 3-class store
        on a 2-class model put class 2 on the null class row; another grid, a model no tokenizer decodes)."""
        meta, spec = self.store.meta, self.spec
        num_coarse = self.cmap.num_coarse if self.cmap is not None else 0
        want = {"grid": meta["grid"], "num_classes": meta["num_classes"], "causal": spec.causal,
                "vocab_size": spec.vocab(spec.outputs, meta["codebook_size"], num_coarse)}
        have = {"grid": cfg.grid, "num_classes": cfg.num_classes, "causal": cfg.causal, "vocab_size": cfg.vocab_size}
        if spec.inputs != spec.outputs or cfg.input_vocab_size:  # 0: the inputs share the output vocabulary
            want["input_vocab_size"] = spec.vocab(spec.inputs, meta["codebook_size"], num_coarse)
            have["input_vocab_size"] = cfg.input_vocab_size or cfg.vocab_size
        wrong = [f"{k} {have[k]}, needs {want[k]}" for k in want if have[k] != want[k]]
        if wrong:
            raise UserError(f"the model config does not fit the {self.stage} stage on {self.store.dir}: "
                            f"{'; '.join(wrong)}; build it with coarse2fine.stages.stage_config(preset, "
                            f"{self.stage!r}, {meta['codebook_size']}, {num_coarse}, {meta['num_classes']}, "
                            f"{meta['grid']})")

    def __len__(self) -> int:
        return len(self.store)

    def get(self, idx: np.ndarray, device: torch.device):
        """idx [b] -> tokens [b, T], cond [b], targets [b, N] (StageSpec.batch gives the layout)."""
        order = np.argsort(idx)  # sorted reads are friendlier to the memory map
        codes = torch.from_numpy(np.asarray(self.store.codes[idx[order]], dtype=np.int64))
        labels = torch.from_numpy(np.asarray(self.store.labels[idx[order]], dtype=np.int64))
        inv = torch.from_numpy(np.argsort(order))
        codes, labels = codes[inv], labels[inv]  # [b, N], [b]
        # the coarse ids from the host copy: coarse_of's range check then costs no device sync per batch
        coarse = self.cmap.coarse_of(codes).to(device) if self.spec.needs_coarse_map else None
        codes, labels = codes.to(device), labels.to(device)
        tokens, targets = self.spec.batch(codes, coarse)
        return tokens, labels, targets


@torch.no_grad()
def evaluate_tokens(model: nn.Module, batches: StageBatches, device: torch.device, batch_size: int = 256,
                    members=None, max_seqs: int | None = None) -> dict[str, float]:
    """Mean NLL (nats/token) and token accuracy over a held-out code store, eval mode. The NLL is the
    stage's own prediction loss (without an IAR cluster term), so runs with and without it compare."""
    was = model.training
    model.eval()
    n = len(batches) if max_seqs is None else min(len(batches), max_seqs)
    tot_loss = tot_acc = 0.0
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(n, s + batch_size))
        tokens, cond, targets = batches.get(idx, device)
        loss, acc = stage_loss(model, batches.spec, tokens, cond, targets, members)
        tot_loss += loss.item() * len(idx)
        tot_acc += acc.item() * len(idx)
    model.train(was)
    return {"nll": tot_loss / n, "acc": tot_acc / n, "count": n}
