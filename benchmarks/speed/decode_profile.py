"""Where the KV-cache decode loop spends its time: torch.profiler over `generate_ar` at the paper's grid.

One thread, random weights, batch 64 with CFG (128 rows), the baseline (K-way head) and stage 1
(C-way head) of a preset, fp32 and bf16, eager. Operators are grouped into the transformer's matmuls
(linear layers, attention products), the output head's matmul (the [rows, D] @ [D, V] product, told
apart by its output width V), and everything else (norms, RoPE, cache writes, softmax, CFG, sampling).
The matmul share against the measured matmul peak says how much of the loop a faster sampler could win.

The shape ceiling: every matmul the loop ran (its shapes and call counts from the profile) is timed
alone at its own shape, the best of several repeats, one thread. Their sum is what the loop would cost if
everything but the matmuls were free and each matmul ran as fast as it can at its shape; the loop's
FLOPs over that time, against the 1024^3 peak, is the highest "% of matmul peak" this loop can reach on
this CPU. Small matmuls ([128, 256] @ [256, 768] and the like) run well below the large-square peak.

    PYTHONPATH=src python benchmarks/speed/decode_profile.py --preset GPT-small --tokens 64 \\
        --md benchmarks/results/speed_decode_profile_grid16_cpu.md
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from coarse2fine.bench import speed as bench
from coarse2fine.bench.runs import DTYPES
from coarse2fine.config import gpt_config
from coarse2fine.models import Transformer
from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, generate_ar
from coarse2fine.stages import stage_config


def _mm_inputs(key: str, shapes: list, dtype: torch.dtype):
    """Tensors for one profiled matmul at its shapes: aten::mm / addmm as a linear layer does it (the
    weight stored [out, in] and transposed), aten::bmm as is; None for a shape this cannot rebuild."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    if key == "aten::mm" and len(shapes) >= 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2:
        (m, k), (_, n) = shapes[0], shapes[1]
        a, w = rnd(m, k), rnd(n, k)
        return lambda: torch.mm(a, w.t())
    if key == "aten::addmm" and len(shapes) >= 3 and len(shapes[1]) == 2 and len(shapes[2]) == 2:
        (m, k), (_, n) = shapes[1], shapes[2]
        bias, a, w = rnd(n), rnd(m, k), rnd(n, k)
        return lambda: torch.addmm(bias, a, w.t())
    if key == "aten::bmm" and len(shapes) >= 2 and len(shapes[0]) == 3 and len(shapes[1]) == 3:
        a, b = rnd(*shapes[0]), rnd(*shapes[1])
        return lambda: torch.bmm(a, b)
    return None


def best_call_s(fn, calls: int = 20, repeats: int = 5) -> float:
    """The fastest CPU time of one call: the best of `repeats` batches of `calls` calls, after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - c0) / calls)
    return best


def shape_ceiling_s(prof, dtype: torch.dtype) -> tuple[float, int]:
    """Sum over the profiled matmuls of (calls x their shape's best time alone); and how many of the
    profiled matmul calls that covers (a shape that cannot be rebuilt is left out and counted)."""
    total, missed = 0.0, 0
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key not in ("aten::mm", "aten::addmm", "aten::bmm"):
            continue
        fn = _mm_inputs(ev.key, [list(s) for s in (ev.input_shapes or [])], dtype)
        if fn is None:
            missed += ev.count
            continue
        total += ev.count * best_call_s(fn)
    return total, missed


def profile_loop(model, opts, dtype, batch: int, tokens: int) -> dict:
    labels = torch.arange(batch) % model.cfg.num_classes
    run = lambda: generate_ar(model, labels, opts, torch.Generator().manual_seed(0), dtype, num_tokens=tokens)  # noqa: E731
    run()  # cache allocation, first-call costs
    c0 = time.process_time()
    run()
    cpu_s = time.process_time() - c0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    V = model.cfg.vocab_size
    groups: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages(group_by_input_shape=True):
        self_us = ev.self_cpu_time_total
        shapes = ev.input_shapes or []
        if ev.key == "aten::mm" and len(shapes) > 1 and shapes[1] and shapes[1][-1] == V:
            groups["head matmul"] += self_us
        elif ev.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            groups["transformer matmuls"] += self_us
        elif ev.key == "aten::_scaled_dot_product_flash_attention_for_cpu":
            groups["attention (SDPA)"] += self_us
        else:
            groups[ev.key.replace("aten::", "")] += self_us
    total_us = sum(ev.self_cpu_time_total for ev in prof.key_averages())
    ceiling_s, missed = shape_ceiling_s(prof, dtype)
    return {"cpu_s": cpu_s, "profiled_self_s": total_us / 1e6, "groups_s": {k: v / 1e6 for k, v in groups.items()},
            "shape_ceiling_s": ceiling_s, "matmul_calls_not_rebuilt": missed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="GPT-small")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--clusters", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=64, help="decode steps profiled (of grid^2)")
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--md", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    classes = gpt_config(args.preset).num_classes
    rows = []
    for stage, opts in (("baseline", BASELINE_DEFAULT), ("coarse", CTF_COARSE_DEFAULT)):
        torch.manual_seed(0)
        model = Transformer(stage_config(args.preset, stage, args.codebook_size, args.clusters, classes, args.grid))
        with torch.no_grad():
            model.output.weight.normal_(std=0.02)
        model.eval()
        flops = bench.decode_flops(model.cfg, 2 * args.batch, args.tokens)
        for d in args.dtype:
            peak = bench.matmul_flops_per_s(DTYPES[d], seconds=0.5, clock="cpu")
            r = profile_loop(model, opts, DTYPES[d], args.batch, args.tokens)
            g = r["groups_s"]
            mm = g.get("head matmul", 0) + g.get("transformer matmuls", 0) + g.get("attention (SDPA)", 0)
            top = sorted(((v, k) for k, v in g.items() if k not in ("head matmul", "transformer matmuls",
                                                                     "attention (SDPA)")), reverse=True)[:5]
            tot = r["profiled_self_s"]
            if r["matmul_calls_not_rebuilt"]:
                print(f"warning: {r['matmul_calls_not_rebuilt']} matmul calls of unknown shape left out of the ceiling")
            rows.append(f"| {stage} | {d} | {r['cpu_s']:.2f} | {100 * flops / r['cpu_s'] / peak:.0f}% "
                        f"| {100 * flops / r['shape_ceiling_s'] / peak:.0f}% | {100 * r['shape_ceiling_s'] / r['cpu_s']:.0f}% "
                        f"| {100 * g.get('head matmul', 0) / tot:.0f}% | {100 * g.get('transformer matmuls', 0) / tot:.0f}% "
                        f"| {100 * g.get('attention (SDPA)', 0) / tot:.0f}% | {100 * (tot - mm) / tot:.0f}% "
                        f"| {', '.join(f'{k} {100 * v / tot:.0f}%' for v, k in top)} |")
    m = bench.machine_info()
    text = (f"Command: `PYTHONPATH=src python benchmarks/speed/decode_profile.py {shlex.join(sys.argv[1:])}`\n\n"
            f"Machine: {m.get('cpu')}, {m.get('cpu_count')} CPUs visible, 1 torch thread, native bf16 {m.get('cpu_bf16')}, "
            f"torch {m.get('torch')}, load {m.get('load_avg_1m')}; {time.strftime('%Y-%m-%d %H:%M')} UTC; shared with "
            "other one-thread jobs.\n\n"
            f"{args.preset}, batch {args.batch} with CFG ({2 * args.batch} rows), the first {args.tokens} of "
            f"{args.grid ** 2} steps, K = {args.codebook_size}, C = {args.clusters}, eager.\n\n"
            "| loop | dtype | CPU s | % of matmul peak | shape ceiling, % of peak | loop at % of its ceiling "
            "| head matmul | transformer matmuls | attention | other ops "
            "| largest other ops |\n|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
            "\n\nShares are of the profiled self CPU time. '% of matmul peak' = counted matmul FLOPs / CPU seconds "
            "(an unprofiled run) / the best 1024^3 matmul FLOP/s per CPU second. 'Shape ceiling': the same FLOPs over "
            "the summed best times of the loop's own matmuls, each timed alone at its shape (calls x best of 5 x 20 "
            "calls): the highest '% of matmul peak' this loop could show with every other op free. 'Loop at % of "
            "its ceiling' = that time / the loop's CPU time.\n")
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
