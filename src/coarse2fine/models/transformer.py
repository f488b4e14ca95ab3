"""One Llama-style network (LlamaGen GPT), causal or bidirectional.

Three uses share it (coarse2fine.stages.STAGE_SPECS sets their vocabularies and attention):
- baseline: causal over the K fine codes (plain LlamaGen c2i);
- stage 1 (coarse): causal over the C coarse labels;
- stage 2 (fine): bidirectional; input = class token + all N coarse labels (vocab C),
  output = K-way logits at every image position, in one pass.

Sequence layout: position 0 is the class token, positions 1.. are image tokens in raster order.
Parameter names follow LlamaGen so its c2i checkpoints load through `checkpoint.load_strict`.
"""
from __future__ import annotations

import torch
from torch import nn

from coarse2fine.config import GPTConfig
from coarse2fine.layers import Attention, FeedForward, KVCache, LabelEmbedder, RMSNorm, rope_2d


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg.dim, cfg.n_head, cfg.attn_dropout_p, cfg.resid_dropout_p)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden, cfg.ffn_dropout_p)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, causal, input_pos=None, mask=None, end=None):
        h = x + self.attention(self.attention_norm(x), rope, causal, input_pos, mask, end)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        in_vocab = cfg.input_vocab_size or cfg.vocab_size
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(in_vocab, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # positions 0 .. N (class token + N image tokens); non-persistent: not part of the weights
        self.register_buffer("rope", rope_2d(cfg.grid, cfg.head_dim, cfg.rope_base), persistent=False)
        self.max_batch = -1
        self.masked_cache = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) for Linear/Embedding weights, zero output head (LlamaGen's init)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.output.weight)

    @property
    def max_positions(self) -> int:
        """Cached positions: the class token plus the cfg.seq_len image tokens."""
        return self.cfg.seq_len + 1

    # ---- caches ---------------------------------------------------------------------------
    def setup_cache(self, batch: int, dtype: torch.dtype = torch.float32, masked: bool = False) -> None:
        """Allocate static KV caches for `batch` rows (2x the images under CFG).

        Reused as long as batch/dtype match: a second call with the same shape does nothing.
        masked=True reads the whole cache under a mask (fixed shapes, for torch.compile)."""
        if not self.cfg.causal:
            raise RuntimeError("KV caching applies to causal models; stage 2 predicts in one pass")
        dev = self.output.weight.device
        same = (self.max_batch == batch and self.layers[0].attention.kv_cache is not None
                and self.layers[0].attention.kv_cache.k_cache.dtype == dtype
                and self.layers[0].attention.kv_cache.k_cache.device == dev)
        self.masked_cache = masked
        if same:
            return
        for layer in self.layers:
            # a bf16 cache on CPU keeps its keys transposed (math attention reads them as q @ k^T; a bf16
            # matmul copied a transposed view first). fp32 and SDPA devices keep [B, H, L, hd]: in the fp32
            # loop the transposed layout measured 1.03-1.10x the CPU time (speed_key_layout_grid16_cpu.md)
            layer.attention.kv_cache = KVCache(batch, self.cfg.n_head, self.max_positions, self.cfg.head_dim,
                                               dtype=dtype, device=dev,
                                               keys_transposed=dev.type == "cpu" and dtype != torch.float32)
        self.max_batch = batch
        L = self.max_positions
        self.register_buffer("causal_mask", torch.tril(torch.ones(L, L, dtype=torch.bool, device=dev)),
                             persistent=False)

    # ---- forward ---------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor | None, cond: torch.Tensor | None) -> torch.Tensor:
        """[class embedding (if cond)] + token embeddings -> [B, T, D]."""
        parts = []
        if cond is not None:
            parts.append(self.cls_embedding(cond).unsqueeze(1))  # [B, 1, D]
        if tokens is not None:
            parts.append(self.tok_embeddings(tokens))  # [B, T, D]
        return self.tok_dropout(torch.cat(parts, dim=1))

    def forward(self, tokens: torch.Tensor | None, cond: torch.Tensor | None = None,
                input_pos: torch.Tensor | None = None, last_only: bool = False,
                prefix_len: int | None = None, head=None, guidance: float | None = None):
        """Logits (float32).

        Full pass (input_pos None): sequence = [cls(cond), tokens...] at positions 0..T;
        returns [B, T+1, V] (the caller drops what it doesn't need).
        Cached pass: input_pos [T] gives the positions of this chunk; prefill is
        `forward(None, cond, input_pos=tensor([0]))`, a decode step `forward(tok [B,1], None, tensor([p]))`.
        last_only: compute the head for the last position only ([B, 1, V]).
        prefix_len: input_pos[-1] + 1 when the caller knows it (prefix mode); saves reading
        input_pos on the host, a device sync per step on GPU.
        head: a function (normed hidden states [B, T+1, D], output weight [V, D]) -> what forward
        returns instead of the full logits, for a loss that needs a few vocabulary rows per position
        (stages.restricted_head_ce). It runs inside forward, where DDP and FSDP expect the weight used.
        guidance: the rows are [cond; null] (classifier-free guidance) and the head sees only the guided
        rows, null + (cond - null) * guidance ([B/2, ..., V] returned; guidance 1.0 = the cond rows as
        they are). The logits are linear in the normed hidden state and the head has no bias, so guiding
        the hidden states equals guiding the logits up to float rounding, for half the head's product
        and no pass over [B, V] logits.
        """
        h = self.embed(tokens, cond)
        if input_pos is None:
            rope = self.rope[: h.size(1)]
            for layer in self.layers:
                h = layer(h, rope, self.cfg.causal)
        else:
            rope = self.rope[input_pos]
            if self.masked_cache:
                mask, end = self.causal_mask[input_pos], None  # [T, L], fixed shape
            else:
                # prefix mode: slice the cache to the filled part; a mask is only needed for T > 1
                end = prefix_len if prefix_len is not None else int(input_pos[-1]) + 1
                mask = self.causal_mask[input_pos] if h.size(1) > 1 else None
            for layer in self.layers:
                h = layer(h, rope, True, input_pos, mask, end)
        if last_only:
            h = h[:, -1:]
        if head is not None:
            return head(self.norm(h), self.output.weight)
        if guidance is not None:
            return self.output(guide_hidden(self.norm(h), guidance)).float()
        return self.output(self.norm(h)).float()


def guide_hidden(h: torch.Tensor, scale: float) -> torch.Tensor:
    """h [2B, ...] as [cond; null] -> null + (cond - null) * scale in float32, [B, ...]; scale 1.0
    returns the cond rows unchanged. Classifier-free guidance of hidden states or of logits alike (the
    sampler guides the [2B, V] logits with it, LlamaGen's order: uncond + (cond - uncond) * scale)."""
    cond, null = h.chunk(2, dim=0)
    if scale == 1.0:
        return cond
    cond, null = cond.float(), null.float()
    return null + (cond - null) * scale


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
