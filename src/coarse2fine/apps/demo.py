"""`coarse2fine demo`: the whole CTF pipeline on the embedded data, on a CPU, in minutes.

tokenizer -> codes (train with flips, held-out test) -> k-means coarse map -> coarse, fine and
baseline models -> samples of every class from CTF and from the baseline side by side -> report.md.
Every step writes a normal run directory, so each can be inspected or reused with the other commands.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coarse2fine.config import TrainConfig, UserError
from coarse2fine.fileio import atomic_write_bytes


@dataclass
class DemoPlan:
    data: str = "default"
    resolution: int = 32
    vq_preset: str = "VQ-tiny"
    vq_steps: int = 1200
    vq_batch: int = 32
    gpt_preset: str = "GPT-small"
    steps: int = 400
    batch_size: int = 64
    lr: float = 4e-3  # per global batch 256, i.e. 1e-3 at batch 64
    clusters: int = 0  # 0: K / 32 as the paper
    head: str = "restricted"  # stage-2 head: "restricted" (measured better) or "full" (the paper's)
    per_class: int = 6
    limit_per_class: int | None = None
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoPlan":
        """A smoke-test size: seconds per stage, nothing recognisable expected."""
        return cls(vq_steps=30, vq_batch=32, gpt_preset="GPT-tiny", steps=12, batch_size=16, per_class=2,
                   limit_per_class=40)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def side_by_side(ctf: np.ndarray, base: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """Rows = classes: per_class CTF images, a white spacer, per_class baseline images.
    Returns uint8 [classes * (2 * per_class + 1), H, W, 3] for save_grid(nrow=2 * per_class + 1)."""
    white = np.full_like(ctf[:1], 255)
    rows = []
    for c in np.unique(labels):
        rows += [ctf[labels == c], white, base[labels == c]]
    return np.concatenate(rows)


def run_demo(out: str | Path, plan: DemoPlan, progress: bool = True) -> dict:
    from coarse2fine.data import build_dataset
    from coarse2fine.data.codes import extract_codes
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.stages import STAGE_SPECS, stage_config
    from coarse2fine.pipeline import ARPipeline, CTFPipeline, save_samples
    from coarse2fine.sampling import StageSampling
    from coarse2fine.tokenizer.clustering import cluster_codebook, default_num_coarse
    from coarse2fine.tokenizer.vq import codebook_fingerprint
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.training.loop import train
    from coarse2fine.training.tokenizer import evaluate_reconstruction, train_tokenizer

    out = Path(out)
    if (out / "report.md").exists():
        raise UserError(f"{out} already holds a finished demo; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    report: dict = {"plan": plan.__dict__}
    t_all = time.time()

    # 1. tokenizer
    t = time.time()
    train_ds = build_dataset(plan.data, plan.resolution, "train", limit_per_class=plan.limit_per_class)
    test_ds = build_dataset(plan.data, plan.resolution, "test", limit_per_class=plan.limit_per_class)
    _log(f"data {plan.data}: {len(train_ds)} train / {len(test_ds)} test images, {train_ds.num_classes} classes")
    tok_dir = out / "tokenizer"
    _log(f"1/6 training the tokenizer ({plan.vq_preset}, {plan.vq_steps} steps)")
    train_tokenizer(plan.vq_preset, tok_dir, train_ds, steps=plan.vq_steps, batch_size=plan.vq_batch,
                    seed=plan.seed, progress=progress, resume=(tok_dir / "state.pt").exists())
    vq = load_vq(tok_dir)
    rec = evaluate_reconstruction(vq, test_ds)
    report["tokenizer"] = {"psnr_test_db": rec["psnr"], "usage_test": rec["usage"], "K": vq.cfg.codebook_size}
    times["tokenizer"] = time.time() - t
    _log(f"tokenizer: test PSNR {rec['psnr']:.2f} dB, codebook usage {100 * rec['usage']:.1f}%")

    # 2. codes
    t = time.time()
    _log("2/6 extracting codes (train with flips, test without)")
    extract_codes(tok_dir, train_ds, out / "codes_train", flip=True, progress=progress)
    extract_codes(tok_dir, test_ds, out / "codes_test", flip=False, progress=progress)
    times["codes"] = time.time() - t

    # 3. clusters
    t = time.time()
    c = plan.clusters or default_num_coarse(vq.cfg.codebook_size)
    cmap = cluster_codebook(vq.codebook_normalized(), c, "kmeans", plan.seed, codebook_fingerprint(vq))
    cmap.save(out / "coarse_map.safetensors")
    report["clusters"] = cmap.stats()
    times["cluster"] = time.time() - t
    _log(f"3/6 k-means: {vq.cfg.codebook_size} codes -> {c} clusters (sizes {cmap.stats()['min_size']}.."
         f"{cmap.stats()['max_size']})")

    # 4. the three models, same backbone, batch and steps
    from coarse2fine.data.codes import CodeStore

    meta = CodeStore(out / "codes_train").meta
    tcfg = TrainConfig(steps=plan.steps, batch_size=plan.batch_size, lr=plan.lr, warmup_steps=max(1, plan.steps // 20),
                       schedule="cosine", seed=plan.seed, log_every=max(1, plan.steps // 10),
                       ckpt_every=plan.steps, ema_decay=0.0)
    report["models"] = {}
    for i, stage in enumerate(STAGE_SPECS):  # coarse, fine, baseline
        t = time.time()
        run = out / stage
        _log(f"4/6 ({i + 1}/3) training the {stage} model ({plan.gpt_preset}, {plan.steps} steps)")
        mcfg = stage_config(plan.gpt_preset, stage, meta["codebook_size"], c, meta["num_classes"], meta["grid"])
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
        else:
            summary = train(stage, mcfg, tcfg, out / "codes_train", run,
                            coarse_map=out / "coarse_map.safetensors" if STAGE_SPECS[stage].needs_coarse_map else None,
                            heldout_dir=out / "codes_test", resume=(run / "state.pt").exists(), progress=progress,
                            restricted=STAGE_SPECS[stage].restricted_head and plan.head == "restricted")
        report["models"][stage] = summary
        times[stage] = time.time() - t

    # 5. samples side by side
    t = time.time()
    _log("5/6 sampling every class from CTF and from the baseline")
    labels = torch.arange(meta["num_classes"]).repeat_interleave(plan.per_class)
    ctf = CTFPipeline.from_runs(out / "coarse", out / "fine")
    base = ARPipeline.from_runs(out / "baseline")
    o_ctf = ctf(labels, seed=plan.seed)
    o_base = base(labels, StageSampling(temperature=1.0, cfg_scale=2.0), seed=plan.seed)
    grid = side_by_side(o_ctf.images.numpy(), o_base.images.numpy(), labels.numpy(), plan.per_class)
    save_grid(grid, out / "samples_ctf_vs_baseline.png", nrow=2 * plan.per_class + 1)
    for name, o in (("ctf", o_ctf), ("baseline", o_base)):
        save_samples(o.images, o.labels, out / f"samples_{name}", nrow=plan.per_class)
    report["sampling"] = {"ctf": o_ctf.timings, "baseline": o_base.timings, "images": len(labels)}
    times["sample"] = time.time() - t
    times["total"] = time.time() - t_all
    report["times_s"] = times
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=1, default=str) + "\n").encode())
    atomic_write_bytes(out / "report.md", render_report(report, train_ds.classes).encode())
    _log(f"6/6 done in {times['total'] / 60:.1f} min: {out / 'samples_ctf_vs_baseline.png'}, {out / 'report.md'}")
    return report


def render_report(r: dict, classes: list[str]) -> str:
    p, tok, m, t = r["plan"], r["tokenizer"], r["models"], r["times_s"]
    lines = [
        "# coarse2fine demo report", "",
        f"Data `{p['data']}` at {p['resolution']} px, {len(classes)} classes. Tokenizer {p['vq_preset']} "
        f"({p['vq_steps']} steps), models {p['gpt_preset']} ({p['steps']} steps, batch {p['batch_size']}), "
        f"stage-2 head {p.get('head', 'full')}.", "",
        "## Tokenizer", "",
        f"- test PSNR {tok['psnr_test_db']:.2f} dB, codebook usage {100 * tok['usage_test']:.1f}% of K={tok['K']}",
        f"- k-means: {r['clusters']['codes']} codes -> {r['clusters']['clusters']} clusters, sizes "
        f"{r['clusters']['min_size']}..{r['clusters']['max_size']} (mean {r['clusters']['mean_size']:.1f})", "",
        "## Models (same backbone, batch and steps)", "",
        "| model | params | final train loss | train acc | held-out NLL | held-out acc | tokens/s | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"coarse": "stage 1 (coarse, causal)", "fine": "stage 2 (fine | true coarse, one step)",
             "baseline": "baseline (fine, causal)"}
    for stage, s in m.items():
        h = s.get("heldout", {})
        lines.append(f"| {names[stage]} | {s['params'] / 1e6:.2f}M | {s['loss']:.3f} | {s['acc']:.3f} | "
                     f"{h.get('nll', float('nan')):.3f} | {h.get('acc', float('nan')):.3f} | "
                     f"{s['tokens_per_s']:.0f} | {t[stage]:.0f} s |")
    fine_acc, base_acc = m["fine"].get("heldout", {}).get("acc"), m["baseline"].get("heldout", {}).get("acc")
    lines += ["", f"Held-out fine-token accuracy: stage 2 given the true coarse labels {fine_acc:.3f}; "
                  f"baseline (next-token) {base_acc:.3f}. Accuracies are per token on the test split's codes.", "",
              "## Sampling", ""]
    for name, tm in r["sampling"].items():
        if isinstance(tm, dict):
            tot = sum(tm.values())
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in tm.items())
                         + f" -> {r['sampling']['images'] / tot:.1f} images/s (batch {r['sampling']['images']}, CPU)")
    lines += ["", "![CTF (left) vs baseline (right)](samples_ctf_vs_baseline.png)", "",
              "Rows: " + ", ".join(f"{i} {c}" for i, c in enumerate(classes)) + ". Left block CTF, right block baseline.",
              "", "## Wall time", "", ", ".join(f"{k} {v:.0f} s" for k, v in t.items()), ""]
    return "\n".join(lines)
