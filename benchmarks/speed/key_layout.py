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

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from coarse2fine.bench import speed as bench
from coarse2fine.bench.speed import machine_info
from coarse2fine.models import Transformer
from coarse2fine.layers import KVCache
from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, generate_ar
from coarse2fine.stages import stage_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="GPT-small")
    ap.add_argument("--stages", nargs="+", default=["baseline", "coarse"], choices=["baseline", "coarse"])
    ap.add_argument("--dtype", nargs="+", default=["fp32"], choices=list(DTYPES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256, help="the first N of the 256 steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--md", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    labels = torch.arange(args.batch) % 10
    models, fns, tokens = {}, {}, {}
    for stage in args.stages:
        torch.manual_seed(0)
        m = Transformer(stage_config(args.preset, stage, 16384, 512, 10, 16)).eval()
        with torch.no_grad():
            m.output.weight.normal_(std=0.02)
        models[stage] = m
        opts = BASELINE_DEFAULT if stage == "baseline" else CTF_COARSE_DEFAULT
        for d in args.dtype:
            for variant, net in (("transposed", TransposedKeys(m)),
                                 ("untransposed", UntransposedKeys(m))):
                def fn(net=net, opts=opts, d=d, key=(stage, d, variant)):
                    tokens[key] = generate_ar(net, labels, opts, torch.Generator().manual_seed(0),
                                              dtype=DTYPES[d], num_tokens=args.tokens)
                fns[f"{stage} {d} {variant}"] = fn
    peaks = {d: [] for d in args.dtype}

    def peak():
        for d in args.dtype:
            peaks[d].append(bench.matmul_flops_per_s(DTYPES[d], seconds=0.25, clock="cpu"))

    times = {k: [] for k in fns}
    for r in range(args.rounds + 1):  # round 0 warms up (caches allocated, pages touched)
        for name, fn in {**fns, "peak": peak}.items():
            c0 = time.process_time()
            fn()
            if r and name != "peak":
                times[name].append(time.process_time() - c0)
        print(f"round {r} done", file=sys.stderr, flush=True)
    rows, recs = 2 * args.batch, []
    for name, v in times.items():
        stage, d, variant = name.split(" ", 2)
        cfg = models[stage].cfg
        flops = bench.decode_flops(cfg, rows, args.tokens)
        pk = statistics.median(peaks[d])
        t = statistics.median(v)
        recs.append({"stage": stage, "dtype": d, "variant": variant, "cpu_s": v, "median_cpu_s": t,
                     "flops": flops, "matmul_peak_flop_per_s_cpu": pk, "pct_peak": 100 * flops / t / pk})
    m = machine_info()
    lines = []
    for stage in args.stages:
        for d in args.dtype:
            new = next(r for r in recs if r["stage"] == stage and r["dtype"] == d and r["variant"] == "transposed")
            old = next(r for r in recs if r["stage"] == stage and r["dtype"] == d and r["variant"] == "untransposed")
            same = torch.equal(tokens[(stage, d, "transposed")], tokens[(stage, d, "untransposed")])
            agree = (tokens[(stage, d, "transposed")] == tokens[(stage, d, "untransposed")]).float().mean()
            lines.append(f"| {stage} | {d} | {old['median_cpu_s']:.2f} | {new['median_cpu_s']:.2f} | "
                         f"**{new['median_cpu_s'] / old['median_cpu_s']:.2f}x** | {old['pct_peak']:.0f}% | "
                         f"{new['pct_peak']:.0f}% | {'identical' if same else f'{100 * agree:.1f}% equal'} |")
    text = (f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/key_layout.py "
            f"{' '.join(sys.argv[1:])}`\n\nMachine: {m.get('cpu')}, {m.get('cpu_count')} CPUs visible, 1 torch "
            f"thread, torch {m.get('torch')}, load {m.get('load_avg_1m')}; {time.strftime('%Y-%m-%d %H:%M')} UTC.\n\n"
            f"{args.preset}, 16x16 codes, K = 16384, C = 512, batch {args.batch} with CFG ({rows} rows in the body), "
            f"the first {args.tokens} of 256 steps, random weights; {args.rounds} alternated rounds after one "
            "warm-up round. CPU seconds per loop (medians); % of the square-matmul peak measured in the same rounds, "
            "each loop credited with the FLOPs it executes.\n\n"
            "| loop | dtype | keys [B, H, L, hd] s | keys [B, H, hd, L] s | [B, H, hd, L] / [B, H, L, hd] | "
            "% peak [B, H, L, hd] | % peak [B, H, hd, L] | codes for the seed |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")
    print(text)
    if args.md:
        Path(args.md).write_text(text)
        Path(args.md).with_suffix(".json").write_text(json.dumps({"machine": m, "records": recs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
