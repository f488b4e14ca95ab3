"""Multi-head attention with a fused qkv projection and a static KV cache.

The cache is allocated once (`KVCache(B, H, L, hd)`) and written in place at `input_pos`, so tensor
shapes never change during decoding. Two ways to read it:
- prefix (default, best in eager mode): attend over cache[:, :, :end] where end = last position + 1,
  so step p costs O(p), not O(L);
- masked: attend over the whole static cache with a boolean mask (fixed shapes for torch.compile /
  CUDA graphs).
On CPU the cached path uses plain matmul attention: PyTorch's CPU flash kernel is tuned for long
queries, and for one query row over a short prefix it measured 3x slower at L=65 (benchmarks/speed).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from coarse2fine.layers.rope import apply_rope


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None = None, k_transposed: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v with the softmax in float32. q [B, H, T, hd]; k, v [B, H, S, hd]
    (k [B, H, hd, S] when k_transposed); mask [T, S] bool (True = attend) -> [B, H, T, hd] in q's dtype."""
    scores = torch.matmul(q, k if k_transposed else k.transpose(-1, -2)).float() * (q.size(-1) ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


class KVCache(nn.Module):
    """Static K/V caches. keys_transposed (bf16 caches on CPU, see Transformer.setup_cache): keys are kept
    as [B, H, hd, L], so a prefix k[..., :end] is already the right operand of q @ k^T with unit stride
    along its rows. Reading a [B, H, L, hd] prefix transposed made a bf16 CPU matmul copy the keys
    first: 2.2x slower for a [128, 4, 1, 64] x [64, 200] scores product alone; the bf16 GPT-small loop
    took 0.92x the CPU time with it, the fp32 loop 1.03x, so fp32 keeps [B, H, L, hd] (docs/speed.md)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 keys_transposed: bool = False):
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        k_shape = (batch, heads, head_dim, max_len) if keys_transposed else shape
        self.keys_transposed = keys_transposed
        self.register_buffer("k_cache", torch.zeros(k_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int | None = None):
        """input_pos [T]; k, v [B, H, T, hd] -> full caches (k [B, H, L, hd] or [B, H, hd, L], v [B, H, L, hd]).

        start: input_pos[0] when the caller knows the positions are start .. start+T-1; a slice
        copy is then used (index_copy_ along dim 2 measured ~10x slower on CPU)."""
        kt = self.keys_transposed
        if start is not None:
            T = k.size(2)
            if kt:
                self.k_cache[..., start:start + T].copy_(k.transpose(-1, -2))  # copy_ casts to the cache dtype
            else:
                self.k_cache[:, :, start:start + T].copy_(k)
            self.v_cache[:, :, start:start + T].copy_(v)
        else:
            if kt:
                self.k_cache.index_copy_(3, input_pos, k.transpose(-1, -2).to(self.k_cache.dtype))
            else:
                self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
            self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
        return self.k_cache, self.v_cache


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, attn_dropout: float = 0.0, resid_dropout: float = 0.0):
        super().__init__()
        assert dim % n_head == 0, "dim must be divisible by n_head"
        self.n_head = n_head
        self.head_dim = dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout_p = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, causal: bool,
                input_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                end: int | None = None) -> torch.Tensor:
        """x [B, T, D]; rope [T, hd/2, 2].

        Without input_pos: plain (causal or full) self-attention over x.
        With input_pos [T] (cache mode): k/v go into the cache; attend over cache[:, :, :end]
        (prefix mode, `end` given) or the whole cache under `mask` [T, L] (masked mode).
        """
        B, T, D = x.shape
        q, k, v = self.wqkv(x).split(D, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim)  # [B, T, H, hd]
        k = k.view(B, T, self.n_head, self.head_dim)
        v = v.view(B, T, self.n_head, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        dropout = self.attn_dropout_p if self.training else 0.0
        if input_pos is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)
        else:
            assert self.kv_cache is not None, "call setup_cache() before cached decoding"
            # a one-token step in prefix mode writes at end - 1 (= input_pos[-1]); longer chunks may
            # carry any positions and keep index_copy_
            one = end is not None and T == 1
            kc, vc = self.kv_cache.update(input_pos, k, v, start=end - 1 if one else None)
            kt = self.kv_cache.keys_transposed
            if end is not None:
                kc, vc = (kc[..., :end] if kt else kc[:, :, :end]), vc[:, :, :end]
                if mask is not None:
                    mask = mask[:, :end]
            kc, vc = kc.to(q.dtype), vc.to(q.dtype)
            if q.device.type == "cpu":
                y = math_attention(q, kc, vc, mask, k_transposed=kt)
            else:
                y = F.scaled_dot_product_attention(q, kc.transpose(-1, -2) if kt else kc, vc, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        return self.resid_dropout(self.wo(y))
