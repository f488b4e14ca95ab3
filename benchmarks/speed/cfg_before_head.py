"""Side by side: classifier-free guidance applied to the normed hidden states before the output head
(generate_ar(cfg_before_head=True): the head runs on the B guided rows) against guidance applied to the 2B
rows' logits (the default, LlamaGen's order: a head product for 2B rows, then sub/mul/add over [B, K]
logits). Alternated rounds in one process, one thread, random weights, batch 64 with CFG 2.0 (128 rows in the
transformer body), the paper's grid (16x16 codes, K = 16384, C = 512); CPU seconds per loop, and the
loop's % of the square-matmul peak measured in the same rounds, each loop credited with the FLOPs it
executes (head rows = 64 for the hidden-state order, 128 for the logits order).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/cfg_before_head.py \\
        --md benchmarks/results/speed_cfg_before_head_grid16_cpu.md
"""
from __future__ import annotations

import sys

import torch

from coarse2fine.sampling import generate_ar
from loop_pair import compare, parser


def _run(hidden: bool):
    def run(m, labels, opts, dtype, n):
        return generate_ar(m, labels, opts, torch.Generator().manual_seed(0), dtype=dtype, num_tokens=n,
                           cfg_before_head=hidden)
    return run


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    compare(args, "cfg_before_head.py", {"logits": _run(False), "hidden": _run(True)},
            {"logits": 2 * args.batch, "hidden": args.batch}, ("CFG on logits (default)", "CFG on hidden states"),
            "Guidance on the 2B rows' logits (default) against the hidden states before the head (cfg_before_head).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
