"""Quality against CPU-minutes for the colour demo (issue 29, part 3): emoji64 at 64 px, CTF and the AR
baseline, each point a full run of `demo --data emoji64`'s recipe at one (backbone, steps).

Setup once: the shipped VQ-64-f8 tokenizer (or --assets), codes (train with flips, test), k-means
C = K / 32 = 128. Then every point trains the demo's three models with the demo's own TrainConfig
(`apps.demo.demo_train_config`: the preset's recipe at the demo's batch and step size, a full cosine
schedule of `steps`) and scores CTF and the baseline at every sampling setting (temperature, CFG) on
`--per-class` samples per class: class accuracy by the shipped Lite0-probe classifier, FD and KID
(EfficientNet-Lite0 features) against the test split. The x axis is each pipeline's own training
CPU-seconds (CTF: stage 1 + stage 2; the baseline: its one model), measured in the training process.

Lanes are one-thread processes that share the work dir, each training its stages point by point; a
pipeline is scored by the lane that finishes its last stage. Everything resumes (runs, state.pt, scores):

    C=".venv/bin/python benchmarks/quality/colour_curve.py"
    $C --lane fine & $C --lane coarse,baseline &   # two lanes of about equal cost
    $C --report                               # benchmarks/results/colour_curve_emoji64/report.md + plot
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POINTS = "GPT-tiny:500,GPT-tiny:1000,GPT-small:500,GPT-tiny:2000,GPT-small:1000"
SETTINGS = "1.0:2,0.9:3,0.9:5,0.8:8"  # temperature:cfg (stage 1 and the baseline alike)
PIPELINE_STAGES = {"ctf": ("coarse", "fine"), "baseline": ("baseline",)}
STAGES = ("coarse", "fine", "baseline")


def log(msg: str) -> None:
    print(f"[colour-curve {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_points(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        preset, _, steps = item.partition(":")
        out.append((preset.strip(), int(steps)))
    return out


def parse_settings(text: str) -> list[tuple[float, float]]:
    return [(float(t), float(c)) for t, c in (item.split(":") for item in text.split(","))]


def base_plan(seed: int):
    from coarse2fine.apps.demo import DemoPlan

    plan = DemoPlan.for_data("emoji64")
    plan.seed, plan.dtype = seed, "fp32"
    return plan


def setup(args) -> None:
    """Tokenizer copy, codes and the k-means map, made once by the first lane (a lock) and reused."""
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.data import build_dataset
    from coarse2fine.data.builtin import demo_asset_dir
    from coarse2fine.data.codes import extract_codes
    from coarse2fine.tokenizer.clustering import cluster_codebook, default_num_coarse
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    with open(w / ".setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (w / "coarse_map.safetensors").exists():
            return
        assets = args.assets or demo_asset_dir("emoji64")
        (w / "tokenizer").mkdir(exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(assets / "tokenizer" / name, w / "tokenizer" / name)
        plan = base_plan(args.seed)
        t = time.process_time()
        for split, flip in (("train", True), ("test", False)):
            ds = build_dataset("emoji64", plan.resolution, split)
            extract_codes(w / "tokenizer", ds, w / f"codes_{split}", flip=flip, progress=False)
        vq = load_vq(w / "tokenizer")
        c = default_num_coarse(vq.cfg.codebook_size)
        cmap = cluster_codebook(vq.codebook_normalized(), c, "kmeans", args.seed, codebook_fingerprint(vq))
        cmap.save(w / "coarse_map.safetensors")
        (w / "setup.json").write_text(json.dumps({"codebook_size": vq.cfg.codebook_size, "clusters": c,
                                                  "cpu_s": time.process_time() - t}) + "\n")
        log(f"setup: K {vq.cfg.codebook_size}, C {c}, {time.process_time() - t:.0f} CPU-s")


def variant(args) -> str:
    """The regularisation of a point beside the demo's recipe (none: ""), as rows and folders name it;
    `--weights raw` scores an EMA run's trained (not averaged) weights."""
    parts = ([f"dropout {args.dropout:g}"] if args.dropout else []) + ([f"EMA {args.ema:g}"] if args.ema else [])
    if args.weights == "raw":
        parts.append("raw weights")
    return ", ".join(parts)


def reg_suffix(args) -> str:
    """The regularisation as folder and file names carry it: "" for the demo's recipe, else _d0.1_ema0.998."""
    return (f"_d{args.dropout:g}" if args.dropout else "") + (f"_ema{args.ema:g}" if args.ema else "")


def point_name(args, preset: str, steps: int) -> str:
    return f"{preset}_{steps}_s{args.seed}{reg_suffix(args)}"


def point_dir(args, preset: str, steps: int) -> Path:
    d = args.work / point_name(args, preset, steps)
    d.mkdir(parents=True, exist_ok=True)
    for name in ("codes_train", "codes_test", "coarse_map.safetensors"):
        if not (d / name).exists():
            os.symlink(args.work / name, d / name)
    return d


def train_point(args, preset: str, steps: int, stage: str) -> float:
    """Train one stage of one point (or read it back); returns its training CPU-seconds."""
    from coarse2fine.apps.demo import demo_train_config
    from coarse2fine.apps.demo_stages import train_one
    from coarse2fine.data.codes import CodeStore

    d = point_dir(args, preset, steps)
    cpu_file = d / stage / "curve_cpu.json"
    if cpu_file.exists():
        return json.loads(cpu_file.read_text())["cpu_s"]
    plan = base_plan(args.seed)
    plan.gpt_preset, plan.steps, plan.dropout, plan.ema = preset, steps, args.dropout, args.ema
    meta = CodeStore(d / "codes_train").meta
    clusters = json.loads((args.work / "setup.json").read_text())["clusters"]
    log(f"train {preset} {steps} steps: {stage}")
    t = time.process_time()
    summary = train_one(stage, d, plan, demo_train_config(plan, "fp32"), meta, clusters, progress=False)
    cpu, record = time.process_time() - t, {}
    ran = summary.get("steps_this_run", steps)
    if 0 < ran < steps:  # resumed from a train state: this call's CPU per step, scaled to the whole run
        record = {"resumed": True, "measured_steps": ran, "measured_cpu_s": cpu}
        cpu *= steps / ran
    (d / stage / "curve_cpu.json").write_text(json.dumps({"cpu_s": cpu, **record}) + "\n")
    log(f"   {stage} done: {cpu / 60:.1f} CPU-min")
    return cpu


def score_point(args, preset: str, steps: int, lane: str, cpu_s: float) -> None:
    """Sample and score one pipeline of one point at every setting not scored yet."""
    import torch

    from coarse2fine.apps.demo_report import evaluate_both
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.pipeline import ARPipeline, CTFPipeline
    from coarse2fine.sampling import StageSampling

    d = point_dir(args, preset, steps)
    from colour_curve_report import classifier_of, load, row_key

    from colour_curve_report import shipped_classifier

    now = shipped_classifier()
    done = {row_key(r)[:7] for r in load(args.results)
            if now and abs(classifier_of(r)["test_accuracy"] - now["test_accuracy"]) < 1e-4}
    plan = base_plan(args.seed)
    pipe = (CTFPipeline.from_runs(d / "coarse", d / "fine") if lane == "ctf" else ARPipeline.from_runs(d / "baseline"))
    if args.weights == "raw":  # the trained weights of an EMA run, from its train state
        from coarse2fine.checkpoint import load_train_state

        models = ({"coarse": pipe.coarse_model, "fine": pipe.fine_model} if lane == "ctf"
                  else {"baseline": pipe.model})
        for stage, model in models.items():
            model.load_state_dict(load_train_state(d / stage / "state.pt")["model"])
    labels = torch.arange(9).repeat_interleave(args.per_class)
    var = variant(args)
    for temp, cfg in parse_settings(args.settings):
        if (preset, steps, args.seed, lane, temp, cfg, var) in done:
            continue
        stage1 = StageSampling(temperature=temp, cfg_scale=cfg)
        t = time.time()
        if lane == "ctf":
            o = pipe(labels, stage1, StageSampling(top_k=plan.fine_top_k), seed=args.seed)
        else:
            o = pipe(labels, stage1, seed=args.seed)
        sample_s = time.time() - t
        res = evaluate_both(plan, {lane: o}, log=lambda m: None)
        ev = res[lane]
        grid = o.images.numpy().reshape(9, args.per_class, *o.images.shape[1:])[:, :8].reshape(-1, *o.images.shape[1:])
        raw = "_raw" if args.weights == "raw" else ""
        save_grid(grid, d / f"grid_{lane}{raw}_t{temp}_cfg{cfg}.png", nrow=8)
        row = {"preset": preset, "steps": steps, "seed": args.seed, "pipeline": lane, "temperature": temp,
               "cfg": cfg, **({"variant": var} if var else {}), "train_cpu_s": cpu_s, "class_accuracy": ev["class_accuracy"], "fd": ev["fd"],
               "kid": ev["kid"], "per_class_accuracy": ev["per_class_accuracy"], "n": ev["n"],
               "sample_s": sample_s, "classifier": classifier_record(res)}
        args.results.mkdir(parents=True, exist_ok=True)
        with open(args.results / "points.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"   {lane} {preset} {steps} {var} t{temp} cfg{cfg}: ClassAcc {ev['class_accuracy']:.3f}, FD {ev['fd']:.0f} "
            f"({cpu_s / 60:.1f} train CPU-min)")


def classifier_record(ev: dict) -> dict:
    """The classifier that scored a row, by what a reader needs: its accuracy on real and reconstructed test."""
    c = ev.get("classifier") or {}
    rec = c.get("test_reconstructed_accuracy")
    return {"test_accuracy": c.get("test_accuracy"), "test_reconstructed_accuracy": rec,
            "trained_on": "originals and their reconstructions" if rec is not None else "originals only"}


def done_cpu(args, preset: str, steps: int, stage: str) -> float | None:
    f = args.work / point_name(args, preset, steps) / stage / "curve_cpu.json"
    return json.loads(f.read_text())["cpu_s"] if f.exists() else None


def write_machine(args, machine: dict) -> None:
    """machine_<lane>[_s<seed>][_<points>].json: one file per lane, seed and point list, so that a later lane
    (on another machine, perhaps) adds its record instead of replacing an earlier one's."""
    name = args.lane.replace(",", "+") + (f"_s{args.seed}" if args.seed else "")
    if args.points != POINTS:
        name += "_" + args.points.replace(":", "-").replace(",", "+")
    name += reg_suffix(args)
    (args.results / f"machine_{name}.json").write_text(json.dumps(
        {**machine, "dtype": "fp32", "threads": 1, "lane": args.lane, "seed": args.seed, "points": args.points,
         **({"variant": variant(args)} if variant(args) else {})},
        indent=1) + "\n")


def run_lane(args) -> None:
    from coarse2fine import distributed
    from coarse2fine.apps.demo import cpu_kind
    from coarse2fine.bench.speed import machine_info

    distributed.configure_threads(1)
    setup(args)
    stages = [s for s in args.lane.split(",")]
    if not stages or any(s not in STAGES for s in stages):
        raise SystemExit(f"--lane: a comma list of {STAGES}, got {args.lane!r}")
    args.results.mkdir(parents=True, exist_ok=True)
    write_machine(args, {**cpu_kind(), "amx": "amx_bf16" in machine_info().get("cpu_flags", []),
                         "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    for preset, steps in parse_points(args.points):
        for stage in stages:
            train_point(args, preset, steps, stage)
        with open(args.work / ".score.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for pipe, needs in PIPELINE_STAGES.items():
                cpus = [done_cpu(args, preset, steps, s) for s in needs]
                if all(c is not None for c in cpus):
                    score_point(args, preset, steps, pipe, sum(cpus))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lane", help="the stages this process trains: a comma list of coarse, fine, baseline")
    ap.add_argument("--report", action="store_true", help="render report.md and the plot from the results")
    ap.add_argument("--points", default=POINTS, help=f"preset:steps list, in training order (default {POINTS})")
    ap.add_argument("--settings", default=SETTINGS, help=f"temperature:cfg list (default {SETTINGS})")
    ap.add_argument("--per-class", type=int, default=50, help="samples per class scored (default 50, the demo's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="token, residual and FFN dropout of every network (default 0, the demo's)")
    ap.add_argument("--ema", type=float, default=0.0,
                    help="EMA decay of the weights; the EMA weights are scored (default 0: off, the demo's)")
    ap.add_argument("--weights", choices=("ema", "raw"), default="ema",
                    help="with --ema: score the EMA weights (default) or the trained ones from state.pt")
    ap.add_argument("--assets", type=Path, help="tokenizer/ + classifier/ folder (default: the shipped emoji64 set)")
    ap.add_argument("--work", type=Path, default=Path("/work/c2f_colour/curve"))
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "colour_curve_emoji64")
    args = ap.parse_args(argv)
    if args.report:
        from colour_curve_report import render

        render(args.results)
        return 0
    if not args.lane:
        ap.error("give --lane STAGES (e.g. fine, or coarse,baseline) or --report")
    run_lane(args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
