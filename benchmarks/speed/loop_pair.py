"""Two variants of the decode loop at the paper's grid, timed side by side: the shared runner of
cfg_before_head.py and key_layout.py.

Random weights (16x16 codes, K = 16384, C = 512), batch B with CFG 2.0 (2B rows in the transformer body),
the stages' default sampling, one thread; alternated rounds in one process after a warm-up round, with the
square-matmul peak measured in the same rounds; CPU seconds per loop and its % of that peak, each loop
credited with the FLOPs it executes (`head_rows` per variant, as bench.decode_flops counts them).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from coarse2fine.bench import speed as bench
from coarse2fine.bench.speed import machine_info
from coarse2fine.models import Transformer
from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, StageSampling
from coarse2fine.stages import stage_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# a variant: (model, labels, stage sampling, dtype, tokens) -> sampled tokens [B, tokens]
Variant = Callable[[Transformer, torch.Tensor, StageSampling, torch.dtype, int], torch.Tensor]


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--preset", default="GPT-small")
    ap.add_argument("--stages", nargs="+", default=["baseline", "coarse"], choices=["baseline", "coarse"])
    ap.add_argument("--dtype", nargs="+", default=["fp32"], choices=list(DTYPES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256, help="the first N of the 256 steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--md", default="")
    return ap


def compare(args, script: str, variants: dict[str, Variant], head_rows: dict[str, int],
            columns: tuple[str, str], what: str) -> str:
    """Time the two `variants` (first = the reference) for every stage and dtype; returns the markdown
    (also written to args.md, with a .json of every round beside it)."""
    torch.set_num_threads(1)
    labels = torch.arange(args.batch) % 10
    (ref, ref_fn), (alt, alt_fn) = variants.items()
    models, fns, tokens = {}, {}, {}
    for stage in args.stages:
        torch.manual_seed(0)
        m = Transformer(stage_config(args.preset, stage, 16384, 512, 10, 16)).eval()
        with torch.no_grad():
            m.output.weight.normal_(std=0.02)
        models[stage] = m
        opts = BASELINE_DEFAULT if stage == "baseline" else CTF_COARSE_DEFAULT
        for d in args.dtype:
            for name, run in variants.items():
                def fn(run=run, m=m, opts=opts, d=d, key=(stage, d, name)):
                    tokens[key] = run(m, labels, opts, DTYPES[d], args.tokens)
                fns[(stage, d, name)] = fn
    peaks = {d: [] for d in args.dtype}
    times = {k: [] for k in fns}
    for r in range(args.rounds + 1):  # round 0 warms up (caches allocated, pages touched)
        for key, fn in fns.items():
            c0 = time.process_time()
            fn()
            if r:
                times[key].append(time.process_time() - c0)
        for d in args.dtype:
            peaks[d].append(bench.matmul_flops_per_s(DTYPES[d], seconds=0.25, clock="cpu"))
        print(f"round {r} done", file=sys.stderr, flush=True)
    rows = 2 * args.batch
    recs = {}
    for (stage, d, name), v in times.items():
        flops = bench.decode_flops(models[stage].cfg, rows, args.tokens, head_rows=head_rows[name])
        pk, t = statistics.median(peaks[d]), statistics.median(v)
        recs[(stage, d, name)] = {"stage": stage, "dtype": d, "variant": name, "cpu_s": v, "median_cpu_s": t,
                                  "flops": flops, "matmul_peak_flop_per_s_cpu": pk, "pct_peak": 100 * flops / t / pk}
    lines = []
    for stage in args.stages:
        for d in args.dtype:
            a, b = recs[(stage, d, ref)], recs[(stage, d, alt)]
            ta, tb = tokens[(stage, d, ref)], tokens[(stage, d, alt)]
            same = "identical" if torch.equal(ta, tb) else f"{100 * (ta == tb).float().mean():.1f}% equal"
            lines.append(f"| {stage} | {d} | {a['median_cpu_s']:.2f} | {b['median_cpu_s']:.2f} | "
                         f"**{b['median_cpu_s'] / a['median_cpu_s']:.2f}x** | {a['pct_peak']:.0f}% | "
                         f"{b['pct_peak']:.0f}% | {same} |")
    m = machine_info()
    text = (f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/{script} "
            f"{' '.join(sys.argv[1:])}`\n\nMachine: {m.get('cpu')}, {m.get('cpu_count')} CPUs visible, 1 torch "
            f"thread, torch {m.get('torch')}, load {m.get('load_avg_1m')}; {time.strftime('%Y-%m-%d %H:%M')} UTC.\n\n"
            f"{what} {args.preset}, 16x16 codes, K = 16384, C = 512, batch {args.batch} with CFG ({rows} rows in "
            f"the body), the first {args.tokens} of 256 steps, random weights; {args.rounds} alternated rounds after "
            "one warm-up round. CPU seconds per loop (medians); % of the square-matmul peak measured in the same "
            "rounds, each loop credited with the FLOPs it executes.\n\n"
            f"| loop | dtype | {columns[0]} s | {columns[1]} s | {alt} / {ref} | % peak {ref} | % peak {alt} | "
            "codes for the seed |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print(text)
    if args.md:
        Path(args.md).write_text(text)
        Path(args.md).with_suffix(".json").write_text(
            json.dumps({"machine": m, "records": list(recs.values())}, indent=1) + "\n")
    return text
