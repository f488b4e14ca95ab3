"""`coarse2fine demo`: the whole CTF pipeline on the embedded data, on a CPU, in minutes.

tokenizer (shipped for the embedded data, as the paper takes its tokenizer as given) -> codes (train
with flips, held-out test) -> k-means coarse map -> coarse, fine and baseline models, trained as
parallel one-thread processes -> samples of every class from CTF and from the baseline -> FD, KID
and class accuracy of both -> report.md. Every step writes a normal run directory, so each can be
inspected or reused with the other commands.

Why parallel one-thread processes: on 2 cores the three small models train faster side by side than
one after another with 2 threads each, and one competing CPU-bound process then slows them by a
fair share instead of stalling every OpenMP barrier (benchmarks/results/demo/threads.md).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coarse2fine import distributed
from coarse2fine.config import TrainConfig, UserError, gpt_config, train_recipe
from coarse2fine.apps.demo_stages import STAGES
from coarse2fine.data.builtin import demo_asset_dir, has_demo_assets
from coarse2fine.fileio import atomic_write_bytes
from coarse2fine.precision import BF16_FLAGS, cpu_info



@dataclass
class DemoPlan:
    data: str = "default"
    resolution: int = 32
    tokenizer: str = "shipped"  # "shipped" (embedded data only) or "train"
    vq_preset: str = "VQ-tiny"
    vq_steps: int = 1200
    vq_batch: int = 32
    gpt_preset: str = "GPT-small"
    # 340 steps of batch 48 without dropout: 300 of batch 64 took 16 minutes on a 2-core AVX2-only CPU
    # in fp32 (issue 25), 400 with dropout 0.1 twice the 15-minute budget; dropout only slows a run
    # this short (it is ~12% of a CPU step, too). Fewer rows per step rather than fewer steps: the
    # run is too short for the optimiser, not for the data (under one epoch of the flipped codes).
    # 280 steps took 11.3 minutes from a fresh clone on the idle AVX2-only box but left CTF's class
    # accuracy at 0.69 (benchmarks/results/demo/runs.md); 340 spends the margin on the optimiser
    steps: int = 340
    dropout: float = 0.0
    ema: float = 0.0  # EMA decay of every transformer's weights (0: off); the EMA weights are sampled
    batch_size: int = 48
    lr: float = 1e-3 * 256 / 48  # per global batch 256: the step size of batch 64 at 1e-3, kept at 48
    clusters: int = 0  # 0: K / 32 as the paper
    head: str = "restricted"  # stage-2 head: "restricted" (measured better) or "full" (the paper's)
    dtype: str = "auto"  # "auto" | "fp32" | "bf16" for the transformers
    workers: int = 0  # parallel training processes; 0: one per stage when >= 2 cores are free
    # sampling sharper than the paper's defaults (tau 1.1, CFG 2.0, stage 2 from all codes): short
    # CPU runs give flat distributions, and benchmarks/results/RESULTS.md measured lower tau, CFG 3
    # and a greedy stage 2 each raising class accuracy; the baseline gets the same tau and CFG
    temperature: float = 0.9
    cfg_scale: float = 3.0
    fine_top_k: int = 1
    per_class: int = 6  # images per class in the side-by-side grid
    eval_per_class: int = 50  # samples per class scored by FD, KID and class accuracy
    limit_per_class: int | None = None
    seed: int = 0

    @classmethod
    def quick(cls, data: str = "default") -> "DemoPlan":
        """A smoke-test size: seconds per stage, nothing recognisable expected."""
        return cls.for_data(data, vq_steps=30, gpt_preset="GPT-tiny", steps=12, batch_size=16, per_class=2,
                            eval_per_class=2, limit_per_class=40)

    @classmethod
    def for_data(cls, data: str = "default", **overrides) -> "DemoPlan":
        """The plan for a data set: the embedded grey data at 32 px (the fields' defaults), emoji64 in
        colour at 64 px (COLOUR below), anything else at 32 px with a tokenizer trained here. The
        shipped tokenizer is used wherever the package has one for the data (data.builtin.has_demo_assets)."""
        fields = {"data": data, **(COLOUR if data == "emoji64" else {}), **overrides}
        plan = cls(**fields)
        if not has_demo_assets(plan.data, plan.resolution):
            plan.tokenizer = "train"
        return plan


# `demo --data emoji64`: 64 px colour, the shipped VQ-64-f8 tokenizer (plain L2; scripts/make_demo_assets.py)
# and Lite0-probe classifier; K = 4096 codes on an 8x8 grid, 128 k-means clusters. Backbone, steps, regularisation
# and sampling from the quality-against-CPU-minutes curve (benchmarks/results/colour_curve_emoji64, scored by the
# shipped classifier; its real test images read 0.747, the target of 80% is 0.598). Without dropout the
# best points were GPT-tiny 1000 at CFG 5 (0.48 +- 0.03, three seeds; the demo's until this choice) and GPT-small
# 2000 at CFG 3 (0.59 +- 0.01), and GPT-small over-fits by 4000 steps. With dropout 0.1 and an EMA of the weights
# (0.998, sampled) longer runs keep improving: GPT-tiny 3000 reads 0.605 +- 0.005 at tau 0.8, CFG 3 (three seeds;
# ~20 CPU-minutes of training for CTF on a 2-core AMD EPYC) and GPT-small 3000 0.676 +- 0.004 at tau 0.9 (two seeds, ~100 CPU-minutes,
# `demo --preset GPT-small --temperature 0.9`). GPT-tiny 3000 fits the demo's 30-minute budget: 23 min 54 s from a
# fresh clone on 2 cores with AVX2 kernels in fp32, CTF 0.602 against the baseline's 0.542 (docs/speed.md).
# Regularised runs sample best cooler and with less guidance than short ones (tau 0.8, CFG 3: benchmarks/results/
# colour_curve_emoji64/sampling_sweep_*.md). vq_batch 16 is the cpu64 recipe's, for --train-tokenizer.
COLOUR = dict(resolution=64, vq_preset="VQ-64-f8", vq_batch=16, gpt_preset="GPT-tiny", steps=3000, dropout=0.1,
              ema=0.998, temperature=0.8, cfg_scale=3.0)


def default_out(data: str = "default") -> str:
    """The demo's output folder when --out is not given: runs/demo for the embedded data, runs/demo_<data> else."""
    return "runs/demo" if data == "default" else f"runs/demo_{data}"


def demo_precision(requested: str) -> str:
    """The transformers' precision, resolved here so that the report names it: "auto" is bf16 where the
    CPU runs it natively and faster than fp32 (precision.bf16_pays_off, which also honours
    ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA caps below AVX512), else fp32."""
    from coarse2fine.precision import bf16_pays_off

    if requested not in ("auto", "fp32", "bf16"):
        raise UserError(f"--dtype must be auto, fp32 or bf16, got {requested!r}")
    return "fp32" if requested == "auto" and not bf16_pays_off("cpu") else requested


# a train state every 500 steps: a long demo (`--steps 2000`) interrupted resumes there, not from step 0
CKPT_EVERY = 500


def demo_train_config(plan: DemoPlan, dtype: str) -> TrainConfig:
    """The TrainConfig of the demo's three models: the preset's recipe (warm-up, schedule, decay) at the
    plan's steps, batch and step size."""
    return TrainConfig(**{**train_recipe(plan.gpt_preset, plan.steps), "batch_size": plan.batch_size,
                          "lr": plan.lr, "seed": plan.seed, "log_every": max(1, plan.steps // 30),
                          "ckpt_every": min(plan.steps, CKPT_EVERY), "ema_decay": plan.ema, "dtype": dtype})


def cpu_kind() -> dict:
    """The CPU the demo ran on, for its report: {"model": name, "kind": "AVX512-BF16" | "AVX512 without
    BF16" | "AVX2-only" | "no AVX2" | "unknown", "kernels": torch's kernel level (ATEN_CPU_CAPABILITY caps
    it), "cores": usable cores}. The kind is what decides the dtype (demo_precision) and the time."""
    import platform

    model, flags = cpu_info()
    model = model or platform.processor() or platform.machine()
    if flags is None:
        kind = "unknown"
    elif flags & BF16_FLAGS:
        kind = "AVX512-BF16"
    elif "avx512f" in flags:
        kind = "AVX512 without BF16"
    else:
        kind = "AVX2-only" if "avx2" in flags else "no AVX2"
    cores = distributed.allowed_cores()
    return {"model": model, "kind": kind, "kernels": torch.backends.cpu.get_cpu_capability(), "cores": cores}


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished child processes (user + system):
    on a shared machine they tell what the demo cost where wall time also counts the others' work."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _clock(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """One line per phase with elapsed and estimated remaining time for the whole demo.

    The estimate = what is left of this phase (from its own rate when it reports one) + the later
    phases' expected seconds, scaled by how fast this machine ran the finished phases so far.
    EXPECTED: seconds per phase on 2 idle AVX2 cores in fp32, from the CPU seconds of the emulated
    AVX2 run in benchmarks/results/demo/runs.md (models: the three stages' CPU seconds / 2)."""

    EXPECTED = {"tokenizer": 6, "codes": 56, "clusters": 1, "models": 640, "samples": 25, "evaluation": 10}

    def __init__(self, plan: DemoPlan, log=_log):
        from coarse2fine.config import GPT_PRESETS

        self.t0, self.log, self.done, self.phase, self.t_phase = time.time(), log, {}, "", 0.0
        self.cpu, self.cpu_phase = {}, 0.0  # CPU seconds per phase, this process and its children
        self.expected = dict(self.EXPECTED)
        if plan.tokenizer == "train":
            self.expected["tokenizer"] = 0.47 * plan.vq_steps  # s/step measured there
        # training cost ~ steps x batch x the weights each token meets (12 L d^2 in the blocks + d x 4096 in
        # the head), relative to the default plan: GPT-tiny's step then costs 0.22x GPT-small's (measured
        # 0.23x for stage 2 on emoji64 in benchmarks/results/colour_curve_emoji64, not the 0.125x of L d^2)
        def weights(preset: str) -> int:
            g = GPT_PRESETS.get(preset, GPT_PRESETS["GPT-small"])
            return 12 * g["n_layer"] * g["dim"] ** 2 + g["dim"] * 4096

        self.expected["models"] *= plan.steps * plan.batch_size * weights(plan.gpt_preset) / (300 * 64 * weights("GPT-small"))
        self.expected["samples"] *= plan.eval_per_class / 50
        if plan.limit_per_class:
            self.expected["codes"] *= plan.limit_per_class / 1000

    def _speed(self) -> float:
        """This machine's time / the reference machine's, from the finished phases (1 until they
        add up to 10 expected seconds: tiny phases are all start-up noise)."""
        exp = sum(self.expected[p] for p in self.done)
        return min(4.0, max(0.5, sum(self.done.values()) / exp)) if exp >= 10 else 1.0

    def start(self, phase: str, what: str) -> None:
        self.phase, self.t_phase, self.cpu_phase = phase, time.time(), cpu_seconds()
        n = list(self.expected).index(phase) + 1
        self.log(f"{n}/{len(self.expected)} {what} | {_clock(time.time() - self.t0)} elapsed, "
                 f"~{_clock(self.remaining(0.0))} left")

    def remaining(self, fraction: float) -> float:
        later = list(self.expected)[list(self.expected).index(self.phase) + 1:]
        spent = time.time() - self.t_phase
        here = spent * (1 - fraction) / fraction if fraction > 0.05 else self.expected[self.phase] * self._speed() - spent
        return max(0.0, here) + sum(self.expected[p] for p in later) * self._speed()

    def update(self, fraction: float, detail: str) -> None:
        self.log(f"   {detail} | {_clock(time.time() - self.t0)} elapsed, ~{_clock(self.remaining(fraction))} left")

    def end(self) -> float:
        self.done[self.phase] = time.time() - self.t_phase
        self.cpu[self.phase] = cpu_seconds() - self.cpu_phase
        return self.done[self.phase]


def side_by_side(ctf: np.ndarray, base: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """Rows = classes: the first per_class CTF images, a white spacer, the first per_class baseline
    images. Returns uint8 [classes * (2 * per_class + 1), H, W, 3] for save_grid(nrow=2 * per_class + 1)."""
    white = np.full_like(ctf[:1], 255)
    rows = []
    for c in np.unique(labels):
        rows += [ctf[labels == c][:per_class], white, base[labels == c][:per_class]]
    return np.concatenate(rows)


def stage_workers(plan: DemoPlan) -> int:
    """How many stages train at once: plan.workers, else one per stage when the process may use
    >= 2 cores (3 one-thread processes share 2 cores well: the OS time-slices them), else 1."""
    if plan.workers:
        return max(1, min(plan.workers, len(STAGES)))
    cores = distributed.allowed_cores()
    return len(STAGES) if cores >= 2 else 1


def _prepare_tokenizer(plan: DemoPlan, tok_dir: Path, train_ds, progress: bool) -> str:
    """Fill tok_dir with the shipped tokenizer (copied, so the demo's folder stands alone) or train one."""
    from coarse2fine.training.tokenizer import train_tokenizer

    if plan.tokenizer == "shipped":
        if not has_demo_assets(plan.data, plan.resolution):
            raise UserError(f"no tokenizer ships for {plan.data} at {plan.resolution} px (only the embedded "
                            "data at 32 px and emoji64 at 64 px); pass --train-tokenizer to train one")
        tok_dir.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(demo_asset_dir(plan.data) / "tokenizer" / name, tok_dir / name)
        return "shipped (scripts/make_demo_assets.py)"
    if plan.tokenizer != "train":
        raise UserError(f"tokenizer must be 'shipped' or 'train', got {plan.tokenizer!r}")
    train_tokenizer(plan.vq_preset, tok_dir, train_ds, steps=plan.vq_steps, batch_size=plan.vq_batch,
                    seed=plan.seed, progress=progress, resume=(tok_dir / "state.pt").exists())
    return f"trained here ({plan.vq_preset}, {plan.vq_steps} steps)"


def run_demo(out: str | Path, plan: DemoPlan, progress: bool = True) -> dict:
    from coarse2fine.checkpoint import check_not_run_out
    from coarse2fine.fileio import lock_dir

    out = Path(out)
    if (out / "report.md").exists():
        raise UserError(f"{out} already holds a finished demo; choose another --out or delete it")
    gpt_config(plan.gpt_preset)  # a mistyped --preset fails here, not after the tokenizer, the codes and k-means
    # a demo folder holds its runs in sub-folders; one with a run's, an export's or a code store's files at
    # its top is someone else's
    check_not_run_out(out, "a demo folder", "the demo would write its coarse map, samples and report")
    # one demo per folder (a second one rewrote the tokenizer files and coarse map the first one's models used); a
    # demo that fails before its tokenizer is in place (a mistyped --data) removes the folder it made, as `sample` does
    with lock_dir(out, "another demo", clean_failed=("tokenizer",)):
        return _run_phases(out, plan, progress)


def _run_phases(out: Path, plan: DemoPlan, progress: bool) -> dict:
    from coarse2fine.apps.demo_stages import train_stages
    from coarse2fine.apps.demo_report import evaluate_both, render_report
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.data import build_dataset
    from coarse2fine.data.codes import CodeStore, extract_codes
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.pipeline import ARPipeline, CTFPipeline
    from coarse2fine.data.sample_folder import write_folder
    from coarse2fine.sampling import StageSampling
    from coarse2fine.tokenizer.clustering import cluster_codebook, default_num_coarse
    from coarse2fine.tokenizer.vq import codebook_fingerprint
    from coarse2fine.training.tokenizer import evaluate_reconstruction

    precision = demo_precision(plan.dtype)
    threads = distributed.configure_threads()
    bar = Progress(plan)
    report: dict = {"plan": plan.__dict__, "precision": precision, "threads": threads, "cpu": cpu_kind()}

    # 1. tokenizer
    train_ds = build_dataset(plan.data, plan.resolution, "train", limit_per_class=plan.limit_per_class)
    test_ds = build_dataset(plan.data, plan.resolution, "test", limit_per_class=plan.limit_per_class)
    from coarse2fine.precision import resolve_dtype

    dtype = str(resolve_dtype(precision, torch.device("cpu"))).replace("torch.", "")
    _log(f"data {plan.data}: {len(train_ds)} train / {len(test_ds)} test images, {train_ds.num_classes} classes; "
         f"{threads} thread(s) here, transformers in {dtype}; CPU {report['cpu']['model']} "
         f"({report['cpu']['kind']}, {report['cpu']['kernels']} kernels)")
    tok_dir = out / "tokenizer"
    bar.start("tokenizer", f"tokenizer ({plan.tokenizer})")
    source = _prepare_tokenizer(plan, tok_dir, train_ds, progress)
    vq = load_vq(tok_dir)
    rec = evaluate_reconstruction(vq, test_ds)
    report["tokenizer"] = {"psnr_test_db": rec["psnr"], "usage_test": rec["usage"], "K": vq.cfg.codebook_size,
                           "source": source}
    bar.end()
    _log(f"   tokenizer {source}: test PSNR {rec['psnr']:.2f} dB, codebook usage {100 * rec['usage']:.1f}%")

    # 2. codes
    bar.start("codes", "extracting codes (train with flips, test without)")
    extract_codes(tok_dir, train_ds, out / "codes_train", flip=True, progress=False)
    extract_codes(tok_dir, test_ds, out / "codes_test", flip=False, progress=False)
    bar.end()

    # 3. clusters
    c = plan.clusters or default_num_coarse(vq.cfg.codebook_size)
    bar.start("clusters", f"k-means: {vq.cfg.codebook_size} codes -> {c} clusters")
    cmap = cluster_codebook(vq.codebook_normalized(), c, "kmeans", plan.seed, codebook_fingerprint(vq))
    cmap.save(out / "coarse_map.safetensors")
    report["clusters"] = cmap.stats()
    bar.end()

    # 4. the three models, same backbone, batch and steps
    meta = CodeStore(out / "codes_train").meta
    tcfg = demo_train_config(plan, precision)
    workers = stage_workers(plan)
    bar.start("models", f"training coarse, fine and baseline ({plan.gpt_preset}, {plan.steps} steps each, "
                        f"{workers} process(es) at once)")
    report["models"] = train_stages(out, plan, tcfg, meta, c, workers, bar)
    report["stage_workers"] = workers
    bar.end()

    # 5. samples: eval_per_class of every class from each; the grid shows the first per_class
    bar.start("samples", f"sampling {plan.eval_per_class} images of every class from CTF and from the baseline")
    labels = torch.arange(meta["num_classes"]).repeat_interleave(plan.eval_per_class)
    stage1 = StageSampling(temperature=plan.temperature, cfg_scale=plan.cfg_scale)
    o_ctf = CTFPipeline.from_runs(out / "coarse", out / "fine")(labels, stage1, StageSampling(top_k=plan.fine_top_k),
                                                                 seed=plan.seed)
    o_base = ARPipeline.from_runs(out / "baseline")(labels, stage1, seed=plan.seed)
    per_class = min(plan.per_class, plan.eval_per_class)
    grid = side_by_side(o_ctf.images.numpy(), o_base.images.numpy(), labels.numpy(), per_class)
    save_grid(grid, out / "samples_ctf_vs_baseline.png", nrow=2 * per_class + 1)
    for name, o in (("ctf", o_ctf), ("baseline", o_base)):
        write_folder(o.images, o.labels, out / f"samples_{name}", nrow=plan.eval_per_class)
    report["sampling"] = {"ctf": o_ctf.timings, "baseline": o_base.timings, "images": len(labels)}
    bar.end()

    # 6. scores of both sample sets against the test split
    bar.start("evaluation", "FD, KID and class accuracy of both sample sets")
    report["evaluation"] = evaluate_both(plan, {"ctf": o_ctf, "baseline": o_base}, log=lambda m: None)
    bar.end()

    report["times_s"] = {**bar.done, "total": time.time() - bar.t0}
    report["cpu_s"] = {**bar.cpu, "total": sum(bar.cpu.values())}
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=1, default=str) + "\n").encode())
    atomic_write_bytes(out / "report.md", render_report(report, train_ds.classes).encode())
    _summary(out, report)
    return report


def _summary(out: Path, report: dict) -> None:
    ev = report["evaluation"]
    _log(f"done in {_clock(report['times_s']['total'])}. Files written under {out}/:")
    for f, what in (("report.md", "the report: scores, losses, times"),
                    ("samples_ctf_vs_baseline.png", "CTF (left) vs baseline (right), one row per class"),
                    ("samples_ctf/, samples_baseline/", "every sample as PNG + samples.npz"),
                    ("tokenizer/, coarse/, fine/, baseline/", "run directories the other commands accept"),
                    ("codes_train/, codes_test/, coarse_map.safetensors", "codes and the k-means coarse map"),
                    ("report.json", "everything above, machine-readable")):
        _log(f"   {f:<48} {what}")
    for name in ("ctf", "baseline"):
        s = ev.get(name, {})
        acc = s.get("class_accuracy")
        _log(f"   {name:<9} FD {s.get('fd', float('nan')):.0f}, KID {s.get('kid', float('nan')):.4f}"
             + (f", class accuracy {acc:.2f}" if acc is not None else ""))
    _log(f"   on the page (pip install -e '.[app]'): coarse2fine app --demo {out}")
