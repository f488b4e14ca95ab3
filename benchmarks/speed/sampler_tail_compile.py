"""Side by side: the decode step's tail (CFG on the [2B, K] logits, then sample_logits) eager against
torch.compile of it, alone, at the paper's grid's K = 16384 and batch 64 with CFG (128 rows). Issue 32 named
"torch.compile of the head-and-sampling tail alone, whose shapes are static" as the next thing to try; this
measures what it would buy before anything is wired into the sampler. Alternated rounds in one process, one
thread, CPU milliseconds per step; the sampled ids of both are compared for temperature sampling and greedy.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/sampler_tail_compile.py \\
        --md benchmarks/results/speed_sampler_tail_compile_cpu.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from coarse2fine.bench.speed import machine_info
from coarse2fine.sampling import cfg_combine, sample_logits


def tail(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """What generate_ar does with one step's [2B, K] logits under CFG 2.0: guide, then sample."""
    return sample_logits(cfg_combine(logits, 2.0).float(), temperature, top_k, 1.0, u=u)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calls", type=int, default=50, help="calls per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--md", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logits = torch.randn(2 * args.batch, args.vocab) * 3
    u = torch.rand(args.batch, 1, dtype=torch.float64)
    rows = []
    for label, temperature, top_k in (("temperature 1.0", 1.0, 0), ("greedy (top-k 1)", 1.0, 1)):
        t0 = time.time()
        compiled = torch.compile(tail, dynamic=False)
        first = compiled(logits, u, temperature, top_k)
        compile_s = time.time() - t0
        same = torch.equal(first, tail(logits, u, temperature, top_k))
        # agreement over many draws: new uniform numbers and logits each call
        agree = []
        for i in range(20):
            g = torch.Generator().manual_seed(i)
            lg, uu = torch.randn(logits.shape, generator=g) * 3, torch.rand(u.shape, generator=g, dtype=torch.float64)
            agree.append(float((compiled(lg, uu, temperature, top_k) == tail(lg, uu, temperature, top_k)).float().mean()))
        times = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for name, fn in (("eager", tail), ("compiled", compiled)):
                c = time.process_time()
                for _ in range(args.calls):
                    fn(logits, u, temperature, top_k)
                times[name].append((time.process_time() - c) / args.calls * 1e3)
        e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
        rows.append(f"| {label} | {e:.2f} | {c:.2f} | **{c / e:.2f}x** | {compile_s:.1f} | "
                    f"{'identical' if same else 'differ'}; {100 * statistics.mean(agree):.2f}% of ids equal over 20 draws |")
    m = machine_info()
    text = (f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/sampler_tail_compile.py "
            f"{' '.join(sys.argv[1:])}`\n\nMachine: {m.get('cpu')}, {m.get('cpu_count')} CPUs visible, 1 torch thread, "
            f"torch {m.get('torch')}, load {m.get('load_avg_1m')}; {time.strftime('%Y-%m-%d %H:%M')} UTC.\n\n"
            f"One decode step's tail: CFG 2.0 on [{2 * args.batch}, {args.vocab}] fp32 logits, then sample_logits "
            f"(temperature, top-k, the two-level inverse-CDF draw). CPU milliseconds per call, medians of "
            f"{args.rounds} alternated rounds of {args.calls} calls; the compile time is the first call's wall "
            "clock (Inductor's on-disk cache makes a later process's cheaper).\n\n"
            "| sampler | eager ms | compiled ms | compiled / eager | first call s | ids |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
