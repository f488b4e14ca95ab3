"""The KV-cache decode loop, eager against torch.compile, fp32 and bf16, against the matmul peak.

One process, one thread, alternating rounds (`bench.alternate`): the baseline loop of a preset (the
K-way head; the heavier of the two AR loops) at batch 64 with CFG (128 rows), every step, random
weights. The first call of each compiled candidate is timed apart: that is the one-time compile
cost a user pays (torch keeps the compiled graph on the model for later calls in the process; the
Inductor cache on disk makes a later process's compile cheaper, it is measured as it is here: warm or
cold as the machine's cache happens to be, stated in the output).

    PYTHONPATH=src python benchmarks/speed/decode_compile.py --preset GPT-small --repeats 3 \\
        --json benchmarks/results/speed_decode_compile_grid16_cpu.json --md benchmarks/results/speed_decode_compile_grid16_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from coarse2fine.bench import speed as bench
from coarse2fine.bench.runs import DTYPES
from coarse2fine.config import gpt_config
from coarse2fine.models import Transformer
from coarse2fine.sampling import BASELINE_DEFAULT, generate_ar
from coarse2fine.stages import stage_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="GPT-small")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--clusters", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=0, help="decode steps timed (default all grid^2)")
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--mode", default="default", help="torch.compile mode of the compiled candidates")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="")
    p.add_argument("--md", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    classes = gpt_config(args.preset).num_classes
    torch.manual_seed(0)
    model = Transformer(stage_config(args.preset, "baseline", args.codebook_size, args.clusters, classes, args.grid))
    with torch.no_grad():
        model.output.weight.normal_(std=0.02)
    model.eval()
    labels = torch.arange(args.batch) % classes
    gen = torch.Generator()
    N = args.tokens or args.grid ** 2

    def loop(dtype, mode, masked):
        return lambda: generate_ar(model, labels, BASELINE_DEFAULT, gen.manual_seed(0), DTYPES[dtype],
                                   num_tokens=N, compile_mode=mode, masked_cache=masked)

    # compiled masked: static shapes, every step reads the whole cache (what CUDA graphs need);
    # compiled prefix: each step reads the filled prefix, its length a symbolic size (the CPU default)
    candidates = {"eager": (None, False), "compiled masked": (args.mode, True), "compiled prefix": (args.mode, False)}
    fns, first_call_s, codes = {}, {}, {}
    for d in args.dtype:
        for kind, (mode, masked) in candidates.items():
            name = f"{d} {kind}"
            fns[name] = loop(d, mode, masked)
            t0 = time.perf_counter()
            codes[name] = fns[name]()  # compiled: the compile happens here
            first_call_s[name] = time.perf_counter() - t0
    peaks: dict[str, list[float]] = {d: [] for d in args.dtype}

    def peak():
        for d in args.dtype:
            peaks[d].append(bench.matmul_flops_per_s(DTYPES[d], seconds=0.25, clock="cpu"))

    t = bench.alternate({**fns, "matmul_peak": peak}, args.repeats, warmup=0,
                        progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    flops = bench.decode_flops(model.cfg, 2 * args.batch, N)
    recs = []
    for name in fns:
        d = name.split()[0]
        pk = bench.median(peaks[d])
        cpu, wall = bench.median(t.cpu[name]), bench.median(t.wall[name])
        recs.append({"candidate": name, "dtype": d, "first_call_s": first_call_s[name], "median_wall_s": wall,
                     "median_cpu_s": cpu, "wall_s": t.wall[name], "cpu_s": t.cpu[name], "flops": flops,
                     "matmul_peak_flop_per_s_cpu": pk, "frac_of_matmul_peak": flops / cpu / pk,
                     "images_per_s_cpu": args.batch / cpu,
                     "same_codes_as_eager": bool(torch.equal(codes[name], codes[f"{d} eager"]))})
    m = bench.machine_info()
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "the default Inductor cache (/tmp/torchinductor_$USER)")
    rows = [f"| {r['candidate']} | {r['first_call_s']:.1f} | {r['median_wall_s']:.2f} | {r['median_cpu_s']:.2f} "
            f"| {r['images_per_s_cpu']:.2f} | **{100 * r['frac_of_matmul_peak']:.0f}%** "
            f"| {r['matmul_peak_flop_per_s_cpu'] / 1e9:.0f} | {'yes' if r['same_codes_as_eager'] else 'no'} |" for r in recs]
    e = {r["candidate"]: r for r in recs}
    ratios = [f"{d}: {kind} / eager CPU time {e[f'{d} {kind}']['median_cpu_s'] / e[f'{d} eager']['median_cpu_s']:.2f}"
              for d in args.dtype for kind in candidates if kind != "eager"]
    if len(args.dtype) == 2:
        a, b = args.dtype
        speed = {kind: e[f"{a} {kind}"]["median_cpu_s"] / e[f"{b} {kind}"]["median_cpu_s"]
                 for kind in ("eager", "compiled prefix")}
        ratios.append(f"eager {b} / {a} speed {speed['eager']:.2f}x, compiled prefix {speed['compiled prefix']:.2f}x, "
                      f"matmul peak {bench.median(peaks[b]) / bench.median(peaks[a]):.2f}x")
    text = (f"Command: `PYTHONPATH=src python benchmarks/speed/decode_compile.py {shlex.join(sys.argv[1:])}`\n\n"
            f"Machine: {m.get('cpu')}, {m.get('cpu_count')} CPUs visible, 1 torch thread, native bf16 {m.get('cpu_bf16')}, "
            f"flags {' '.join(m.get('cpu_flags', [])) or 'unknown'}, "
            f"torch {m.get('torch')}, load {m.get('load_avg_1m')}; {time.strftime('%Y-%m-%d %H:%M')} UTC; the box was shared "
            f"with other one-thread jobs. Compile cache: {cache}.\n\n"
            f"{args.preset} baseline loop, batch {args.batch} with CFG ({2 * args.batch} rows), the first {N} of "
            f"{args.grid ** 2} steps, K = "
            f"{args.codebook_size}, torch.compile mode {args.mode!r}.\n\n"
            "| candidate | first call s (compile included) | wall s | CPU s | images/s (CPU time) | % of matmul peak "
            "| matmul peak GFLOP/s | same codes as eager |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
            "\n\n" + "; ".join(ratios) + ".\n\nMedians of the alternating rounds. '% of matmul peak' = counted matmul "
            "FLOPs / CPU seconds / the best 1024^3 matmul FLOP/s per CPU second measured in the same rounds.\n")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(recs, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
