"""Quality study (issue 5): CTF against the plain AR baseline, side by side, on data a CPU can train on.

    .venv/bin/python benchmarks/quality/study.py [--data fashion-mnist|twemoji|default] [--small]
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_report  # noqa: E402  (sibling module: tables and plots)
from coarse2fine.stages import stage_spec  # noqa: E402

from coarse2fine.config import TrainConfig, train_recipe, vq_config  # noqa: E402
from coarse2fine.fileio import dump_json, load_json  # noqa: E402
from coarse2fine.tokenizer.clustering import default_num_coarse  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _machine() -> str:
    """CPU model, cores and the ISA flags that decide the dtype (recorded with every result)."""
    from coarse2fine.bench.speed import machine_info

    m = machine_info()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in info]
    return f"{m['cpu'] or 'CPU'}, {m['cpu_count']} cores, flags {' '.join(flags) or 'none of avx2/avx512'}, torch " + \
        torch.__version__.split("+")[0]


MACHINE = _machine()


@dataclass
class Plan:
    data: str = "fashion-mnist"
    resolution: int = 32
    limit_per_class: int | None = None  # training images per class (None: all)
    flip: bool = False  # mirrored copies of the training codes (useful only when epochs > 1)
    vq_steps: int = 500
    vq_batch: int = 32
    vq_lr: float = 2e-3
    clf_epochs: int = 3
    clf_width: int = 24
    clf_limit: int | None = 1000  # classifier training images per class
    preset: str = "GPT-tiny"
    big_preset: str = "GPT-small"  # the larger stage-2 model of Table 3b
    steps: int = 300
    batch: int = 64
    lr: float = 4e-3  # per global batch 256 (LlamaGen convention), i.e. 1e-3 at batch 64
    checkpoints: list[int] = field(default_factory=lambda: [50, 100, 200, 300])
    n_head: int = 1000  # images per headline / convergence evaluation
    n_abl: int = 400  # images per ablation row
    ref_split: str = "test"
    ref_count: int | None = 5000
    divisors: list[int] = field(default_factory=lambda: [128, 32, 8])  # clusters = K / divisor
    redundancy_n: int = 256
    seed: int = 0

    @classmethod
    def for_data(cls, data: str, small: bool) -> "Plan":
        if data == "twemoji":
            p = cls(data=data, flip=True, vq_steps=400, clf_epochs=15, clf_limit=None, steps=300,
                    checkpoints=[50, 100, 200, 300], n_head=450, n_abl=270, ref_split="train",
                    ref_count=None, redundancy_n=180)
        elif data == "emoji64":  # 64 px colour: VQ-64-f8 tokenizers are passed in (--tokenizer), not trained here
            p = cls(data=data, resolution=64, flip=True, vq_steps=800, vq_batch=16, clf_epochs=12, clf_limit=None,
                    steps=600, checkpoints=[600], n_head=450, n_abl=270, ref_split="train", ref_count=None,
                    redundancy_n=180)
        else:
            p = cls(data=data)
        if small:
            p.limit_per_class, p.vq_steps, p.vq_batch, p.clf_epochs, p.clf_limit = 60, 40, 32, 1, 60
            p.steps, p.checkpoints, p.batch = 16, [8, 16], 16
            p.n_head, p.n_abl, p.ref_count, p.redundancy_n = 10 * 9 if data == "twemoji" else 100, 0, 500, 32
            p.n_abl = p.n_head
            if data == "twemoji":
                p.ref_count = None
        return p


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Study:
    def __init__(self, plan: Plan, work: Path, results: Path, tokenizer: Path | None, command: str,
                 db_name: str = "results.json"):
        self.plan, self.work, self.res = plan, work, results
        self.tok_dir = tokenizer or work / "tokenizer"
        self.work.mkdir(parents=True, exist_ok=True)
        self.res.mkdir(parents=True, exist_ok=True)
        self.db_path = self.res / db_name
        plan_d = json.loads(json.dumps(asdict(plan)))
        wplan = work / "plan.json"
        if wplan.exists() and json.loads(wplan.read_text()) != plan_d:
            raise SystemExit(f"{work} holds runs of another plan ({wplan}); use another --out or delete it")
        if not wplan.exists():  # atomic: a process started beside this one reads it
            from coarse2fine.fileio import dump_json

            dump_json(plan_d, wplan)
        self.db = json.loads(self.db_path.read_text()) if self.db_path.exists() else {}
        if self.db.get("plan") and self.db["plan"] != plan_d:
            log(f"{self.db_path} holds results of another plan: starting it afresh")
            self.db = {}
        self.db.setdefault("plan", asdict(plan))
        self.db.setdefault("entries", {})
        self.db.setdefault("runs", {})
        self.db.setdefault("setup", {})
        self.db.setdefault("invocations", [])
        self.db["invocations"].append({"command": command, "machine": MACHINE, "started": time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "threads": torch.get_num_threads(), "wall_s": 0.0,
            "cpu_s": 0.0})
        self.t0, self.c0 = time.time(), time.process_time()

    # ---- bookkeeping -------------------------------------------------------------------------------
    def save(self) -> None:
        inv = self.db["invocations"][-1]
        inv["wall_s"], inv["cpu_s"] = time.time() - self.t0, time.process_time() - self.c0
        dump_json(self.db, self.db_path)
        study_report.render(self.db, self.res)

    # ---- setup: tokenizer, codes, classifier, coarse maps ----------------------------------------------
    def setup(self) -> None:
        from coarse2fine.data import build_dataset
        from coarse2fine.data.codes import CodeStore, extract_codes
        from coarse2fine.eval.classifier import train_classifier
        from coarse2fine.checkpoint import load_vq
        from coarse2fine.training.tokenizer import evaluate_reconstruction, train_tokenizer

        p, s = self.plan, self.db["setup"]
        self.train_ds = build_dataset(p.data, p.resolution, "train", limit_per_class=p.limit_per_class)
        self.test_ds = build_dataset(p.data, p.resolution, "test",
                                     limit_per_class=p.limit_per_class and max(4, p.limit_per_class // 6))
        if not (self.tok_dir / "model.safetensors").exists() or (self.tok_dir / "state.pt").exists() and \
                load_json(self.tok_dir / "config.json")["train"]["steps"] > _last_step(self.tok_dir):
            t = time.time()
            log(f"tokenizer: {p.vq_steps} steps on {len(self.train_ds)} images")
            train_tokenizer(vq_config("VQ-tiny"), self.tok_dir, self.train_ds, steps=p.vq_steps,
                            batch_size=p.vq_batch, lr=p.vq_lr, dtype="bf16", seed=p.seed, progress=False,
                            resume=(self.tok_dir / "state.pt").exists())
            s["tokenizer_train_s"] = time.time() - t
        self.vq = load_vq(self.tok_dir)
        if "tokenizer" not in s:
            rec = evaluate_reconstruction(self.vq, self.test_ds)
            s["tokenizer"] = {"dir": str(self.tok_dir), "psnr_test_db": rec["psnr"], "usage_test": rec["usage"],
                              "K": self.vq.cfg.codebook_size, "steps": load_json(self.tok_dir / "config.json")
                              ["train"]["steps"], "vq": load_json(self.tok_dir / "config.json")["vq"]}
            log(f"tokenizer: test PSNR {rec['psnr']:.2f} dB, usage {100 * rec['usage']:.1f}%")
        t = time.time()
        for name, ds, flip in (("codes_train", self.train_ds, p.flip), ("codes_test", self.test_ds, False)):
            if not (self.work / name / "meta.json").exists():
                log(f"extracting {name} ({len(ds)} images, flip={flip})")
                extract_codes(self.tok_dir, ds, self.work / name, flip=flip, progress=False)
        s.setdefault("codes_s", time.time() - t)
        self.meta = CodeStore(self.work / "codes_train").meta
        clf = self.work / "classifier"
        if not (clf / "config.json").exists():
            log("training the evaluation classifier")
            train_classifier(p.data, p.resolution, clf, epochs=p.clf_epochs, width=p.clf_width, seed=p.seed,
                             limit_per_class=p.clf_limit, log=lambda m: log("  " + m.strip()))
        c = load_json(clf / "config.json")
        s["classifier"] = {"accuracy": c["test"]["accuracy"], "is_real": c["test"]["inception_score"],
                           "split": c["test"]["split"], "count": c["test"]["count"],
                           "train_count": c["data"]["train_count"], "epochs": c["train"]["epochs"]}
        s["data"] = {"train": len(self.train_ds), "test": len(self.test_ds), "classes": self.train_ds.classes,
                     "train_codes": self.meta["count"]}
        self.save()

    def cmap(self, method: str, divisor: int) -> tuple[str, Path]:
        from coarse2fine.tokenizer.clustering import cluster_codebook
        from coarse2fine.tokenizer.vq import codebook_fingerprint

        c = self.vq.cfg.codebook_size // divisor
        name = f"{method}-{c}"
        path = self.work / "maps" / f"{name}.safetensors"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            t = time.time()
            cm = cluster_codebook(self.vq.codebook_normalized(), c, method, self.plan.seed,
                                  codebook_fingerprint(self.vq))
            cm.save(path)
            self.db["setup"].setdefault("maps", {})[name] = {**cm.stats(), "seconds": time.time() - t}
        return name, path

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

    # ---- sampling + scoring --------------------------------------------------------------------------------
    def labels(self, n: int) -> torch.Tensor:
        nc = self.meta["num_classes"]
        return torch.arange(nc).repeat(max(1, n // nc))  # class-balanced, classes interleaved

    def sample(self, kind: str, runs: tuple[str, ...], n: int, opts: dict, coarse_key: str | None = None):
        """Generate n images. kind "ctf": runs (coarse, fine); "ar": (baseline,). opts: StageSampling
        fields for s1 (stage 1 / baseline) and s2. Returns (uint8 [n,H,W,3], labels [n], seconds)."""
        from coarse2fine.pipeline import ARPipeline, CTFPipeline
        from coarse2fine.data.sample_folder import decode_images
        from coarse2fine.sampling import StageSampling, generate_ar, generate_fine

        s1, s2 = StageSampling(**opts.get("s1", {})), StageSampling(**opts.get("s2", {}))
        labels = self.labels(n)
        run = [self.work / "runs" / r for r in runs]
        pipe = CTFPipeline.from_runs(*run) if kind == "ctf" else ARPipeline.from_runs(*run)
        # stage-2 ablations reuse the stage-1 samples of the default row (kept on disk for restarts)
        cache = self.work / f"coarse_{coarse_key}.pt" if coarse_key else None
        cached = torch.load(cache) if cache is not None and cache.exists() else None
        t = time.time()
        codes, coarse_all = [], []
        for i, lo in enumerate(range(0, len(labels), 250)):  # batches bound stage 2's [B, N, K] logits
            lab = labels[lo:lo + 250]
            g1 = torch.Generator().manual_seed(self.plan.seed * 1000 + i)  # same noise for every row
            g2 = torch.Generator().manual_seed(self.plan.seed * 1000 + i + 500)
            if kind == "ar":
                codes.append(generate_ar(pipe.model, lab, s1, g1))
                continue
            co = cached[lo:lo + 250] if cached is not None else generate_ar(pipe.coarse_model, lab, s1, g1)
            coarse_all.append(co)
            codes.append(generate_fine(pipe.fine_model, co, lab, s2, g2, pipe.members if pipe.restricted else None))
        if cache is not None and cached is None:
            torch.save(torch.cat(coarse_all), cache)
        images = decode_images(pipe.vq, torch.cat(codes))
        return images.numpy(), labels.numpy(), time.time() - t

    def score(self, key: str, kind: str, runs: tuple[str, ...], n: int, opts: dict, coarse_key: str | None = None,
              keep: str | None = None) -> dict:
        """Sample + evaluate once per key (results.json caches it)."""
        from coarse2fine.eval.samples import evaluate_images

        if key in self.db["entries"]:
            return self.db["entries"][key]
        images, labels, secs = self.sample(kind, runs, n, opts, coarse_key)
        if keep:
            np.savez_compressed(self.work / f"samples_{keep}.npz", arr_0=images, labels=labels)
        ev = evaluate_images(images, labels, self.plan.data, self.plan.ref_split,
                             self.work / "classifier", ref_count=self.plan.ref_count, batch_size=64,
                             kid_subset_size=min(1000, n), cache_dir=self.work / "feature_cache",
                             log=lambda m: None)
        metrics = {study_report.short(r["metric"]): r["value"] for r in ev["rows"]}
        self.db.setdefault("metric_names", {study_report.short(r["metric"]): r["metric"] for r in ev["rows"]})
        e = {"kind": kind, "runs": list(runs), "n": n, "opts": opts, "sample_s": secs, "metrics": metrics,
             "ref": ev["reference"]["count"]}
        self.db["entries"][key] = e
        log(f"  {key}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + f" (sampling {secs:.0f} s)")
        self.save()
        return e


def _knobs(s) -> dict:
    """A StageSampling as the results record it: its temperature and the knobs it sets off their neutral value."""
    from dataclasses import fields

    from coarse2fine.sampling import StageSampling

    off = StageSampling()
    return {"temperature": s.temperature, **{f.name: getattr(s, f.name) for f in fields(s)
                                             if f.name != "temperature" and getattr(s, f.name) != getattr(off, f.name)}}


def _defaults():
    from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT

    return ({"s1": _knobs(CTF_COARSE_DEFAULT), "s2": _knobs(CTF_FINE_DEFAULT)},  # paper Sec. 5.1
            {"s1": _knobs(BASELINE_DEFAULT)})  # LlamaGen's sampling defaults


CTF_OPTS, AR_OPTS = _defaults()  # the library's sampling defaults (sampling.py), in the results' spelling


def _with(opts: dict, stage: str, **kw) -> dict:
    o = json.loads(json.dumps(opts))
    o.setdefault(stage, {}).update(kw)
    return o


def _last_step(run: Path) -> int:
    m = run / "metrics.jsonl"
    lines = m.read_text().splitlines() if m.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def run_study(st: Study, phases: list[str]) -> None:
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


def sampling_rows(st: Study, km: str, km_path: Path) -> None:
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


def sample_grid(st: Study, per_class: int = 8, suffix: str = "") -> None:
    """Rows = classes: CTF samples | white | baseline samples, from the kept samples_{ctf,baseline}{suffix}.npz
    (the final convergence point); as many per class as every class has, up to per_class."""
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.apps.demo import side_by_side

    f = {k: st.work / f"samples_{k}{suffix}.npz" for k in ("ctf", "baseline")}
    if not all(v.exists() for v in f.values()):
        return
    z = {k: np.load(v) for k, v in f.items()}
    lab = z["ctf"]["labels"]
    n = min(per_class, min(int((lab == c).sum()) for c in np.unique(lab)))
    take = np.concatenate([np.flatnonzero(lab == c)[:n] for c in np.unique(lab)])
    rows = side_by_side(z["ctf"]["arr_0"][take], z["baseline"]["arr_0"][take], lab[take], n)
    save_grid(rows, st.res / "samples_ctf_vs_baseline.png", nrow=2 * n + 1)


def redundancy(st: Study) -> None:
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
    cmd = ".venv/bin/python benchmarks/quality/study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    st = Study(plan, work, results, Path(args.tokenizer) if args.tokenizer else None, cmd)
    log(f"plan: {asdict(plan)}\nwork {work}, results {results}, threads {torch.get_num_threads()}")
    run_study(st, phases)
    log(f"done in {(time.time() - st.t0) / 60:.1f} min; report {results / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
