"""Side by side: the K = 16384 decode loop with the sampler's block masses summed in float32 and then
widened (today's sample_logits) against summing them with dtype=float64 (the sampler before this
change, which cast every probability to float64 first). Alternated rounds in one process, one thread,
random GPT-small weights, batch 64 with CFG, the first 64 of 256 steps; CPU seconds per loop.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/sampler_block_sum.py \\
        --md benchmarks/results/speed_sampler_block_sum_cpu.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from coarse2fine import sampling
from coarse2fine.bench.speed import machine_info
from coarse2fine.models import Transformer
from coarse2fine.sampling import BASELINE_DEFAULT, generate_ar
from coarse2fine.stages import stage_config


def float64_block_sums(logits, temperature, top_k, top_p, generator=None, block=64, u=None):
    """sample_logits with the block masses summed as float64 (the old code path, kept here to time it)."""
    logits = sampling.filter_logits(logits / max(temperature, 1e-5), top_k, top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    V = probs.size(-1)
    flat = probs.reshape(-1, V)
    R = flat.size(0)
    u = torch.rand(R, 1, generator=generator, dtype=torch.float64) if u is None else u.reshape(R, 1).double()
    blocks = flat.view(R, V // block, block)
    mass = blocks.sum(-1, dtype=torch.float64)
    x = u * mass.sum(-1, keepdim=True)
    g = sampling._icdf_pick(mass, x)
    before = (mass.cumsum(-1) - mass).gather(-1, g)
    inner = blocks.gather(1, g.unsqueeze(-1).expand(R, 1, block)).squeeze(1).double()
    j = sampling._icdf_pick(inner, (x - before).clamp_min_(0.0))
    return (g * block + j).reshape(probs.shape[:-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--md", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(stage_config("GPT-small", "baseline", 16384, 512, 10, 16)).eval()
    with torch.no_grad():
        model.output.weight.normal_(std=0.02)
    labels = torch.arange(64) % 10
    today = sampling.sample_logits
    variants = {"float32 block sums (today)": today, "float64 block sums (before)": float64_block_sums}
    times: dict[str, list[float]] = {k: [] for k in variants}
    tokens = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, fn in variants.items():
            sampling.sample_logits = fn
            try:
                c0 = time.process_time()
                out = generate_ar(model, labels, BASELINE_DEFAULT, torch.Generator().manual_seed(0),
                                  num_tokens=args.tokens)
                dt = time.process_time() - c0
            finally:
                sampling.sample_logits = today
            if r:
                times[name].append(dt)
            tokens[name] = out
    a, b = (statistics.median(v) for v in times.values())
    same = torch.equal(*tokens.values())
    m = machine_info()
    text = (f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed/sampler_block_sum.py "
            f"{' '.join(sys.argv[1:])}`\n\nMachine: {m.get('cpu')}, {m.get('cpu_count')} CPUs visible, 1 torch "
            f"thread, torch {m.get('torch')}, load {m.get('load_avg_1m')}; {time.strftime('%Y-%m-%d %H:%M')} UTC.\n\n"
            f"GPT-small baseline, K = 16384, batch 64 with CFG (128 rows), the first {args.tokens} of 256 steps, "
            f"fp32, random weights; {args.rounds} alternated rounds after one warm-up round.\n\n"
            "| sampler | median CPU s | min | max |\n|---|---|---|---|\n" +
            "\n".join(f"| {k} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |" for k, v in times.items()) +
            f"\n\nToday's loop takes {a / b:.2f}x the CPU time of the old one; the sampled codes are "
            f"{'identical' if same else 'not identical (a draw landed within rounding of a block boundary)'} "
            "for the seed.\n")
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
