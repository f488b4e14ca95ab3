"""RECORD of the first quality study (issue 5, "session 1"); not maintained.

This is the driver that produced the committed results in benchmarks/results/quality_fashionmnist/,
quality_fashionmnist_small/ and quality_twemoji/ (300 steps, one seed, every ablation of the paper's
Table 3; summarised in docs/results.md and benchmarks/results/RESULTS.md). The seeded study
(benchmarks/quality/ctf_study.py) replaced it; its plan, setup, sampling and scoring live on in
benchmarks/quality/study_core.py, which this file now imports. It is kept so that those results keep the
code that made them, and archive/study_report.py still renders their report.md from their results.json
(tests/integration/test_study_smoke.py checks that for quality_fashionmnist). Nothing else here is
tested or kept in step with the library; for new measurements use ctf_study.py.

Quality study (issue 5): CTF against the plain AR baseline, side by side, on data a CPU can train on.

    .venv/bin/python benchmarks/quality/archive/study.py [--data fashion-mnist|twemoji|default] [--small]
        [--out WORK_DIR] [--results DIR] [--tokenizer RUN_DIR] [--threads 1] [--steps N] ...

What it measures (every number from runs made here; see study_report.py for the tables):
- convergence (paper Fig. 2): baseline, stage 1 and stage 2 share backbone preset, batch, schedule and
  tokenizer; training stops at several steps of the SAME schedule (train(stop_at=k, resume=True)), and
  at each point both generators are sampled and scored (FD/KID/precision/recall on EfficientNet-Lite0
  features, data-set classifier accuracy + IS-like score, held-out token NLL/accuracy);
- Table 3 at this scale: number of clusters, k-means vs random vs balanced clusters, stage-2 size,
  CFG, stage-1 / stage-2 temperature, stage-2 top-k, restricted vs full stage-2 head (sampling-only
  ablations reuse the trained models, stage-2 knobs even reuse the stage-1 samples);
- the redundancy check of Fig. 1b (k-means vs random clusters).
Resumable: finished runs, samples and scores are kept in WORK_DIR and results.json and reused.
Phases run in priority order and the report is re-rendered after each, so a cut-off run still leaves
committable partial results.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # archive/study_report.py, and benchmarks/quality/study_core.py
import study_report  # noqa: E402  (the first study's tables and plots)
from study_core import AR_OPTS, CTF_OPTS, Plan, Study, log, sample_grid  # noqa: E402

from coarse2fine.config import TrainConfig, train_recipe  # noqa: E402
from coarse2fine.fileio import load_json  # noqa: E402
from coarse2fine.stages import stage_spec  # noqa: E402
from coarse2fine.tokenizer.clustering import default_num_coarse  # noqa: E402

ROOT = HERE.parents[2]


class FirstStudy(Study):
    """The first study: one seed, runs named by stage and map, trained with `train_to`."""

    def render(self) -> None:
        study_report.render(self.db, self.res)

    # ---- training ----------------------------------------------------------------------------------------
    def run_name(self, stage: str, mapname: str | None, preset: str | None = None, restricted: bool = False) -> str:
        name = f"{stage}_{mapname}" if stage_spec(stage).needs_coarse_map else stage
        if preset and preset != self.plan.preset:
            name += f"_{preset}"
        return name + ("_restricted" if restricted else "")

    def train_to(self, stage: str, step: int, mapname: str | None = None, map_path: Path | None = None,
                 preset: str | None = None, restricted: bool = False) -> str:
        from coarse2fine.stages import stage_config
        from coarse2fine.training.gpt import train

        p = self.plan
        name = self.run_name(stage, mapname, preset, restricted)
        run = self.work / "runs" / name
        done = load_json(run / "summary.json").get("step", 0) if (run / "summary.json").exists() else 0
        if done >= step:
            return name
        c = int(mapname.split("-")[1]) if mapname else 1
        mcfg = stage_config(preset or p.preset, stage, self.meta["codebook_size"], c, self.meta["num_classes"],
                            self.meta["grid"])
        tcfg = TrainConfig(**{**train_recipe(preset or p.preset, p.steps), "batch_size": p.batch, "lr": p.lr,
                              "seed": p.seed, "log_every": max(1, p.steps // 10), "ckpt_every": p.steps,
                              "ema_decay": 0.0})
        log(f"train {name}: step {done} -> {step} of {p.steps}")
        summ = train(stage, mcfg, tcfg, self.work / "codes_train", run, coarse_map=map_path,
                     heldout_dir=self.work / "codes_test", restricted=restricted,
                     resume=(run / "state.pt").exists(), progress=False, stop_at=step)
        r = self.db["runs"].setdefault(name, {"train_s": 0.0, "params": summ["params"]})
        r["train_s"] += summ["wall_s"]
        r.setdefault("heldout", {})[str(step)] = summ["heldout"]
        r["loss"] = summ["loss"]
        log(f"  {name}@{step}: loss {summ['loss']:.3f}, held-out NLL {summ['heldout']['nll']:.3f} "
            f"acc {summ['heldout']['acc']:.3f} ({summ['wall_s']:.0f} s)")
        self.save()
        return name


def _with(opts: dict, stage: str, **kw) -> dict:
    o = json.loads(json.dumps(opts))
    o.setdefault(stage, {}).update(kw)
    return o


def run_study(st: FirstStudy, phases: list[str]) -> None:
    p = st.plan
    st.setup()
    km, km_path = st.cmap("kmeans", 32)
    if "convergence" in phases:
        for k in p.checkpoints:
            log(f"== convergence checkpoint {k}/{p.steps}")
            co = st.train_to("coarse", k, km, km_path)
            fi = st.train_to("fine", k, km, km_path)
            ba = st.train_to("baseline", k)
            last = k == p.checkpoints[-1]
            st.score(f"conv/ctf/{k}", "ctf", (co, fi), p.n_head, CTF_OPTS, keep="ctf" if last else None)
            st.score(f"conv/baseline/{k}", "ar", (ba,), p.n_head, AR_OPTS, keep="baseline" if last else None)
        if p.checkpoints[-1] in {int(k.split("/")[-1]) for k in st.db["entries"] if k.startswith("conv/ctf/")}:
            sample_grid(st)
    if "redundancy" in phases and "redundancy" not in st.db["setup"]:
        redundancy(st)
    final = p.steps
    if "head" in phases:
        log("== restricted stage-2 head")
        co = st.train_to("coarse", final, km, km_path)
        fr = st.train_to("fine", final, km, km_path, restricted=True)
        st.score("abl/head/restricted", "ctf", (co, fr), p.n_abl, CTF_OPTS)
    # random clusters first: the paper's sharpest clustering claim; then the cheap sampling rows
    maps_todo = [("random", 32)] + [("kmeans", d) for d in p.divisors if d != 32] + [("balanced", 32)]
    for i, (method, d) in enumerate(maps_todo):
        if "clusters" in phases:
            if i == 0:
                log("== clustering ablations (new stage-1 + stage-2 models per coarse map)")
            name, path = st.cmap(method, d)
            co, fi = st.train_to("coarse", final, name, path), st.train_to("fine", final, name, path)
            st.score(f"abl/map/{name}", "ctf", (co, fi), p.n_abl, CTF_OPTS)
        if i == 0 and "sampling" in phases:
            sampling_rows(st, km, km_path)
    if "s2size" in phases:
        log(f"== larger stage-2 model ({p.big_preset})")
        co = st.train_to("coarse", final, km, km_path)
        fb = st.train_to("fine", final, km, km_path, preset=p.big_preset)
        st.score(f"abl/s2size/{p.big_preset}", "ctf", (co, fb), p.n_abl, CTF_OPTS)
    st.save()


def sampling_rows(st: FirstStudy, km: str, km_path: Path) -> None:
    """Sampling-knob ablations (Table 3c-f) and the baseline's own sweep, on the final models."""
    p, final = st.plan, st.plan.steps
    log("== sampling ablations on the final models")
    co, fi, ba = (st.train_to("coarse", final, km, km_path), st.train_to("fine", final, km, km_path),
                  st.train_to("baseline", final))
    st.score("abl/default", "ctf", (co, fi), p.n_abl, CTF_OPTS, coarse_key="default")
    for v in (1.5, 3.0):
        st.score(f"abl/cfg/{v}", "ctf", (co, fi), p.n_abl, _with(CTF_OPTS, "s1", cfg_scale=v))
    for v in (0.9, 1.0):
        st.score(f"abl/t1/{v}", "ctf", (co, fi), p.n_abl, _with(CTF_OPTS, "s1", temperature=v))
    for v in (0.9, 1.0):
        st.score(f"abl/t2/{v}", "ctf", (co, fi), p.n_abl, _with(CTF_OPTS, "s2", temperature=v), coarse_key="default")
    for v in (1, 32):
        st.score(f"abl/topk/{v}", "ctf", (co, fi), p.n_abl, _with(CTF_OPTS, "s2", top_k=v), coarse_key="default")
    for v in (1.5, 2.0, 3.0):
        st.score(f"abl/base_cfg/{v}", "ar", (ba,), p.n_abl, _with(AR_OPTS, "s1", cfg_scale=v))
    st.score("abl/base_t/1.1", "ar", (ba,), p.n_abl, _with(AR_OPTS, "s1", temperature=1.1))


def redundancy(st: FirstStudy) -> None:
    from coarse2fine.eval.analysis import figure, redundancy as measure
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.tokenizer.clustering import CoarseMap

    maps = {}
    for d in st.plan.divisors:
        for method in ("kmeans", "random"):
            name, path = st.cmap(method, d)
            maps[name] = CoarseMap.load(path)
    g = torch.Generator().manual_seed(st.plan.seed)
    idx = torch.randperm(len(st.test_ds), generator=g)[:st.plan.redundancy_n].tolist()
    images = torch.stack([st.test_ds[i][0] for i in idx])
    stats, rows = measure(st.vq, images, maps, st.plan.seed)
    c = default_num_coarse(st.vq.cfg.codebook_size)
    show = {k: v for k, v in rows.items() if k in ("original", "reconstruction", f"kmeans-{c}", f"random-{c}")}
    save_grid(figure(show, 10), st.res / "redundancy.png", nrow=10)
    st.db["setup"]["redundancy"] = {"n": len(idx), **stats}
    st.save()


PHASES = ["convergence", "redundancy", "head", "clusters", "sampling", "s2size"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist", help="fashion-mnist | twemoji | default (embedded subset)")
    ap.add_argument("--small", action="store_true", help="a few-minute smoke run (nothing meaningful expected)")
    ap.add_argument("--out", help="work dir for runs (default /tmp/c2f_study_<data>[_small])")
    ap.add_argument("--results", help="results dir (default benchmarks/results/quality_<data>[_small])")
    ap.add_argument("--tokenizer", help="reuse this tokenizer run dir instead of training one")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    ap.add_argument("--steps", type=int, help="override the training schedule length (checkpoints scale with it)")
    ap.add_argument("--vq-steps", type=int, help="override the tokenizer's steps")
    ap.add_argument("--n-head", type=int, help="override images per convergence/headline evaluation")
    ap.add_argument("--n-abl", type=int, help="override images per ablation row")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma list, in this order: {','.join(PHASES)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = Plan.for_data(args.data, args.small)
    if args.steps:
        plan.checkpoints = sorted({max(1, round(c * args.steps / plan.steps)) for c in plan.checkpoints})
        plan.steps = args.steps
    plan.vq_steps = args.vq_steps or plan.vq_steps
    plan.n_head = args.n_head or plan.n_head
    plan.n_abl = args.n_abl or plan.n_abl
    tag = f"{args.data.replace('-', '')}{'_small' if args.small else ''}"
    work = Path(args.out or f"/tmp/c2f_study_{tag}")
    results = Path(args.results or ROOT / "benchmarks" / "results" / f"quality_{tag}")
    phases = [x for x in PHASES if x in args.phases.split(",")]
    cmd = ".venv/bin/python benchmarks/quality/archive/study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    st = FirstStudy(plan, work, results, Path(args.tokenizer) if args.tokenizer else None, cmd)
    log(f"plan: {asdict(plan)}\nwork {work}, results {results}, threads {torch.get_num_threads()}")
    run_study(st, phases)
    log(f"done in {(time.time() - st.t0) / 60:.1f} min; report {results / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
