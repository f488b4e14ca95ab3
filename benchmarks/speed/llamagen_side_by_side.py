"""coarse2fine's KV-cache sampler against LlamaGen's own generate(), on the same weights, in one process.

LlamaGen's code is read from a checkout the user names (--llamagen-src); nothing of it is vendored or
downloaded. Both networks are built at the same shape and loaded with one random state dict (LlamaGen's
key names are coarse2fine's); before any timing, greedy decoding through each library's own loop must
give the same tokens, so the two timings are of the same computation. Then the two samplers run in
alternated rounds (LlamaGen, coarse2fine, LlamaGen, ...) after one warm-up each, with the same CFG,
temperature and filters. LlamaGen runs eager, as its sample script does without --compile, with its
model in eval mode and fp32 (its sample script's --precision none). Its script also sets
torch.set_float32_matmul_precision("high"); that is left at torch's default here, for both.

    PYTHONPATH=src python benchmarks/speed/llamagen_side_by_side.py --llamagen-src ../LlamaGen \\
        --preset GPT-tiny --batch 64 --cfg 2.0 --repeats 7 --out benchmarks/results/speed_llamagen_side_by_side
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from coarse2fine.bench import speed as bench
from coarse2fine.checkpoint import load_strict
from coarse2fine.config import gpt_config
from coarse2fine.models import Transformer
from coarse2fine.sampling import StageSampling, generate_ar

GPT_FILE = Path("autoregressive") / "models" / "gpt.py"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llamagen-src", required=True,
                   help="root of a LlamaGen checkout (the folder holding autoregressive/models/gpt.py)")
    p.add_argument("--llamagen-commit", default="",
                   help="the checkout's commit, recorded when the folder is not a git work tree")
    p.add_argument("--preset", default="GPT-tiny", choices=["GPT-tiny", "GPT-small"])
    p.add_argument("--batch", type=int, default=64, help="images per call (CFG doubles the rows)")
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--grid", type=int, default=8, help="tokens per image = grid^2")
    p.add_argument("--vocab", type=int, default=0, help="codebook size (default: the preset's)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k (LlamaGen's FID setting)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=12,
                   help="after timing, profile one more call of each and keep its N costliest ops (0: off)")
    p.add_argument("--out", default="", help="results folder (default: "
                   "benchmarks/results/speed_llamagen_side_by_side/<preset>)")
    args = p.parse_args(argv)
    src = Path(args.llamagen_src).expanduser()
    if not (src / GPT_FILE).is_file():
        raise SystemExit(f"error: --llamagen-src {src} has no {GPT_FILE.as_posix()}; pass the root of a "
                         "LlamaGen checkout (github.com/FoundationVision/LlamaGen)")
    args.llamagen_src = src.resolve()
    args.out = args.out or f"benchmarks/results/speed_llamagen_side_by_side/{args.preset}"
    return args


def import_llamagen(src: Path):
    """LlamaGen's gpt and generate modules, imported from the checkout (its folders are namespace
    packages, so the checkout goes first on sys.path; gpt.py imports utils.drop_path from it)."""
    sys.path.insert(0, str(src))
    from autoregressive.models import generate as lg_generate, gpt as lg_gpt
    for mod in (lg_gpt, lg_generate, sys.modules["utils.drop_path"]):
        if src not in Path(mod.__file__).resolve().parents:
            raise SystemExit(f"error: {mod.__name__} was imported from {mod.__file__}, not from {src}; "
                             "another package of that name shadows the checkout")
    return lg_gpt, lg_generate


def llamagen_commit(src: Path, given: str) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree; pass --llamagen-commit)"


def random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict in the model's key layout: N(0, 0.02) matrices (the head too: LlamaGen
    zero-inits it, and greedy decoding would then tie everywhere), norm weights near 1."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        noise = torch.randn(v.shape, generator=g, dtype=v.dtype)
        sd[k] = 1.0 + 0.1 * noise if k.endswith("norm.weight") else 0.02 * noise
    return sd


def cpu_flags() -> dict[str, bool]:
    from coarse2fine.precision import cpu_info

    have = cpu_info()[1]
    return {} if have is None else {f: f in have for f in CPU_FLAGS}


def alternate_with_faults(fns: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Rounds A, B, A, B, ... after one warm-up each: wall and CPU seconds and page faults per run
    (minor faults count fresh memory pages the allocator had to map, a cost of allocating per call)."""
    for fn in fns.values():
        fn()
    out = {name: {"wall_s": [], "cpu_s": [], "minor_faults": [], "major_faults": []} for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            ru0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
            fn()
            wall, cpu, ru1 = time.perf_counter() - t0, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF)
            o = out[name]
            o["wall_s"].append(round(wall, 4))
            o["cpu_s"].append(round(cpu, 4))
            o["minor_faults"].append(ru1.ru_minflt - ru0.ru_minflt)
            o["major_faults"].append(ru1.ru_majflt - ru0.ru_majflt)
            print(f"round {r + 1}/{repeats} {name}: {wall:.3f} s wall, {cpu:.3f} s cpu, "
                  f"{o['minor_faults'][-1]} minor faults", flush=True)
    return out


def top_ops(fn, n: int) -> list[dict]:
    """torch.profiler over one call: the n ops with the most self CPU time (profiler's clock, which on a
    shared machine includes waiting for the core), with their share of the call's total."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    return [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in ops[:n]]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lg_gpt, lg_generate = import_llamagen(args.llamagen_src)
    # LlamaGen's decode loop enters torch.backends.cuda.sdp_kernel (deprecated) at every step; on CPU
    # it changes nothing, only warns
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*sdp_kernel.*")

    cfg_overrides = {"grid": args.grid, "causal": True}
    if args.vocab:
        cfg_overrides["vocab_size"] = args.vocab
    cfg = gpt_config(args.preset, **cfg_overrides)
    ours = Transformer(cfg).eval()
    theirs = lg_gpt.Transformer(lg_gpt.ModelArgs(
        dim=cfg.dim, n_layer=cfg.n_layer, n_head=cfg.n_head, vocab_size=cfg.vocab_size,
        num_classes=cfg.num_classes, block_size=cfg.seq_len, cls_token_num=1, model_type="c2i",
        multiple_of=cfg.multiple_of, ffn_dim_multiplier=cfg.ffn_dim_multiplier, rope_base=cfg.rope_base,
        norm_eps=cfg.norm_eps, class_dropout_prob=cfg.class_dropout_prob)).eval()
    sd = random_state(theirs, args.seed)
    theirs.load_state_dict(sd, strict=True)
    load_strict(ours, sd, "the LlamaGen-layout random state dict")

    labels = torch.arange(args.batch) % cfg.num_classes
    N = cfg.seq_len

    # same computation first: greedy tokens through each library's own loop
    lg_greedy = lg_generate.generate(theirs, labels, N, cfg_scale=args.cfg, temperature=1.0, top_k=0,
                                     top_p=1.0, sample_logits=False).long()
    c2f_greedy = generate_ar(ours, labels, StageSampling(temperature=1.0, top_k=1, cfg_scale=args.cfg))
    same = lg_greedy.eq(c2f_greedy).float().mean().item()
    if same != 1.0:
        raise SystemExit(f"error: greedy tokens differ ({100 * (1 - same):.3f}% of positions); the two "
                         "networks do not compute the same thing, so their timings would not compare")
    print(f"greedy check: {lg_greedy.numel()} tokens identical", flush=True)

    opts = StageSampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg)
    gen = torch.Generator()

    def run_llamagen():
        torch.manual_seed(args.seed)  # its multinomial draws from the global generator
        return lg_generate.generate(theirs, labels, N, cfg_scale=args.cfg, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p)

    def run_ours():
        return generate_ar(ours, labels, opts, gen.manual_seed(args.seed))

    fns = {"llamagen": run_llamagen, "coarse2fine": run_ours}
    runs = alternate_with_faults(fns, args.repeats)
    profile = {name: top_ops(fn, args.profile) for name, fn in fns.items()} if args.profile else None
    summary = {}
    for name, o in runs.items():
        summary[name] = {"median_s": round(statistics.median(o["wall_s"]), 4), "best_s": min(o["wall_s"]),
                         "median_cpu_s": round(statistics.median(o["cpu_s"]), 4),
                         "median_minor_faults": statistics.median(o["minor_faults"])}
    ratio_median = summary["llamagen"]["median_s"] / summary["coarse2fine"]["median_s"]
    ratio_best = summary["llamagen"]["best_s"] / summary["coarse2fine"]["best_s"]
    ratio_cpu = summary["llamagen"]["median_cpu_s"] / summary["coarse2fine"]["median_cpu_s"]
    result = {
        "what": "one sampling call: batch images, grid^2 tokens each, CFG (2x rows), KV cache",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "preset": args.preset, "dim": cfg.dim, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "vocab": cfg.vocab_size, "num_classes": cfg.num_classes, "grid": args.grid, "tokens": N,
        "batch": args.batch, "cfg": args.cfg, "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "dtype": "fp32", "threads": args.threads, "repeats": args.repeats,
        "llamagen_mode": "eager, eval(), fp32, generate() from autoregressive/models/generate.py",
        "llamagen_commit": llamagen_commit(args.llamagen_src, args.llamagen_commit),
        "greedy_tokens_identical": True,
        "runs": runs, "summary": summary, "profile_top_ops": profile,
        "ratio_of_medians": round(ratio_median, 3), "ratio_of_bests": round(ratio_best, 3),
        "ratio_of_cpu_medians": round(ratio_cpu, 3),
        "machine": {**bench.machine_info(), "cpu_flags": cpu_flags()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "README.md").write_text(report(result))
    print(report(result))
    return 0


def report(r: dict) -> str:
    s, m = r["summary"], r["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on) or "none of " + "/".join(CPU_FLAGS)
    rows = "\n".join(
        f"| {name} | {v['median_s']:.3f} | {v['best_s']:.3f} | {v['median_cpu_s']:.3f} | "
        f"{v['median_minor_faults']:.0f} | {' '.join(f'{x:.2f}' for x in r['runs'][name]['wall_s'])} |"
        for name, v in s.items())
    return f"""# coarse2fine against LlamaGen's own generate()

{r['preset']} ({r['n_layer']} layers, width {r['dim']}, vocab {r['vocab']}), batch {r['batch']}, CFG {r['cfg']}
({2 * r['batch']} rows), {r['grid']}x{r['grid']} grid ({r['tokens']} tokens), temperature {r['temperature']},
top-k {r['top_k']}, top-p {r['top_p']}, {r['dtype']}, {r['threads']} thread(s); same random weights in both
(greedy tokens identical); one process, runs alternated after one warm-up each, {r['repeats']} rounds.
LlamaGen commit {r['llamagen_commit']}, run {r['llamagen_mode']}.

| sampler | median s | best s | median CPU s | median minor faults | runs (wall s) |
|---|---|---|---|---|---|
{rows}

LlamaGen / coarse2fine: **{r['ratio_of_medians']:.2f}x** (medians), **{r['ratio_of_bests']:.2f}x** (bests),
{r['ratio_of_cpu_medians']:.2f}x (median CPU seconds; on a shared machine the wall clock also counts time
other jobs held the core).

{profile_table(r['profile_top_ops'])}Machine: {m.get('cpu')}, flags {flags}; torch {m['torch']}; load average {m.get('load_avg_1m')} at the end.

    {r['command']}
"""


def profile_table(profile: dict | None) -> str:
    if not profile:
        return ""
    lines = ["Where one call's time goes (torch.profiler, self time, share of the call):", ""]
    for name, ops in profile.items():
        lines.append(f"- {name}: " + ", ".join(f"{o['op']} {o['self_s']:.2f} s ({100 * o['share']:.0f}%)"
                                               for o in ops[:8]))
    return "\n".join(lines) + "\n\n"


if __name__ == "__main__":
    sys.exit(main())
