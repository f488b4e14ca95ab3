"""Stage 2 at the paper's grid: the sampler it replaced against the restricted head, side by side.

Candidates (one process, alternating rounds, `bench.alternate`; random weights, batch 64, no CFG in
stage 2 as the pipelines' default):
  old_full        the whole [B, N, K] logits, sampled over all K codes (what `bench sample` timed before)
  old_restricted  the whole [B, N, K] logits, then each position's cluster members gathered (the old
                  `generate_fine(members=...)`)
  full            `generate_fine` without members: all K codes, chunked
  restricted      `generate_fine(members=...)`: each position meets only its cluster's weight rows
The two old samplers are written out below as they were, to be timed; the tests keep a copy of the
restricted one as the reference that a seed must reproduce. Peak memory is measured for each
candidate in a fresh process (`--memory-of NAME`), so one candidate's freed pages cannot hide
another's. Counted FLOPs follow coarse2fine.bench.speed (matmuls only); the restricted head counts
each position's cluster size.

    PYTHONPATH=src python benchmarks/speed/stage2_head.py --preset GPT-tiny GPT-small --dtype fp32 bf16 \\
        --repeats 3 --json benchmarks/results/speed_stage2_grid16_cpu.json --md benchmarks/results/speed_stage2_grid16_cpu.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from coarse2fine.bench import speed as bench
from coarse2fine.bench.runs import DTYPES, random_members
from coarse2fine.config import gpt_config
from coarse2fine.models import Transformer
from coarse2fine.sampling import CTF_FINE_DEFAULT, StageSampling, cfg_combine, generate_fine, sample_logits
from coarse2fine.stages import stage_config
from coarse2fine.tokenizer.clustering import restrict_to_cluster

CANDIDATES = ("old_full", "old_restricted", "full", "restricted")


@torch.no_grad()
def old_generate_fine(model, coarse, cond, opts: StageSampling, generator, members=None, dtype=torch.float32):
    """The stage-2 sampler before the restricted head (commit 4c85c72), for timing."""
    use_cfg = opts.use_cfg
    x_cond = torch.cat([cond, torch.full_like(cond, model.cfg.num_classes)]) if use_cfg else cond
    x_tok = coarse.repeat(2, 1) if use_cfg else coarse
    with torch.autocast(coarse.device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(x_tok, x_cond)[:, 1:]  # [B', N, K]
    logits = logits.float()
    if use_cfg:
        logits = cfg_combine(logits, opts.cfg_scale)
    if members is None:
        return sample_logits(logits, opts.temperature, opts.top_k, opts.top_p, generator)
    sub = restrict_to_cluster(logits, coarse, members)  # [B, N, M]
    pick = sample_logits(sub, opts.temperature, min(opts.top_k, sub.size(-1)), opts.top_p, generator)
    return members[coarse].gather(-1, pick.unsqueeze(-1)).squeeze(-1)


def setup(preset: str, grid: int, K: int, C: int, batch: int, seed: int = 0):
    """-> (stage-2 model with random weights, members [C, M], coarse [B, N], labels [B])."""
    classes = gpt_config(preset).num_classes
    torch.manual_seed(seed)
    model = Transformer(stage_config(preset, "fine", K, C, classes, grid))
    with torch.no_grad():
        model.output.weight.normal_(std=0.02)  # the zero-initialised head would make every logit equal
    model.eval()
    members = random_members(K, C, seed)
    g = torch.Generator().manual_seed(seed + 2)
    coarse = torch.randint(0, C, (batch, grid * grid), generator=g)
    labels = torch.arange(batch) % classes
    return model, members, coarse, labels


def candidates(model, members, coarse, labels, dtype, seed=0):
    gen = torch.Generator()
    opts = CTF_FINE_DEFAULT
    return {
        "old_full": lambda: old_generate_fine(model, coarse, labels, opts, gen.manual_seed(seed), None, dtype),
        "old_restricted": lambda: old_generate_fine(model, coarse, labels, opts, gen.manual_seed(seed), members, dtype),
        "full": lambda: generate_fine(model, coarse, labels, opts, gen.manual_seed(seed), None, dtype),
        "restricted": lambda: generate_fine(model, coarse, labels, opts, gen.manual_seed(seed), members, dtype),
    }


def counted_flops(model, members, coarse) -> dict[str, int]:
    B, N = coarse.shape
    rows = 2 * B if CTF_FINE_DEFAULT.use_cfg else B
    width = float((members >= 0).sum(1)[coarse].double().mean())
    full = bench.full_forward_flops(model.cfg, rows, N + 1, head_positions=N)
    restricted = bench.full_forward_flops(model.cfg, rows, N + 1, head_positions=N, head_width=width)
    return {"old_full": full, "old_restricted": full, "full": full, "restricted": restricted}


def memory_of(args) -> None:
    """Child process: one candidate's peak-RSS rise, printed as JSON."""
    torch.set_num_threads(args.threads)
    model, members, coarse, labels = setup(args.preset[0], args.grid, args.codebook_size, args.clusters, args.batch)
    fn = candidates(model, members, coarse, labels, DTYPES[args.dtype[0]])[args.memory_of]
    with bench.peak_memory() as pm:
        fn()
    print(json.dumps({"peak_mib": pm.peak_mib, "rise_mib": pm.rise_mib, "kind": pm.kind}))


def measure_memory(args, preset: str, dtype: str, name: str) -> dict:
    cmd = [sys.executable, __file__, "--memory-of", name, "--preset", preset, "--dtype", dtype,
           "--grid", str(args.grid), "--codebook-size", str(args.codebook_size), "--clusters", str(args.clusters),
           "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args, preset: str, dtype: str) -> dict:
    model, members, coarse, labels = setup(preset, args.grid, args.codebook_size, args.clusters, args.batch)
    fns = candidates(model, members, coarse, labels, DTYPES[dtype])
    codes = {name: fn() for name, fn in fns.items()}  # also the untimed first round
    peaks: list[float] = []

    def peak():
        peaks.append(bench.matmul_flops_per_s(DTYPES[dtype], seconds=0.25, clock="cpu"))

    log = None if args.quiet else (lambda m: print(f"  {preset} {dtype} {m}", file=sys.stderr, flush=True))
    t = bench.alternate({**fns, "matmul_peak": peak}, args.repeats, warmup=0, progress=log)
    flops = counted_flops(model, members, coarse)
    pk = bench.median(peaks)
    rec = {"preset": preset, "dtype": dtype, "batch": args.batch, "grid": args.grid, "K": args.codebook_size,
           "C": args.clusters, "members_max": members.size(1), "flops": flops, "matmul_peak_flop_per_s_cpu": pk,
           "same_codes": {"restricted_vs_old": bool(torch.equal(codes["restricted"], codes["old_restricted"])),
                          "full_vs_old": bool(torch.equal(codes["full"], codes["old_full"]))},
           "wall_s": {k: t.wall[k] for k in fns}, "cpu_s": {k: t.cpu[k] for k in fns}, "memory": {}}
    rec["median_wall_s"] = {k: bench.median(v) for k, v in rec["wall_s"].items()}
    rec["median_cpu_s"] = {k: bench.median(v) for k, v in rec["cpu_s"].items()}
    rec["frac_of_matmul_peak"] = {k: flops[k] / rec["median_cpu_s"][k] / pk for k in fns}
    for name in fns:
        rec["memory"][name] = measure_memory(args, preset, dtype, name)
    return rec


def table(recs: list[dict]) -> str:
    rows = ["| stage 2 | dtype | old full s | old restricted s | full (chunked) s | **restricted s** "
            "| speed-up vs old restricted (wall, CPU) | % of matmul peak: old restr., restricted "
            "| peak RSS rise MiB: old full, old restr., full, restricted | same codes |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        w, c, f, m = r["median_wall_s"], r["median_cpu_s"], r["frac_of_matmul_peak"], r["memory"]
        same = "yes" if all(r["same_codes"].values()) else f"no: {r['same_codes']}"
        rows.append(f"| {r['preset']} | {r['dtype']} | {w['old_full']:.2f} | {w['old_restricted']:.2f} | {w['full']:.2f} "
                    f"| **{w['restricted']:.3f}** | {w['old_restricted'] / w['restricted']:.1f}x, "
                    f"{c['old_restricted'] / c['restricted']:.1f}x "
                    f"| {100 * f['old_restricted']:.0f}%, {100 * f['restricted']:.0f}% "
                    f"| {m['old_full']['rise_mib']:.0f}, {m['old_restricted']['rise_mib']:.0f}, {m['full']['rise_mib']:.0f}, "
                    f"{m['restricted']['rise_mib']:.0f} | {same} |")
    r0 = recs[0]
    return "\n".join(rows) + (
        f"\n\nBatch {r0['batch']}, {r0['grid']}x{r0['grid']} codes, K = {r0['K']}, C = {r0['C']} (a random coarse map: "
        f"cluster sizes vary, largest {r0['members_max']}), no CFG (the stage-2 default), random weights. Seconds: wall-clock "
        "medians of the alternating rounds. '% of matmul peak' = counted matmul FLOPs (the old samplers and the full head "
        "count all K logits per position, the restricted head each position's cluster size) / CPU seconds / the best 1024^3 "
        "matmul FLOP/s per CPU second measured in the same rounds. Memory: peak resident set rise of one call in a "
        "fresh process. 'same codes': the new samplers drew exactly the old samplers' codes for the seed (fp32 and bf16).\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["GPT-tiny", "GPT-small"])
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--clusters", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="")
    p.add_argument("--md", default="")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--memory-of", default="", choices=("",) + CANDIDATES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_of:
        memory_of(args)
        return 0
    torch.set_num_threads(args.threads)
    recs = [run(args, preset, dtype) for preset in args.preset for dtype in args.dtype]
    m = bench.machine_info()
    text = (f"Command: `PYTHONPATH=src python benchmarks/speed/stage2_head.py {shlex.join(sys.argv[1:])}`\n\n"
            f"Machine: {m.get('cpu')}, {m.get('cpu_count')} CPUs visible, {m.get('threads')} torch threads, native bf16 "
            f"{m.get('cpu_bf16')}, torch {m.get('torch')}, 1-min load average at the end {m.get('load_avg_1m')}; "
            f"date {time.strftime('%Y-%m-%d %H:%M')} UTC. The box was shared with other one-thread jobs.\n\n" + table(recs))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(recs, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
