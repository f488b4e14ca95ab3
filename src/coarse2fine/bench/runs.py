"""The sampling and training benchmarks behind `coarse2fine bench sample|train`.

Models get random weights (speed does not depend on what they learned): the CTF stage-1 model,
the stage-2 model and the baseline share a backbone preset, the VQ decoder turns codes into images.
Every timed candidate runs in the same process, in alternating rounds (bench.alternate), and the
matrix-multiply peak is re-measured inside every round, so a shared machine's load hits the
candidates and the reference alike. Results are plain dicts (JSON-ready); bench_report.py prints them.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from coarse2fine.bench import speed as bench
from coarse2fine.config import GPTConfig, TrainConfig, UserError, gpt_config, vq_config
from coarse2fine.models import Transformer
from coarse2fine.data.sample_folder import decode_images
# the pipelines' sampling defaults (paper Sec. 5.1: CFG 2.0 in stage 1 and the baseline, temperature
# 1.1 for CTF, top-k off) are imported, not restated, so the bench cannot drift from them
from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT
from coarse2fine.sampling import generate_ar, generate_fine, generate_naive
from coarse2fine.stages import STAGE_SPECS, ClusterLoss, stage_config
from coarse2fine.tokenizer.clustering import default_num_coarse

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def num_clusters(codebook_size: int, num_coarse: int) -> int:
    """C of a benchmark: num_coarse (0 = default_num_coarse(K)), at most K. More clusters than codes
    has no coarse map (random_members failed on it with a shape error; the training bench timed a
    stage-1 head wider than the codebook without a word)."""
    C = num_coarse or default_num_coarse(codebook_size)
    if C > codebook_size:
        raise UserError(f"--clusters {C} is more than the {codebook_size} codes of the codebook; use at most "
                        f"{codebook_size} (default K/32 = {default_num_coarse(codebook_size)})")
    return C


@dataclass
class SampleBench:
    """One size of the sampling benchmark (see `coarse2fine bench sample --help`)."""

    preset: str = "GPT-small"
    fine_preset: str = ""  # "" = same as preset (the paper uses GPT-L for every size)
    vq_preset: str = "VQ-tiny"
    batch: int = 64
    grid: int = 0  # 0 = the preset's grid; GPT-B shapes on CPU use 8 (64 tokens), stated in results
    num_classes: int = 0  # 0 = the preset's
    codebook_size: int = 0  # 0 = the VQ preset's K
    num_coarse: int = 0  # 0 = default_num_coarse(K) (paper: 16384 -> 512)
    fine_head: str = "restricted"  # stage 2 scores each position's cluster members, or "full": all K codes
    dtype: str = "fp32"
    weights: str = "autocast"  # "autocast": fp32 weights under autocast; "cast": weights stored in dtype
    device: str = "cpu"
    compile_mode: str = ""  # "" = eager; "default" / "reduce-overhead" (CUDA graphs) / "max-autotune"
    repeats: int = 5
    warmup: int = 1
    naive_repeats: int = 1  # 0 skips the no-cache floor
    decode: bool = True
    decode_images: int = 0  # 0 = the whole batch; n < batch: time n images, scale by batch / n
    mem_gbps: float = 0.0  # 0 = measured copy bandwidth (CPU) / not reported (GPU); HBM GB/s on GPU
    seed: int = 0


def _random_model(cfg: GPTConfig, device, wdtype: torch.dtype) -> Transformer:
    m = Transformer(cfg)
    with torch.no_grad():  # the zero-initialised head would make every logit equal
        m.output.weight.normal_(std=0.02)
    return m.to(device=device, dtype=wdtype).eval()


def random_members(K: int, C: int, seed: int = 0) -> torch.Tensor:
    """A random coarse map's member table [C, M] (-1 padded): each code in a uniformly random cluster,
    so cluster sizes vary around K / C as k-means' do; every cluster has at least one member."""
    from coarse2fine.tokenizer.clustering import member_table

    phi = torch.randint(0, C, (K,), generator=torch.Generator().manual_seed(seed))
    phi[torch.randperm(K, generator=torch.Generator().manual_seed(seed + 1))[:C]] = torch.arange(C)
    return member_table(phi, C)[0]


def build_models(sb: SampleBench):
    """-> dict with the baseline, coarse and fine transformers, the VQ model (random weights) and a
    random coarse map's member table (None with the full stage-2 head)."""
    device = torch.device(sb.device)
    vcfg = vq_config(sb.vq_preset)
    preset = gpt_config(sb.preset)
    K = sb.codebook_size or vcfg.codebook_size
    C = num_clusters(K, sb.num_coarse)
    g, classes = sb.grid or preset.grid, sb.num_classes or preset.num_classes
    if vcfg.grid != g:  # the decoder must see the token grid the transformers produce
        vcfg = vq_config(sb.vq_preset, image_size=g * vcfg.downsample)
    wdtype = DTYPES[sb.dtype] if sb.weights == "cast" else torch.float32
    torch.manual_seed(sb.seed)
    from coarse2fine.tokenizer.vq import VQModel

    return {
        "baseline": _random_model(stage_config(sb.preset, "baseline", K, C, classes, g), device, wdtype),
        "coarse": _random_model(stage_config(sb.preset, "coarse", K, C, classes, g), device, wdtype),
        "fine": _random_model(stage_config(sb.fine_preset or sb.preset, "fine", K, C, classes, g), device, wdtype),
        "vq": VQModel(vcfg).to(device=device, dtype=wdtype).eval(),
        "members": random_members(K, C, sb.seed).to(device) if sb.fine_head == "restricted" else None,
    }


def run_sample_bench(sb: SampleBench, log: Callable[[str], None] | None = None) -> dict:
    """Time CTF (stage 1, stage 2, decode) against the baseline at one size. Returns a record with
    medians (s), images/s, the CTF/baseline ratio, decode-loop FLOP/s against the matmul peak,
    bytes and a bandwidth limit, the naive floor and peak memory."""
    device, dtype = torch.device(sb.device), DTYPES[sb.dtype]
    ms = build_models(sb)
    base, coarse, fine, vq, members = ms["baseline"], ms["coarse"], ms["fine"], ms["vq"], ms["members"]
    N, B = base.cfg.seq_len, sb.batch
    gen = torch.Generator(device=device)
    labels = torch.arange(B, device=device) % base.cfg.num_classes
    mode = sb.compile_mode or None
    state: dict[str, torch.Tensor] = {}

    def run_baseline():
        state["base_codes"] = generate_ar(base, labels, BASELINE_DEFAULT, gen.manual_seed(sb.seed), dtype,
                                          compile_mode=mode)

    def run_stage1():
        state["coarse"] = generate_ar(coarse, labels, CTF_COARSE_DEFAULT, gen.manual_seed(sb.seed), dtype,
                                      compile_mode=mode)

    def run_stage2():
        state["codes"] = generate_fine(fine, state["coarse"], labels, CTF_FINE_DEFAULT, gen.manual_seed(sb.seed),
                                       members, dtype)

    n_dec = min(B, sb.decode_images) if sb.decode_images else B

    def run_decode():  # the identical operation for both methods: timed once per round, added to both
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32 and sb.weights != "cast"):
            state["images"] = decode_images(vq, state["codes"][:n_dec])

    peaks: dict[str, list[float]] = {"wall": [], "cpu": []}

    def run_peak():
        for clock in clocks:
            peaks[clock].append(bench.matmul_flops_per_s(dtype, device, seconds=0.25, clock=clock))

    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)
    fns = {"baseline": run_baseline, "stage1": run_stage1, "stage2": run_stage2}
    if sb.decode:
        fns["decode"] = run_decode
    fns["matmul_peak"] = run_peak
    mem: dict[str, dict] = {}
    run_stage1()  # stage 2 and decode need codes before their first timed call
    for name in ("baseline", "stage1", "stage2", "decode"):
        if name in fns:
            with bench.peak_memory(device) as pm:
                fns[name]()
            mem[name] = {"kind": pm.kind, "peak_mib": pm.peak_mib, "rise_mib": pm.rise_mib}
    timings = bench.alternate(fns, sb.repeats, sb.warmup, device, log)

    rows = 2 * B  # CFG doubles the rows of both AR loops (pipeline defaults)
    s2_rows = 2 * B if CTF_FINE_DEFAULT.use_cfg else B
    # the restricted head: the N image positions, each times its sampled cluster's members
    width = None if members is None else float((members >= 0).sum(1)[state["coarse"]].double().mean())
    flops = {"baseline": bench.decode_flops(base.cfg, rows, N), "stage1": bench.decode_flops(coarse.cfg, rows, N),
             "stage2": bench.full_forward_flops(fine.cfg, s2_rows, N + 1, head_positions=None if width is None else N,
                                                head_width=width)}
    w_dt = dtype if sb.weights == "autocast" else None
    nbytes = {"baseline": bench.decode_bytes(base.cfg, base, rows, N, dtype, w_dt),
              "stage1": bench.decode_bytes(coarse.cfg, coarse, rows, N, dtype, w_dt)}
    bw = sb.mem_gbps * 1e9 if sb.mem_gbps else (bench.copy_bytes_per_s(device) if device.type == "cpu" else 0.0)
    rec = {"bench": asdict(sb), "tokens": N, "batch": B, "rows_ar": rows,
           "vocab": {"K": base.cfg.vocab_size, "C": coarse.cfg.vocab_size},
           "params": {k: sum(p.numel() for p in m.parameters()) for k, m in ms.items() if k != "members"},
           "fine_head": sb.fine_head, "head_members_per_position": width,
           "fine_preset": sb.fine_preset or sb.preset, "decode_images_timed": n_dec if sb.decode else 0,
           "flops": flops, "bytes": nbytes, "mem_bandwidth_bytes_per_s": bw or None,
           "memory": mem, "machine": bench.machine_info(device)}
    for clock in clocks:
        times = dict(getattr(timings, clock))
        times.pop("matmul_peak")
        rec[clock] = _summarise(times, bench.median(peaks[clock]), flops, nbytes, bw, B, n_dec if sb.decode else 0)
        rec[clock]["matmul_peaks"] = peaks[clock]
    if sb.naive_repeats:  # the no-cache floor, alternated with the cached loop it is compared with
        def run_naive():
            generate_naive(base, labels, BASELINE_DEFAULT, gen.manual_seed(sb.seed))
        nt = bench.alternate({"naive": run_naive, "kv_cache": run_baseline}, sb.naive_repeats, 0, device, log)
        rec["naive"] = {"repeats": sb.naive_repeats, "flops": bench.naive_flops(base.cfg, rows, N)}
        for clock in clocks:
            t = getattr(nt, clock)
            tn, tc = bench.median(t["naive"]), bench.median(t["kv_cache"])
            rec["naive"][clock] = {"time_s": tn, "kv_cache_time_s": tc, "speedup": tn / tc}
    return rec


def _summarise(times: dict[str, list[float]], peak: float, flops: dict, nbytes: dict, bw: float, B: int,
               n_dec: int) -> dict:
    """Per-clock medians, images/s, the CTF/baseline ratio and the loops against the machine limits."""
    if n_dec and n_dec < B:
        times["decode"] = [t * B / n_dec for t in times["decode"]]
    dec = times.get("decode", [0.0] * len(times["baseline"]))
    med = {k: bench.median(v) for k, v in times.items()}
    med["ctf_total"] = bench.median([a + b + c for a, b, c in zip(times["stage1"], times["stage2"], dec)])
    med["baseline_total"] = bench.median([a + c for a, c in zip(times["baseline"], dec)])
    med["ctf_no_decode"] = bench.median([a + b for a, b in zip(times["stage1"], times["stage2"])])
    ips = {"ctf": B / med["ctf_total"], "baseline": B / med["baseline_total"],
           "ctf_no_decode": B / med["ctf_no_decode"], "baseline_no_decode": B / med["baseline"]}

    def loop(name: str) -> dict:
        t = med[name]
        out = {"flop_per_s": flops[name] / t, "frac_of_matmul_peak": flops[name] / t / peak,
               "compute_bound_images_per_s": B * peak / flops[name]}
        if name in nbytes:
            out["bytes_per_s"] = nbytes[name] / t
            out["bandwidth_bound_images_per_s"] = B * bw / nbytes[name] if bw else None
        return out

    return {"times_s": times, "median_s": med, "images_per_s": ips, "matmul_peak_flop_per_s": peak,
            "ratio_ctf_over_baseline": ips["ctf"] / ips["baseline"],
            "ratio_no_decode": ips["ctf_no_decode"] / ips["baseline_no_decode"],
            "spread": {k: bench.spread(v) for k, v in times.items()},
            "loops": {k: loop(k) for k in ("baseline", "stage1", "stage2")}}


# ---- analytic bounds ------------------------------------------------------------------------------

def vq_decode_flops(vq_preset: str, grid: int) -> int:
    """Counted FLOPs (convs, matmuls) of decoding one image's codes, on the meta device (no memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    from coarse2fine.tokenizer.vq import VQModel

    vcfg = vq_config(vq_preset)
    with torch.device("meta"):
        vq = VQModel(vq_config(vq_preset, image_size=grid * vcfg.downsample))
        with FlopCounterMode(display=False) as fc:
            vq.decode_codes(torch.zeros(1, grid * grid, dtype=torch.long))
    return fc.get_total_flops()


def bound_record(preset: str, fine_preset: str, batch: int, peak: float, bw: float, grid: int = 0,
                 vq_preset: str = "VQ-16", codebook_size: int = 0, num_coarse: int = 0,
                 dtype: str = "bf16", fine_head: str = "restricted") -> dict:
    """Least seconds per batch of CTF and the baseline on a machine with matmul peak `peak` (FLOP/s)
    and memory bandwidth `bw` (bytes/s): per-step rooflines for the AR loops, FLOPs / peak for the
    one-pass stage 2 and the VQ decode. Pipeline defaults (CFG in the AR loops, none in stage 2).
    fine_head "restricted": stage 2 scores K / C members per position (clusters met evenly), "full": K."""
    g = grid or gpt_config(preset).grid
    K = codebook_size or vq_config(vq_preset).codebook_size
    C = num_clusters(K, num_coarse)
    nc = gpt_config(preset).num_classes
    e = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    with torch.device("meta"):
        base = Transformer(stage_config(preset, "baseline", K, C, nc, g))
        coarse = Transformer(stage_config(preset, "coarse", K, C, nc, g))
        fine = Transformer(stage_config(fine_preset or preset, "fine", K, C, nc, g))
    N, rows = g * g, 2 * batch
    s2_rows = 2 * batch if CTF_FINE_DEFAULT.use_cfg else batch
    t = {"baseline": bench.decode_bound_s(base.cfg, bench.weight_bytes(base, DTYPES[dtype]), rows, N, peak, bw, e),
         "stage1": bench.decode_bound_s(coarse.cfg, bench.weight_bytes(coarse, DTYPES[dtype]), rows, N, peak, bw, e),
         "stage2": bench.full_forward_flops(fine.cfg, s2_rows, N + 1, head_positions=N,
                                            head_width=K / C if fine_head == "restricted" else K) / peak,
         "decode": batch * vq_decode_flops(vq_preset, g) / peak}
    ctf, basel = t["stage1"] + t["stage2"] + t["decode"], t["baseline"] + t["decode"]
    return {"preset": preset, "fine_preset": fine_preset or preset, "batch": batch, "tokens": N, "dtype": dtype,
            "fine_head": fine_head,
            "peak_flop_per_s": peak, "bytes_per_s": bw, "bound_s": t,
            "images_per_s": {"ctf": batch / ctf, "baseline": batch / basel,
                             "ctf_no_decode": batch / (ctf - t["decode"]),
                             "baseline_no_decode": batch / t["baseline"]},
            "ratio_ctf_over_baseline": basel / ctf,
            "ratio_no_decode": t["baseline"] / (t["stage1"] + t["stage2"])}


# ---- training -------------------------------------------------------------------------------------

@dataclass
class TrainBench:
    """Per-step speed of training (see `coarse2fine bench train --help`)."""

    preset: str = "GPT-small"
    vq_preset: str = "VQ-tiny"
    batch: int = 64
    grid: int = 0
    codebook_size: int = 0
    num_coarse: int = 0
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    parts: tuple[str, ...] = ("tokenizer", "coarse", "fine", "baseline")
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    seed: int = 0


def gpt_train_step(stage: str, cfg: GPTConfig, batch: int, device, dtype: str, engine: str = "none",
                   cluster=None, members: torch.Tensor | None = None, train: TrainConfig | None = None,
                   seed: int = 0):
    """-> (task, step(), tokens per step, counted FLOPs per step): the stage's training Task
    (training.gpt.stage_task) on random codes, each step() one `train_step` of the loop, so the time is
    that of the loss, optimizer, clipping, autocast, EMA and per-step metrics a run has.
    dtype: "fp32" | "bf16"; engine: "none" | "ddp" | "fsdp" wraps the model as `fit` does (both need a
    process group, see bench/gpu.py); cluster: a stages.ClusterLoss (IAR); members [C, M]: the fine stage's
    restricted head (targets are then drawn from each input cluster's members); train: the TrainConfig
    (default: the "llamagen" one, TrainConfig(), at this batch; lr and schedule do not change the cost);
    seed: the network's initialisation and the random codes."""
    from coarse2fine.distributed import DistInfo
    from coarse2fine.training.gpt import stage_task
    from coarse2fine.training.loop import prepare, train_step

    causal = STAGE_SPECS[stage].causal
    N, V, inv = cfg.seq_len, cfg.vocab_size, cfg.input_vocab_size or cfg.vocab_size
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, inv, (batch, N), generator=g)
    tgt = src if causal else torch.randint(0, V, (batch, N), generator=g)
    if members is not None:  # a member of each position's cluster: what the restricted head scores
        table = members.cpu()  # [C, M], -1 padded
        pick = (torch.rand(batch, N, generator=g) * (table >= 0).sum(1)[src]).long()
        tgt = table[src, pick]
    cond = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    micro = [((src[:, :-1] if causal else src).to(device), cond.to(device), tgt.to(device))]
    tc = replace(train or TrainConfig(), batch_size=batch, dtype=dtype, fsdp=engine == "fsdp", seed=seed)
    device = torch.device(device)
    info = DistInfo(local_rank=device.index or 0, device=device, grouped=engine != "none")
    task = stage_task(stage, cfg, tc, lambda step: micro, info,
                      None if members is None else members.to(device), cluster)
    prepare(task, info)
    steps = itertools.count()
    # the causal stages see [cls, N - 1 tokens], the fine stage [cls, N coarse labels]
    flops = bench.train_flops(cfg, batch, N + (0 if causal else 1))
    return task, lambda: train_step(task, next(steps), info), batch * N, flops


def _vq_step(preset: str, batch: int, device, dtype: str, seed: int = 0):
    """-> (task, step(), images per step, None): the preset's tokenizer recipe (its loss terms: L1/L2,
    VQ, perceptual, GAN) at this batch on random images, each step() one `train_step` of the loop from
    the recipe's disc_start on, so that a discriminator, where the recipe has one, trains in it."""
    from coarse2fine.config import TokenizerTrainConfig, tokenizer_recipe
    from coarse2fine.distributed import DistInfo
    from coarse2fine.training.loop import prepare, train_step
    from coarse2fine.training.tokenizer import tokenizer_task

    vcfg = vq_config(preset)
    tc = TokenizerTrainConfig(**{**tokenizer_recipe(preset), "batch_size": batch, "dtype": dtype, "seed": seed})
    x = (torch.rand(batch, 3, vcfg.image_size, vcfg.image_size, generator=torch.Generator().manual_seed(seed))
         * 2 - 1).to(device)

    class SameImages:  # the tokenizer task's batch source: one random batch, every step
        def get(self, step: int) -> torch.Tensor:
            return x

    info = DistInfo(device=torch.device(device))
    task = tokenizer_task(vcfg, tc, SameImages(), info)
    prepare(task, info)
    steps = itertools.count(tc.disc_start)
    return task, lambda: train_step(task, next(steps), info), batch * vcfg.grid ** 2, None


def run_train_bench(tb: TrainBench, log: Callable[[str], None] | None = None) -> list[dict]:
    """tokens/s (codes per second; images/s for the tokenizer) and peak memory per training step.
    For each part the dtypes are timed in alternating rounds."""
    device = torch.device(tb.device)
    vcfg = vq_config(tb.vq_preset)
    K = tb.codebook_size or vcfg.codebook_size
    C = num_clusters(K, tb.num_coarse)
    g = tb.grid or gpt_config(tb.preset).grid
    out = []
    for part in tb.parts:
        steps, info, mem = {}, {}, {}
        for dname in tb.dtypes:  # each task seeds its networks with tb.seed
            if part == "tokenizer":
                task, step, tokens, flops = _vq_step(tb.vq_preset, tb.batch, device, dname, tb.seed)
            else:  # "iar": the baseline plus the cluster-level loss over C equal clusters
                stage = "baseline" if part == "iar" else part
                cluster = ClusterLoss(torch.arange(K, device=device) % C, C, 1.0) if part == "iar" else None
                cfg = stage_config(tb.preset, stage, K, C, gpt_config(tb.preset).num_classes, g)
                task, step, tokens, flops = gpt_train_step(stage, cfg, tb.batch, device, dname, cluster=cluster,
                                                           seed=tb.seed)
            with bench.peak_memory(device) as pm:
                step()  # the first step allocates gradients and optimizer state: the steady-state peak
            steps[dname], mem[dname] = step, pm
            info[dname] = (sum(p.numel() for p in task.model.net.parameters()), tokens, flops)
        timings = bench.alternate(steps, tb.repeats, tb.warmup, device, log)
        for dname, ts in timings.wall.items():
            params, tokens, flops = info[dname]
            t = bench.median(ts)
            out.append({"part": part, "dtype": dname, "model": tb.vq_preset if part == "tokenizer" else tb.preset,
                        "batch": tb.batch, "params": params, "tokens_per_step": tokens, "step_s": t,
                        "tokens_per_s": tokens / t, "images_per_s": tb.batch / t,
                        "flop_per_s": flops / t if flops else None, "spread": bench.spread(ts),
                        "peak_mib": mem[dname].peak_mib, "rise_mib": mem[dname].rise_mib,
                        "memory_kind": mem[dname].kind, "times_s": ts,
                        "step_cpu_s": bench.median(timings.cpu[dname]) if device.type == "cpu" else None})
        del steps
    return out
