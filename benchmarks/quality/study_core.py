"""The shared core of the quality studies (ctf_study.py and the studies built on it: codebook_study.py,
convergence_study.py): the study plan, setup (tokenizer, codes, classifier, coarse maps), sampling and
scoring, the sampling defaults in the results' spelling, and the side-by-side sample grid.

A `Study` keeps its results in one JSON file (`db_name` in the results dir) and its runs, codes and
samples in a work dir whose plan.json pins the plan: a second process on the same work dir must run the
same plan. Subclasses train (ctf_study.SeededStudy) and render their report (`render`).

The first study's driver, which these pieces were taken from, is kept as a record in archive/study.py.
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from coarse2fine.config import vq_config
from coarse2fine.fileio import dump_json, load_json


def _machine() -> str:
    """CPU model, cores and the ISA flags that decide the dtype (recorded with every result)."""
    from coarse2fine.bench.speed import machine_info

    m = machine_info()
    flags = m.get("cpu_flags", [])  # the same four flags, in this order, from precision.cpu_info
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


def short(metric: str) -> str:
    """"FD-EffNetLite0@64" -> "FD", "IS-clf" -> "IS", "ClassAcc-clf" -> "ClassAcc": the results' metric keys."""
    return metric.split("-")[0]


class Study(ABC):
    """Plan, work dir and results file of one study process; setup, coarse maps, sampling and scoring.
    Subclasses add training and `render` (the report, re-rendered on every save)."""

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
        self.render()

    @abstractmethod
    def render(self) -> None:
        """Write the study's report from what is saved so far (each study has its own)."""

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
        metrics = {short(r["metric"]): r["value"] for r in ev["rows"]}
        self.db.setdefault("metric_names", {short(r["metric"]): r["metric"] for r in ev["rows"]})
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


def _last_step(run: Path) -> int:
    m = run / "metrics.jsonl"
    lines = m.read_text().splitlines() if m.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0



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
