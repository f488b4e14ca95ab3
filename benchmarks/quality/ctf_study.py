"""CTF study, trained far enough to mean something (issue 12): seeds, compute, peer methods.

    .venv/bin/python benchmarks/quality/ctf_study.py --phases setup
    .venv/bin/python benchmarks/quality/ctf_study.py --phases headline --seeds 0      # one process per core,
    .venv/bin/python benchmarks/quality/ctf_study.py --phases headline --seeds 1,2    # side by side
    .venv/bin/python benchmarks/quality/ctf_study.py --phases peers --seeds 0
    .venv/bin/python benchmarks/quality/ctf_study.py --report                         # re-render only

Builds on study_core.py's setup, sampling and scoring (those of the first study, archive/study.py: same
tokenizer recipe, classifier, metrics), with:
- a 10x longer schedule (3000 steps of batch 64 = 3.2 epochs of Fashion-MNIST; the first study trained 300);
- seeds: the headline (baseline, stage 1, stage 2) trains once per seed; every score is reported as
  mean and standard deviation over the seeds; the model seed sets initialisation, data order and dropout,
  while tokenizer, codes, coarse map, classifier and sampling noise are shared;
- compute: every checkpoint records the training CPU-seconds (this process's own, one thread) and
  analytic training FLOPs (bench.speed.train_flops), so convergence is plotted against steps AND compute
  (CTF trains two networks);
- peer methods on the library's own code paths: stage 1 + a random member of each cluster (MASC's
  decoding) or the member nearest the centroid, i.e. no stage-2 network (`sample --fine-decoding`); random
  clusters; cluster counts K/128, K/32, K/8; the IAR recipe (baseline + cluster-level loss on balanced
  clusters, `train --cluster-loss-weight`) when the installed library has it.
Each process writes its own results_<tag>.json in the results dir (so processes never race on one
file); the report merges all of them. Everything resumes: finished runs and scores are reused.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ctf_study_report  # noqa: E402
import study_core  # noqa: E402  (plan, setup, sampling, scoring)
from coarse2fine.stages import stage_spec  # noqa: E402
from ctf_study_report import ctf_runs, run_name  # noqa: E402
from study_core import AR_OPTS, CTF_OPTS, Plan, log  # noqa: E402

from coarse2fine.config import TrainConfig, train_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEADLINE_STEPS = 3000
HEADLINE_CHECKPOINTS = [300, 750, 1500, 3000]
SEEDS = [0, 1, 2]
IAR_WEIGHT = 1.0  # weight of IAR's cluster-level cross-entropy beside the token cross-entropy


def make_plan(data: str, small: bool, steps: int | None) -> Plan:
    p = Plan.for_data(data, small)
    if not small:
        p.steps, p.checkpoints = HEADLINE_STEPS, list(HEADLINE_CHECKPOINTS)
    if steps:
        # the headline's checkpoints scaled, plus the start of the last fifth (the flattening criterion)
        p.checkpoints = sorted({max(1, round(c * steps / p.steps)) for c in p.checkpoints} | {round(0.8 * steps)})
        p.steps = steps
    return p


class SeededStudy(study_core.Study):
    """study_core.Study with a model seed per run and compute accounting per checkpoint."""

    def setup(self) -> None:
        # the tokenizer's test-set score is shared: another process's results file may already hold it
        shared = ctf_study_report.merge(self.res)["setup"]
        if "tokenizer" in shared:
            self.db["setup"].setdefault("tokenizer", shared["tokenizer"])
        super().setup()

    def render(self) -> None:  # every process's results file, merged
        ctf_study_report.render_dir(self.res)

    def score(self, key: str, *args, **kwargs) -> dict:
        """Study.score, reusing a score another process wrote: re-scoring an earlier checkpoint would read
        the run's current weights, which may be past it (a restarted seed scored step 300 with step-750
        weights)."""
        other = ctf_study_report.merge(self.res)["entries"].get(key)
        if key not in self.db["entries"] and other is not None:
            self.db["entries"][key] = other
        return super().score(key, *args, **kwargs)

    def sample(self, kind: str, runs: tuple[str, ...], n: int, opts: dict, coarse_key: str | None = None):
        """Study.sample, plus kind "ctf-nonet": stage 1 with a stage-2 decoding that needs no network."""
        from coarse2fine.pipeline import CTFPipeline
        from coarse2fine.sampling import StageSampling

        if kind != "ctf-nonet":
            return super().sample(kind, runs, n, opts, coarse_key)
        pipe = CTFPipeline.from_runs(self.work / "runs" / runs[0])
        s1 = StageSampling(**opts["s1"])
        labels = self.labels(n)
        t = time.time()
        images = []
        for i, lo in enumerate(range(0, len(labels), 250)):
            out = pipe(labels[lo:lo + 250], s1, seed=self.plan.seed * 1000 + i, fine_decoding=opts["fine_decoding"])
            images.append(out.images)
        return torch.cat(images).numpy(), labels.numpy(), time.time() - t

    def train_seeded(self, stage: str, step: int, seed: int, mapname: str | None = None,
                     map_path: Path | None = None, cluster_loss: float = 0.0, tag: str = "",
                     preset: str | None = None) -> str:
        from coarse2fine.bench.speed import train_flops
        from coarse2fine.stages import stage_config
        from coarse2fine.training.gpt import train

        p = self.plan
        tag += f"_{preset}" if preset and preset != self.plan.preset else ""
        name = run_name(stage, mapname, seed, tag)
        run = self.work / "runs" / name
        other = ctf_study_report.merge(self.res)["runs"].get(name)  # another process may have trained it
        if name not in self.db["runs"] and other is not None:
            self.db["runs"][name] = json.loads(json.dumps(other))
        r = self.db["runs"].setdefault(name, {"stage": stage, "seed": seed, "map": mapname, "heldout": {},
                                              "cpu_s": {}, "wall_s": {}, "flops": {}})
        if str(step) in r["heldout"]:
            return name
        c = int(mapname.split("-")[1]) if mapname else 1
        mcfg = stage_config(preset or p.preset, stage, self.meta["codebook_size"], c, self.meta["num_classes"], self.meta["grid"])
        # the preset's recipe (cosine, 5% warm-up) at the study's steps, batch and step size
        tkw = dict(train_recipe(preset or p.preset, p.steps), batch_size=p.batch, lr=p.lr, seed=seed,
                   log_every=max(1, p.steps // 10), ckpt_every=max(1, p.steps // 10), ema_decay=0.0)
        if cluster_loss:
            tkw["cluster_loss_weight"] = cluster_loss
        tcfg = TrainConfig(**tkw)
        prev = max((int(k) for k in r["heldout"]), default=0)
        log(f"train {name}: step {prev} -> {step} of {p.steps}")
        c0, t0 = time.process_time(), time.time()
        summ = train(stage, mcfg, tcfg, self.work / "codes_train", run, coarse_map=map_path,
                     heldout_dir=self.work / "codes_test", restricted=stage_spec(stage).restricted_head,
                     resume=(run / "state.pt").exists(), progress=False, stop_at=step)
        cpu, wall = time.process_time() - c0, time.time() - t0
        r["params"] = summ["params"]
        r["dtype"] = summ["dtype"]
        r["heldout"][str(step)] = summ["heldout"]
        # a run resumed from a checkpoint past `prev` (an earlier process stopped mid-segment) ran only
        # steps_this_run steps here: the segment's compute is scaled to its step - prev steps, so a
        # stop and restart neither hides compute nor counts the steps repeated after it
        scale = (step - prev) / max(1, summ["steps_this_run"])
        r["cpu_s"][str(step)] = r["cpu_s"].get(str(prev), 0.0) + cpu * scale
        r["wall_s"][str(step)] = r["wall_s"].get(str(prev), 0.0) + wall * scale
        r["flops"][str(step)] = step * train_flops(mcfg, p.batch, mcfg.seq_len)
        r["loss"] = summ["loss"]
        log(f"  {name}@{step}: loss {summ['loss']:.3f}, held-out NLL {summ['heldout']['nll']:.3f} "
            f"acc {summ['heldout']['acc']:.3f} ({wall:.0f} s wall, {cpu:.0f} s CPU)")
        self.save()
        return name


HEADLINE_PIPELINES = ("ctf", "baseline")


def headline(st: SeededStudy, seeds: list[int], pipelines: tuple[str, ...] = HEADLINE_PIPELINES) -> None:
    """Train and score the headline pipelines checkpoint by checkpoint; `pipelines` splits CTF and the
    baseline over two processes (the grid is drawn by whichever finds both finished)."""
    p = st.plan
    km, km_path = st.cmap("kmeans", 32)
    for seed in seeds:
        for k in p.checkpoints:
            log(f"== headline seed {seed}, checkpoint {k}/{p.steps}, {'+'.join(pipelines)}")
            last = k == p.checkpoints[-1] and seed == seeds[0]
            if "ctf" in pipelines:
                co = st.train_seeded("coarse", k, seed, km, km_path)
                fi = st.train_seeded("fine", k, seed, km, km_path)
                st.score(f"head/ctf/{k}/s{seed}", "ctf", (co, fi), p.n_head, CTF_OPTS,
                         keep=f"ctf_s{seed}" if last else None)
            if "baseline" in pipelines:
                ba = st.train_seeded("baseline", k, seed)
                st.score(f"head/baseline/{k}/s{seed}", "ar", (ba,), p.n_head, AR_OPTS,
                         keep=f"baseline_s{seed}" if last else None)
            both = all((st.work / f"samples_{n}_s{seed}.npz").exists() for n in ("ctf", "baseline")) \
                if pipelines != HEADLINE_PIPELINES else True
            # the grid shows seed 0 (the seed of the peer rows and method grids); another seed draws it
            # only while none exists, so processes for other seeds do not overwrite it when they finish last
            if last and both and (seed == 0 or not (st.res / "samples_ctf_vs_baseline.png").exists()):
                study_core.sample_grid(st, suffix=f"_s{seed}")


PEERS = ("members", "random", "fewer", "more", "iar", "agglomerative")
PEER_HELP = ("members: stage 1 + a random member (MASC) or the centroid's member, no stage-2 network; "
             "random: random clusters (K/32); fewer, more: k-means with K/128 and K/8 clusters; "
             "iar: the baseline with IAR's cluster-level loss on balanced clusters; agglomerative: average-linkage "
             "clusters (K/32, MASC's grouping) instead of k-means")


def peers(st: SeededStudy, seed: int, which: tuple[str, ...] = PEERS) -> None:
    """Peer methods at the headline length, one seed (the spread comes from the headline). `which` splits
    them over processes (each row trains its own runs; `members` samples the headline's stage 1)."""
    import dataclasses

    p, final = st.plan, st.plan.steps
    if "members" in which:
        km, km_path = st.cmap("kmeans", 32)
        co = st.train_seeded("coarse", final, seed, km, km_path)
        for how in ("random-member", "centroid-member"):
            st.score(f"peer/{how}/s{seed}", "ctf-nonet", (co,), p.n_head, {**CTF_OPTS, "fine_decoding": how})
    maps = {"random": ("random", 32), "fewer": ("kmeans", 128), "more": ("kmeans", 8),
            "agglomerative": ("agglomerative", 32)}
    for row, (method, d) in maps.items():
        if row not in which:
            continue
        name, path = st.cmap(method, d)
        c1 = st.train_seeded("coarse", final, seed, name, path)
        f1 = st.train_seeded("fine", final, seed, name, path)
        st.score(f"peer/map/{name}/s{seed}", "ctf", (c1, f1), p.n_head, CTF_OPTS)
    if "iar" not in which:
        return
    if "cluster_loss_weight" in {f.name for f in dataclasses.fields(TrainConfig)}:
        name, path = st.cmap("balanced", 32)
        iar = st.train_seeded("baseline", final, seed, name, path, cluster_loss=IAR_WEIGHT, tag="_iar")
        st.score(f"peer/iar/s{seed}", "ar", (iar,), p.n_head, AR_OPTS)
    else:
        log("IAR row skipped: this library has no TrainConfig.cluster_loss_weight")


SPEED_STAGES = ("coarse", "fine", "baseline")


def speed(st: SeededStudy, seed: int, repeats: int = 5, batch: int = 64,
          stages: tuple[str, ...] = SPEED_STAGES) -> None:
    """Quality against sampling cost: baseline and CTF at two backbone sizes (the headline's and
    plan.big_preset), all trained on the same schedule; images/s of the four pipelines measured in this
    process, one thread, alternating (median of `repeats` batches), beside their FD and class accuracy.

    `stages` splits the big preset's training over processes (e.g. one process `fine`, another
    `coarse,baseline`); scoring and timing run in whichever process finds all three trained."""
    import numpy as np

    from coarse2fine.pipeline import ARPipeline, CTFPipeline
    from coarse2fine.sampling import StageSampling

    p, final = st.plan, st.plan.steps
    km, km_path = st.cmap("kmeans", 32)
    for stage in stages:
        st.train_seeded(stage, final, seed, *((km, km_path) if stage != "baseline" else ()), preset=p.big_preset)
    trained = ctf_study_report.merge(st.res)["runs"]
    missing = [n for n in (run_name(s, km, seed, f"_{p.big_preset}") for s in SPEED_STAGES)
               if str(final) not in trained.get(n, {}).get("heldout", {})]
    if missing:
        log(f"speed: waiting for {', '.join(missing)} (another process trains them); scoring later")
        return
    rows = {}
    for preset in (p.preset, p.big_preset):
        co = st.train_seeded("coarse", final, seed, km, km_path, preset=preset)
        fi = st.train_seeded("fine", final, seed, km, km_path, preset=preset)
        ba = st.train_seeded("baseline", final, seed, preset=preset)
        key = "head" if preset == p.preset else f"speed/{preset}"
        ctf_key, base_key = (f"head/ctf/{final}/s{seed}", f"head/baseline/{final}/s{seed}") if key == "head" else \
            (f"speed/{preset}/ctf/s{seed}", f"speed/{preset}/baseline/s{seed}")
        st.score(ctf_key, "ctf", (co, fi), p.n_head, CTF_OPTS)
        st.score(base_key, "ar", (ba,), p.n_head, AR_OPTS)
        rows[f"CTF {preset}"] = (ctf_key, CTFPipeline.from_runs(st.work / "runs" / co, st.work / "runs" / fi))
        rows[f"baseline {preset}"] = (base_key, ARPipeline.from_runs(st.work / "runs" / ba))
    labels = torch.arange(batch) % st.meta["num_classes"]
    s1c, s2c, s1b = (StageSampling(**CTF_OPTS["s1"]), StageSampling(**CTF_OPTS["s2"]), StageSampling(**AR_OPTS["s1"]))
    times: dict[str, list[float]] = {k: [] for k in rows}
    for r in range(repeats + 1):  # the first round warms up
        for name, (_, pipe) in rows.items():
            t0 = time.perf_counter()
            pipe(labels, s1c, s2c, seed=r) if isinstance(pipe, CTFPipeline) else pipe(labels, s1b, seed=r)
            if r:
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, (key, _) in rows.items():
        e = st.db["entries"][key]
        out[name] = {"images_per_s": batch / float(np.median(times[name])), "entry": key,
                     "FD": e["metrics"].get("FD"), "ClassAcc": e["metrics"].get("ClassAcc"),
                     "params": sum(m.numel() for m in _models(rows[name][1]) for m in m.parameters())}
        log(f"  speed {name}: {out[name]['images_per_s']:.1f} images/s, FD {out[name]['FD']:.4g}, "
            f"ClassAcc {out[name]['ClassAcc']:.3f}")
    st.db["speed"] = {"batch": batch, "repeats": repeats, "threads": torch.get_num_threads(), "rows": out,
                      "dtype": "float32", "decode": "included (VQ decode of the 64 images)"}
    st.save()


def grids(st: SeededStudy, seed: int, per_class: int = 4) -> None:
    """samples_methods.png: the same sampling noise through every trained method (headline, peers, the
    speed phase's larger backbone), one panel per method, one row per class. Methods not trained yet are
    left out; rerun the phase when more have finished."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, final = st.plan, str(st.plan.steps)
    km, _ = st.cmap("kmeans", 32)
    big = f"_{p.big_preset}"
    merged = ctf_study_report.merge(st.res)
    nonet = lambda how: {**CTF_OPTS, "fine_decoding": how}  # noqa: E731
    coarse_only = (run_name("coarse", km, seed),)
    methods = [("CTF", "ctf", ctf_runs(km, seed), CTF_OPTS),
               ("stage 1 + random member", "ctf-nonet", coarse_only, nonet("random-member")),
               ("stage 1 + centroid member", "ctf-nonet", coarse_only, nonet("centroid-member")),
               ("AR baseline", "ar", (run_name("baseline", None, seed),), AR_OPTS),
               ("IAR (cluster loss)", "ar", (run_name("baseline", None, seed, "_iar"),), AR_OPTS)]
    for name in sorted(st.db["setup"].get("maps", {}) | merged["setup"].get("maps", {})):
        if name != km and not name.startswith("balanced"):
            methods.append((f"CTF, {name} clusters", "ctf", ctf_runs(name, seed), CTF_OPTS))
    methods += [(f"CTF {p.big_preset}", "ctf", ctf_runs(km, seed, big), CTF_OPTS),
                (f"AR baseline {p.big_preset}", "ar", (run_name("baseline", None, seed, big),), AR_OPTS)]
    runs = merged["runs"]
    ready = [m for m in methods if all(final in runs.get(r, {}).get("heldout", {}) for r in m[2])]
    nc = st.meta["num_classes"]
    fig, axes = plt.subplots(1, len(ready), figsize=(1.6 * len(ready), 0.45 * nc + 0.9), squeeze=False)
    for ax, (label, kind, names, opts) in zip(axes[0], ready):
        images, labels, _ = st.sample(kind, names, nc * per_class, opts)
        order = np.argsort(labels, kind="stable")  # rows = classes, the same noise per cell in every panel
        tiles = images[order].reshape(nc, per_class, *images.shape[1:])
        ax.imshow(np.concatenate(np.concatenate(tiles, axis=1), axis=1))
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{p.data}, {p.steps} steps, seed {seed}: {per_class} samples per class (rows), same noise", fontsize=8)
    fig.tight_layout()
    fig.savefig(st.res / "samples_methods.png", dpi=110)
    plt.close(fig)
    log(f"samples_methods.png: {', '.join(m[0] for m in ready)}")


def flatness(st: SeededStudy, window: float = 0.05) -> None:
    """The flattening criterion from every finished run's training log: the mean training loss over the
    last `window` of steps before 4/5 of training and before the end, and the gain between them (the
    held-out NLL is only evaluated at the plan's checkpoints)."""
    import numpy as np

    final = st.plan.steps
    w = max(1, round(window * final))
    out = {}
    for name, r in sorted(ctf_study_report.merge(st.res)["runs"].items()):
        log_path = st.work / "runs" / name / "metrics.jsonl"
        if str(final) not in r.get("heldout", {}) or not log_path.exists():
            continue
        loss = {}
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec:
                loss[rec["step"]] = rec["loss"]
        fifth, end = (np.mean([loss[k] for k in range(e - w + 1, e + 1) if k in loss]) for e in (round(0.8 * final), final))
        out[name] = {"window": w, "loss_at_4_5": float(fifth), "loss_at_end": float(end),
                     "gain_last_fifth": float((fifth - end) / fifth)}
    st.db["flatness"] = out
    st.save()
    log("flatness: " + ", ".join(f"{k} {100 * v['gain_last_fifth']:.2f}%" for k, v in out.items()))


SHARED_SETUP = ("tokenizer", "codes_train", "codes_test", "classifier", "maps", "feature_cache")
# plan fields a shared setup must agree on (the schedule and sample counts may differ)
SETUP_FIELDS = ("data", "resolution", "limit_per_class", "flip", "vq_steps", "vq_batch", "vq_lr", "clf_epochs",
                "clf_width", "clf_limit", "ref_split", "ref_count", "seed")


def reuse_setup(src: Path, work: Path, plan) -> None:
    """Symlink another work dir's setup products into `work` (nothing is copied or retrained)."""
    from dataclasses import asdict

    other = src / "plan.json"
    if not other.is_file():
        raise SystemExit(f"--reuse-setup {src}: no plan.json there; pass a work dir this study wrote")
    theirs, ours = json.loads(other.read_text()), asdict(plan)
    diff = [k for k in SETUP_FIELDS if theirs.get(k) != ours.get(k)]
    if diff:
        raise SystemExit(f"--reuse-setup {src}: its setup differs in {', '.join(diff)}; it cannot be shared")
    work.mkdir(parents=True, exist_ok=True)
    for name in SHARED_SETUP:
        if (src / name).exists() and not (work / name).exists():
            (work / name).symlink_to((src / name).resolve(), target_is_directory=True)


def _models(pipe):
    return [pipe.coarse_model, pipe.fine_model] if hasattr(pipe, "coarse_model") else [pipe.model]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="fashion-mnist", help="fashion-mnist | twemoji | emoji64 | default")
    ap.add_argument("--small", action="store_true", help="a few-minute smoke run (nothing meaningful expected)")
    ap.add_argument("--out", help="work dir for runs (default /work/c2f_ctf_study_<data>[_small])")
    ap.add_argument("--results", help="results dir (default benchmarks/results/ctf_study_<data>[_small])")
    ap.add_argument("--tokenizer", help="reuse this tokenizer run dir instead of training one")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: run processes side by side)")
    ap.add_argument("--steps", type=int, help="override the schedule length (checkpoints scale with it)")
    ap.add_argument("--checkpoints", help="comma list of steps where the headline scores (default: the "
                    "schedule's, scaled to --steps)")
    ap.add_argument("--seeds", default="0,1,2", help="model seeds this process trains (comma list)")
    ap.add_argument("--phases", default="setup,headline,peers,speed",
                    help="comma list of setup, headline, peers, speed, grids (sample grids of every trained method), "
                         "flatness (training-loss gain over the last fifth of every finished run)")
    ap.add_argument("--speed-stages", default=",".join(SPEED_STAGES),
                    help="which of the big preset's runs this process trains in the speed phase (split them "
                         "over processes); the process that finds all three trained scores and times them")
    ap.add_argument("--headline-pipelines", default=",".join(HEADLINE_PIPELINES),
                    help="which headline pipelines this process trains and scores (ctf, baseline: split them "
                         "over two processes)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="which peer rows this process trains and scores (split them over processes): " + PEER_HELP)
    ap.add_argument("--reuse-setup", metavar="WORK",
                    help="link the tokenizer, codes, classifier, coarse maps and reference features of another "
                         "work dir of the same data (e.g. a --steps 6000 run beside the 3000-step one)")
    ap.add_argument("--report", action="store_true", help="only re-render the report from the results dir")
    args = ap.parse_args(argv)
    tag = f"{args.data.replace('-', '')}{'_small' if args.small else ''}"
    results = Path(args.results or ROOT / "benchmarks" / "results" / f"ctf_study_{tag}")
    if args.report:
        ctf_study_report.render_dir(results)
        return 0
    torch.set_num_threads(args.threads)
    plan = make_plan(args.data, args.small, args.steps)
    if args.checkpoints:
        plan.checkpoints = sorted({int(c) for c in args.checkpoints.split(",")})
        if plan.checkpoints[-1] != plan.steps or plan.checkpoints[0] < 1:
            ap.error(f"--checkpoints must lie in 1..{plan.steps} and end at the schedule's last step {plan.steps}")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.out or f"/work/c2f_ctf_study_{tag}")
    cmd = ".venv/bin/python benchmarks/quality/ctf_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    phases = args.phases.split(",")
    stages = tuple(args.speed_stages.split(","))
    if not set(stages) <= set(SPEED_STAGES):
        ap.error(f"--speed-stages takes a comma list of {', '.join(SPEED_STAGES)}")
    which = tuple(args.peers.split(","))
    if not set(which) <= set(PEERS):
        ap.error(f"--peers takes a comma list of {', '.join(PEERS)}")
    pipes = tuple(args.headline_pipelines.split(","))
    if not set(pipes) <= set(HEADLINE_PIPELINES) or not pipes:
        ap.error(f"--headline-pipelines takes a comma list of {', '.join(HEADLINE_PIPELINES)}")
    part = "" if "headline" not in phases or set(pipes) == set(HEADLINE_PIPELINES) else "_" + "-".join(pipes)
    part += "" if "speed" not in phases or stages == SPEED_STAGES else "_" + "-".join(stages)
    part += "" if "peers" not in phases or set(which) == set(PEERS) else "_" + "-".join(which)
    db_name = "results_setup.json" if phases == ["setup"] else \
        f"results_{'_'.join(phases)}{part}_s{'-'.join(map(str, seeds))}.json"
    if args.reuse_setup:
        reuse_setup(Path(args.reuse_setup), work, plan)
    st = SeededStudy(plan, work, results, Path(args.tokenizer) if args.tokenizer else None, cmd, db_name=db_name)
    log(f"plan: steps {plan.steps}, checkpoints {plan.checkpoints}, seeds {seeds}, phases {phases}; work {work}")
    st.setup()
    if "headline" in phases:
        headline(st, seeds, HEADLINE_PIPELINES if set(pipes) == set(HEADLINE_PIPELINES) else pipes)
    if "peers" in phases:
        peers(st, seeds[0], which)
    if "speed" in phases:
        speed(st, seeds[0], stages=stages)
    if "grids" in phases:
        grids(st, seeds[0])
    if "flatness" in phases:
        flatness(st)
    st.save()
    log(f"done in {(time.time() - st.t0) / 60:.1f} min; report {results / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
