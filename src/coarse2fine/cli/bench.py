"""`coarse2fine bench sample|train`: speed of CTF against the baseline, and of training steps.

Both write JSON records (--json) and markdown tables (--md) and print the tables. Timings are
medians over alternating rounds inside one process; the matrix-multiply peak they are compared with
is measured in the same rounds (see coarse2fine/bench.py for the counting conventions).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path


from coarse2fine.cli._args import (add_compile, add_device, add_threads, check_out_path, nonneg_float, nonneg_int,
                                   positive_int, seed_int)
from coarse2fine.config import GPT_PRESETS, VQ_PRESETS, UserError, vq_config


def register(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks: sampling (CTF vs baseline) and training steps")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT")
    bsub.required = True

    s = bsub.add_parser("sample", help="images/s of CTF (stage 1, stage 2, decode) vs the baseline, random weights",
                        description="Time CTF sampling (stage 1 KV-cache loop, stage 2 one pass, VQ decode) against "
                                    "the baseline AR model with the same backbone, in one process, alternating "
                                    "rounds, median of --repeats. Also reports the decode loop's FLOP/s as a "
                                    "fraction of the matmul throughput measured in the same rounds, a bandwidth "
                                    "bound, the naive no-cache floor and peak memory.")
    s.add_argument("--preset", nargs="+", default=["GPT-small"],
                   help=f"backbone preset(s), one row each: {', '.join(GPT_PRESETS)} (default GPT-small)")
    s.add_argument("--fine-preset", default="", help="stage-2 preset (default: same as --preset; the paper: GPT-L)")
    s.add_argument("--vq-preset", default="", help=f"tokenizer preset for decode: {', '.join(VQ_PRESETS)} "
                                                   "(default VQ-tiny for 8x8 grids, else VQ-16)")
    s.add_argument("--grid", type=nonneg_int, default=0, help="token grid side (default: the preset's; 8 = 64 tokens)")
    s.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64, as the paper)")
    s.add_argument("--codebook-size", type=nonneg_int, default=0, help="K (default: the VQ preset's)")
    s.add_argument("--clusters", type=nonneg_int, default=0, help="C coarse labels (clusters; default K/32)")
    s.add_argument("--fine-head", choices=["restricted", "full"], default="restricted",
                   help="stage 2 scores each position's cluster members (default, the trainer's default head; "
                        "a random coarse map) or all K codes (a stage 2 trained with --head full)")
    s.add_argument("--repeats", type=positive_int, default=5, help="timed rounds; the median is reported (default 5)")
    s.add_argument("--untimed-rounds", type=nonneg_int, default=1, help="untimed rounds first (default 1)")
    s.add_argument("--naive-repeats", type=nonneg_int, default=1,
                   help="rounds of the no-cache floor vs the KV-cache loop (default 1; 0 skips it)")
    s.add_argument("--no-decode", action="store_true", help="leave the VQ decode out")
    s.add_argument("--decode-images", type=nonneg_int, default=0,
                   help="time the decode on this many images and scale to the batch (slow decoders on CPU)")
    s.add_argument("--weights", choices=["autocast", "cast"], default="autocast",
                   help="bf16: autocast over fp32 weights (default) or weights cast to bf16 (LlamaGen's way)")
    add_compile(s, "")
    s.add_argument("--cuda-graphs", action="store_true", help="same as --compile reduce-overhead (CUDA graphs)")
    s.add_argument("--mem-gbps", type=nonneg_float, default=0.0,
                   help="memory bandwidth in GB/s for the bandwidth bound (e.g. HBM: A100 2039, H100 3350); "
                        "default: measured copy bandwidth on CPU, no bound on GPU")
    _common(s)
    s.set_defaults(func=cmd_sample)

    b = bsub.add_parser("bound", help="least possible seconds per batch of CTF and the baseline on a given machine",
                        description="Analytic lower bounds (no timing): per-step rooflines of the AR loops "
                                    "(max of FLOPs / matmul peak and weight + KV bytes / memory bandwidth), FLOPs / "
                                    "peak for stage 2 and the VQ decode. Give the machine with --peak-tflops and "
                                    "--mem-gbps (e.g. A100: 312 and 2039), or let it measure this machine.")
    b.add_argument("--preset", nargs="+", default=["GPT-B", "GPT-L", "GPT-XL"], help="backbones (default B, L, XL)")
    b.add_argument("--fine-preset", default="GPT-L", help="stage-2 preset (default GPT-L, as the paper)")
    b.add_argument("--vq-preset", default="VQ-16", help="tokenizer preset for the decode (default VQ-16)")
    b.add_argument("--grid", type=nonneg_int, default=0, help="token grid side (default: the preset's, 16)")
    b.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    b.add_argument("--peak-tflops", type=nonneg_float, default=0.0, help="dense matmul peak, TFLOP/s (default: measured)")
    b.add_argument("--mem-gbps", type=nonneg_float, default=0.0, help="memory bandwidth, GB/s (default: measured)")
    b.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="weight/KV precision (default bf16)")
    b.add_argument("--fine-head", choices=["restricted", "full"], default="restricted",
                   help="stage 2 scores K/C cluster members per position (default) or all K codes")
    add_device(b)
    add_threads(b)
    b.add_argument("--json", default="", help="write the records to this JSON file")
    b.add_argument("--md", default="", help="write the markdown table here")
    b.set_defaults(func=cmd_bound)

    t = bsub.add_parser("train", help="tokens/s and peak memory per training step: tokenizer, stages, baseline",
                        description="Time steps of the training loop (train_step on the task training builds: the "
                                    "recipe's loss terms, AdamW, clip, EMA) with random data for "
                                    "the tokenizer, the coarse and fine stages and the baseline, fp32 and bf16 "
                                    "alternating, median of --repeats.")
    t.add_argument("--preset", default="GPT-small", help="transformer preset (default GPT-small)")
    t.add_argument("--vq-preset", default="VQ-tiny", help="tokenizer preset (default VQ-tiny)")
    t.add_argument("--grid", type=nonneg_int, default=0, help="token grid side (default: the preset's)")
    t.add_argument("--batch-size", type=positive_int, default=64, help="sequences (images) per step (default 64)")
    t.add_argument("--codebook-size", type=nonneg_int, default=0, help="K (default: the VQ preset's)")
    t.add_argument("--clusters", type=nonneg_int, default=0, help="C coarse labels (clusters; default K/32)")
    t.add_argument("--parts", nargs="+", default=["tokenizer", "coarse", "fine", "baseline"],
                   choices=["tokenizer", "coarse", "fine", "baseline", "iar"],
                   help="what to time (default: all but iar, the baseline with IAR's cluster-level loss)")
    t.add_argument("--repeats", type=positive_int, default=5, help="timed steps per dtype; median reported (default 5)")
    t.add_argument("--untimed-rounds", type=nonneg_int, default=1, help="untimed steps first (default 1)")
    _common(t)
    t.set_defaults(func=cmd_train)
    _register_tokenizer_steps(bsub)


def _register_tokenizer_steps(bsub) -> None:
    k = bsub.add_parser("tokenizer-steps", help="CPU seconds of one training step of each CPU tokenizer preset, "
                                                "with its recipe's batch and loss terms (fp32, one thread)",
                        description="What a tokenizer run of each CPU preset costs per step here (the transformers: "
                                    "`coarse2fine bench train`); the GPU presets (LlamaGen's recipe) are skipped.")
    k.add_argument("--repeats", type=positive_int, default=3, help="timed steps per preset; median (default 3)")
    k.set_defaults(func=cmd_tokenizer_steps)


def cmd_tokenizer_steps(args) -> int:
    import torch

    from coarse2fine.bench.speed import tokenizer_step_seconds
    from coarse2fine.config import tokenizer_recipe

    torch.set_num_threads(1)
    for name in VQ_PRESETS:
        if tokenizer_recipe(name)["recipe"] == "llamagen":  # the GPU presets would take minutes
            continue
        t = tokenizer_step_seconds(name, repeats=args.repeats)
        print(f"{name:<12} {t['cpu_s']:.2f} CPU-s/step (batch {t['batch_size']}, {t['terms']}, fp32, 1 thread)")
    return 0


def _common(p) -> None:
    p.add_argument("--dtype", nargs="+", default=None, choices=["fp32", "bf16"],
                   help="precision(s); sample default fp32 and bf16 on CPU, bf16 on GPU; train default fp32 bf16")
    add_device(p)
    add_threads(p)
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--json", default="", help="write the records to this JSON file")
    p.add_argument("--md", default="", help="write the markdown tables (with command and machine) here")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines on stderr")


def _log(args):
    if args.quiet:
        return None
    return lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)


def _check_outputs(args) -> None:
    for flag in ("json", "md"):
        if getattr(args, flag):
            check_out_path(getattr(args, flag), f"--{flag}", kind="file")


def cmd_sample(args) -> int:
    from coarse2fine.bench.runs import SampleBench, num_clusters, run_sample_bench

    _check_outputs(args)
    dtypes = args.dtype or (["bf16"] if args.device.startswith("cuda") else ["fp32", "bf16"])
    mode = "reduce-overhead" if args.cuda_graphs else args.compile
    sizes = []
    for preset in args.preset:  # every size checked before the first is timed (and its line printed)
        if preset not in GPT_PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose from {', '.join(GPT_PRESETS)}")
        grid = args.grid or GPT_PRESETS[preset].get("grid", 16)
        vq = args.vq_preset or ("VQ-tiny" if grid == 8 and "grid" in GPT_PRESETS[preset] else "VQ-16")
        num_clusters(args.codebook_size or vq_config(vq).codebook_size, args.clusters)
        sizes.append((preset, vq))
    recs = []
    for preset, vq in sizes:
        for d in dtypes:
            sb = SampleBench(preset=preset, fine_preset=args.fine_preset, vq_preset=vq, batch=args.batch_size,
                             grid=args.grid, codebook_size=args.codebook_size, num_coarse=args.clusters,
                             fine_head=args.fine_head, dtype=d, weights=args.weights, device=args.device, compile_mode=mode,
                             repeats=args.repeats, warmup=args.untimed_rounds, naive_repeats=args.naive_repeats,
                             decode=not args.no_decode, decode_images=args.decode_images,
                             mem_gbps=args.mem_gbps, seed=args.seed)
            print(f"bench sample {preset} {d} ...", file=sys.stderr, flush=True)
            recs.append(run_sample_bench(sb, _log(args)))
    _emit(args, recs, sample_tables(recs))
    return 0


def cmd_bound(args) -> int:
    from coarse2fine.bench import speed as bench
    from coarse2fine.bench.runs import DTYPES, bound_record

    _check_outputs(args)
    peak = args.peak_tflops * 1e12 or bench.matmul_flops_per_s(DTYPES[args.dtype], args.device, seconds=1.0)
    bw = args.mem_gbps * 1e9 or bench.copy_bytes_per_s(args.device)
    recs = [bound_record(p, args.fine_preset, args.batch_size, peak, bw, args.grid, args.vq_preset, dtype=args.dtype,
                         fine_head=args.fine_head)
            for p in args.preset]
    _emit(args, recs, bound_table(recs), "Computed on")
    return 0


def cmd_train(args) -> int:
    from coarse2fine.bench.runs import TrainBench, run_train_bench

    _check_outputs(args)
    tb = TrainBench(preset=args.preset, vq_preset=args.vq_preset, batch=args.batch_size, grid=args.grid,
                    codebook_size=args.codebook_size, num_coarse=args.clusters,
                    dtypes=tuple(args.dtype or ["fp32", "bf16"]), parts=tuple(args.parts), device=args.device,
                    repeats=args.repeats, warmup=args.untimed_rounds, seed=args.seed)
    recs = run_train_bench(tb, _log(args))
    _emit(args, recs, train_table(recs))
    return 0


# ---- output --------------------------------------------------------------------------------------

def _header(recs_machine: dict, what: str = "Machine") -> str:
    m = recs_machine
    dev = m.get("gpu") or m.get("cpu")
    return (f"Command: `coarse2fine {' '.join(shlex.quote(a) for a in sys.argv[1:])}`\n\n"
            f"{what}: {dev}" + (f" (flags {' '.join(m['cpu_flags'])})" if m.get("cpu_flags") else "") +
            f", {m.get('cpu_count')} CPUs visible, {m.get('threads')} torch threads, "
            f"torch {m.get('torch')}, 1-min load average at the end {m.get('load_avg_1m')}; "
            f"date {time.strftime('%Y-%m-%d %H:%M')}.\n")


def _emit(args, recs: list[dict], tables: str, what: str = "Machine") -> None:
    from coarse2fine.bench.speed import machine_info

    text = _header(machine_info(args.device), what) + "\n" + tables
    print(text)
    from coarse2fine.fileio import atomic_write_bytes

    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(recs, indent=1, default=str) + "\n").encode())
    if args.md:
        atomic_write_bytes(Path(args.md), text.encode())


def _g(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def sample_tables(recs: list[dict]) -> str:
    """Markdown: throughput per part (wall clock), the CTF/baseline ratio by wall clock and by CPU
    time, and the AR loops against the machine's limits."""
    cpu = any("cpu" in r for r in recs)
    a = ["| backbone (stage 2) | dtype | tokens | stage 1 s | stage 2 s | decode s | CTF img/s | baseline AR s "
         "| baseline img/s | **CTF / baseline** | w/o decode |" + (" by CPU time |" if cpu else ""),
         "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cpu else "")]
    b = ["| backbone | dtype | loop | GFLOP/s | % of matmul peak | matmul peak GFLOP/s | bound img/s: compute, "
         "bandwidth | naive / KV-cache | peak mem MiB (rise) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        sb, w = r["bench"], r["wall"]
        m, ips = w["median_s"], w["images_per_s"]
        dt = sb["dtype"] + ("" if sb["weights"] == "autocast" else " cast") + (f" {sb['compile_mode']}"
                                                                              if sb["compile_mode"] else "")
        by_cpu = f" {r['cpu']['ratio_ctf_over_baseline']:.2f} |" if "cpu" in r else (" - |" if cpu else "")
        head = "" if sb.get("fine_head", "restricted") == "restricted" else ", full head"
        a.append(f"| {sb['preset']} ({r['fine_preset']}{head}) | {dt} | {r['tokens']} | {m['stage1']:.3f} "
                 f"| {m['stage2']:.3f} | {_g(m.get('decode'), '.3f')} | {ips['ctf']:.2f} | {m['baseline']:.3f} "
                 f"| {ips['baseline']:.2f} | **{w['ratio_ctf_over_baseline']:.2f}** | {w['ratio_no_decode']:.2f} |"
                 + by_cpu)
        eff = r.get("cpu", w)  # CPU time on a CPU (robust to other jobs), wall clock on a GPU
        naive = r.get("naive", {}).get("cpu" if "cpu" in r else "wall")
        for loop in ("baseline", "stage1", "stage2"):
            s = eff["loops"][loop]
            mem = r["memory"].get(loop, {})
            nv = (f"{naive['time_s']:.1f} s / {naive['kv_cache_time_s']:.2f} s = **{naive['speedup']:.1f}x**"
                  if naive and loop == "baseline" else "")
            bound = f"{s['compute_bound_images_per_s']:.0f}, {_g(s.get('bandwidth_bound_images_per_s'), '.0f')}"
            b.append(f"| {sb['preset']} | {dt} | {loop} | {s['flop_per_s'] / 1e9:.1f} "
                     f"| **{100 * s['frac_of_matmul_peak']:.0f}%** | {eff['matmul_peak_flop_per_s'] / 1e9:.0f} "
                     f"| {bound} | {nv} | {_g(mem.get('peak_mib'), '.0f')} ({_g(mem.get('rise_mib'), '.0f')}) |")
    notes = ["", "Seconds: wall-clock medians per batch. CTF img/s = batch / (stage 1 + stage 2 + decode); "
             "baseline img/s = batch / (AR loop + decode); the decode is the same operation for both, timed once "
             "per round. Both AR loops run 2 x batch rows (CFG); stage 2 runs one pass. "
             "'% of matmul peak' = counted matmul FLOPs / time / best square-matmul FLOP/s measured in the same "
             "rounds" + (", all in CPU seconds of this process (robust to other jobs on a shared CPU)" if cpu else "")
             + ". 'bound img/s' = batch / (FLOPs / matmul peak) and batch / (weight + KV bytes / memory "
             "bandwidth); stage 2 has no bandwidth bound (one pass, compute-bound)."]
    if any(r.get("decode_images_timed") and r["decode_images_timed"] < r["batch"] for r in recs):
        notes.append("Decode timed on fewer images and scaled to the batch where `decode_images_timed` < batch "
                     "(see the JSON).")
    return "\n".join(a) + "\n\n" + "\n".join(b) + "\n" + "\n".join(notes) + "\n"


def bound_table(recs: list[dict]) -> str:
    r0 = recs[0]
    rows = [f"Machine model: matmul peak {r0['peak_flop_per_s'] / 1e12:.3g} TFLOP/s, memory {r0['bytes_per_s'] / 1e9:.4g} "
            f"GB/s, {r0['dtype']} weights and KV cache, batch {r0['batch']}, {r0['tokens']} tokens, stage-2 head "
            f"{r0.get('fine_head', 'full')}.\n",
            "| backbone (stage 2) | baseline loop ms | stage 1 ms | stage 2 ms | decode ms | CTF img/s | baseline img/s "
            "| **CTF / baseline** | w/o decode |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        t, ips = r["bound_s"], r["images_per_s"]
        rows.append(f"| {r['preset']} ({r['fine_preset']}) | {1e3 * t['baseline']:.1f} | {1e3 * t['stage1']:.1f} "
                    f"| {1e3 * t['stage2']:.1f} | {1e3 * t['decode']:.1f} | {ips['ctf']:.3g} | {ips['baseline']:.3g} "
                    f"| **{r['ratio_ctf_over_baseline']:.2f}** | {r['ratio_no_decode']:.2f} |")
    return "\n".join(rows) + ("\n\nLower bounds, not measurements: each AR step costs at least max(FLOPs / peak, "
                              "bytes / bandwidth); stage 2 and the decode at least FLOPs / peak.\n")


def train_table(recs: list[dict]) -> str:
    rows = ["| part | model | dtype | batch | step s | step CPU s | tokens/s | images/s | GFLOP/s "
            "| peak mem MiB (rise) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        gf = _g(r["flop_per_s"] / 1e9 if r["flop_per_s"] else None, ".1f")
        rows.append(f"| {r['part']} | {r['model']} | {r['dtype']} | {r['batch']} | {r['step_s']:.3f} "
                    f"| {_g(r['step_cpu_s'], '.3f')} "
                    f"| {r['tokens_per_s']:.0f} | {r['images_per_s']:.1f} | {gf} "
                    f"| {_g(r['peak_mib'], '.0f')} ({_g(r['rise_mib'], '.0f')}) |")
    return "\n".join(rows) + ("\n\nOne step = forward, backward, grad clip, AdamW. tokens = codes per step "
                              "(batch x grid^2). Memory: " + (recs[0]["memory_kind"] if recs else "") +
                              "; rise = above the resident set before the first step.\n")
