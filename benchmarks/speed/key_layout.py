"""Side by side: the CPU key cache kept transposed, [B, H, hd, L] (a prefix is the right operand of
q @ k^T as it stands; today's layout for bf16 caches) against [B, H, L, hd] read through a transposed view
(every cache before; fp32 caches today, where it measured faster: a bf16 matmul copied the keys first).
Both loops guide the logits (the sampler's default). Alternated rounds in one process, one thread, random
weights, batch 64 with CFG 2.0 (128 rows in the transformer body), the paper's grid (16x16 codes, K = 16384, C = 512); CPU seconds per loop, and the
loop's % of the square-matmul peak measured in the same rounds (FLOPs as bench.decode_flops counts them).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/key_layout.py \\
        --md benchmarks/results/speed_key_layout_grid16_cpu.md
"""
from __future__ import annotations

import sys

import torch

from coarse2fine.layers import KVCache
from coarse2fine.models import Transformer
from coarse2fine.sampling import generate_ar
from loop_pair import compare, parser


class UntransposedKeys:
    """The model with [B, H, L, hd] key caches (every cache before this change; fp32 caches today)."""

    transposed = False

    def __init__(self, model: Transformer):
        self.model, self.cfg = model, model.cfg

    def setup_cache(self, batch, dtype=torch.float32, masked=False):
        m = self.model
        m.max_batch = -1  # drop the other variant's caches
        m.setup_cache(batch, dtype=dtype, masked=masked)
        for layer in m.layers:
            layer.attention.kv_cache = KVCache(batch, m.cfg.n_head, m.max_positions, m.cfg.head_dim, dtype=dtype,
                                               keys_transposed=self.transposed)
        m.max_batch = -1  # the next variant's setup_cache builds its own

    def __call__(self, *a, **k):
        return self.model(*a, **k)


class TransposedKeys(UntransposedKeys):
    """The model with [B, H, hd, L] key caches (bf16 caches on CPU today)."""

    transposed = True


def _run(wrapper):
    def run(m, labels, opts, dtype, n):
        return generate_ar(wrapper(m), labels, opts, torch.Generator().manual_seed(0), dtype=dtype, num_tokens=n)
    return run


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rows = 2 * args.batch
    compare(args, "key_layout.py", {"untransposed": _run(UntransposedKeys), "transposed": _run(TransposedKeys)},
            {"untransposed": rows, "transposed": rows}, ("keys [B, H, L, hd]", "keys [B, H, hd, L]"),
            "The key cache as [B, H, L, hd] against [B, H, hd, L].")
    return 0


if __name__ == "__main__":
    sys.exit(main())
