"""report.md and plots of codebook_study.py: the CTF - baseline gap as a function of the codebook size K."""
from __future__ import annotations

import json
from pathlib import Path

import ctf_study_report as csr

from coarse2fine.tokenizer.clustering import default_num_coarse

KS = (1024, 4096, 16384)
GAPS = (("FD", True), ("KID", True), ("ClassAcc", False), ("NLL", True))  # (metric, lower is better)


def _load(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.exists() else None


def per_k(res: Path, k: int) -> dict | None:
    """Everything measured at codebook size k: per-seed metrics of both pipelines and their gaps."""
    d = res / f"K{k}"
    if not d.exists():
        return None
    db = csr.merge(d)
    if not db["plan"]:
        return None
    step, km = db["plan"]["steps"], f"kmeans-{default_num_coarse(k)}"
    seeds = sorted({r["seed"] for n, r in db["runs"].items() if n.startswith("baseline")})
    out = {"K": k, "C": default_num_coarse(k), "steps": step, "seeds": [], "rows": {}, "setup": db["setup"],
           "redundancy": _load(d / "redundancy.json"), "tokenizer": _load(d / "tokenizer.json"), "members": {}}
    for s in seeds:
        row = {}
        for kind in ("ctf", "baseline"):
            m = {name: csr.metric(db, kind, step, s, name) for name in ("FD", "KID", "ClassAcc", "IS", "Precision",
                                                                         "Recall")}
            m["NLL"] = csr.nll(db, kind, step, s, km)
            m["train_cpu_s"] = csr.compute(db, kind, step, s, km, "cpu_s")
            row[kind] = m
        if all(row[kind]["FD"] is not None for kind in row):
            out["seeds"].append(s)
            out["rows"][s] = row
    for how in ("random-member", "centroid-member"):
        e = db["entries"].get(f"peer/{how}/s0")
        if e:
            out["members"][how] = e["metrics"]
    return out


def gap(r: dict, metric: str) -> tuple[float, float, int]:
    """CTF minus baseline, mean and sample std over the seeds."""
    vals = [r["rows"][s]["ctf"][metric] - r["rows"][s]["baseline"][metric] for s in r["seeds"]
            if r["rows"][s]["ctf"][metric] is not None and r["rows"][s]["baseline"][metric] is not None]
    return csr._ms(vals)


def both(r: dict, kind: str, metric: str) -> str:
    return csr._pm(*csr._ms([r["rows"][s][kind][metric] for s in r["seeds"]]), metric)


def render(res: Path, work: Path | None = None) -> None:
    """work: the study's work dir; the tokenizers' results found there are copied in as K<k>/tokenizer.json."""
    for k in KS:
        src = work / "tokenizers" / f"results_l2_K{k}_s0.json" if work else None
        if src is not None and src.exists() and (res / f"K{k}").exists():
            (res / f"K{k}" / "tokenizer.json").write_text(src.read_text())
    rs = [r for r in (per_k(res, k) for k in KS) if r]
    speed = _load(res / "speed.json")
    cost = _load(res / "cost16.json")
    L = ["# CTF's gain against the codebook size K (issue 23): emoji64, 64 px, 8x8 codes", ""]
    if not rs:
        (res / "report.md").write_text("\n".join(L + ["No results yet."]) + "\n")
        return
    steps = rs[0]["steps"]
    L += [f"At each K: a VQ-64-f8 tokenizer (L2 recipe, 800 steps, batch 16, seed 0), C = K/32 k-means clusters, "
          f"GPT-tiny baseline / stage 1 / stage 2 trained {steps} steps (batch 64, lr 1e-3, cosine, 5% warm-up), "
          "450 class-balanced samples per score with the library's sampling defaults (CTF τ 1.1/1.1, CFG 2.0; "
          "baseline τ 1.0, CFG 2.0). FD/KID: EfficientNet-Lite0 at 64 px against the 5,145 training images "
          "(**not FID**: compare rows only); ClassAcc: an emoji64 classifier (test accuracy "
          f"{rs[0]['setup'].get('classifier', {}).get('accuracy', float('nan')):.3f}, chance 0.111); NLL: held-out "
          "nats per token on the 573 test images (CTF: stage 1 + stage 2, the exact joint NLL). Commands: "
          "`benchmarks/quality/codebook_study.py` (its docstring); per-K study reports in `K<k>/report.md`.", ""]
    L += ["## Tokenizers and the redundancy curve (paper Fig. 1(b))", "",
          "Swap PSNR: every code of 180 test images replaced by a random member of its cluster, decoded, PSNR "
          "against the plain reconstruction (higher: the swap changes the image less).", "",
          "| K | test PSNR dB | test usage | swap PSNR, k-means K/128 | K/32 | K/8 | random K/32 | tokenizer CPU-min |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rs:
        t, red = r["tokenizer"] or {}, (r["redundancy"] or {}).get("stats", {})
        k = r["K"]

        def sw(name):
            v = red.get(name, {}).get("psnr_vs_reconstruction")
            return f"{v:.2f}" if v is not None else "-"
        L.append(f"| {k} | {t.get('psnr_test_db', float('nan')):.2f} | {t.get('usage_test', float('nan')):.3f} | "
                 f"{sw(f'kmeans-{k // 128}')} | {sw(f'kmeans-{default_num_coarse(k)}')} | {sw(f'kmeans-{k // 8}')} | "
                 f"{sw(f'random-{default_num_coarse(k)}')} | {t.get('train_cpu_min', float('nan')):.1f} |")
    L += ["", "## The gap, CTF minus baseline, at each K (mean ± std over the seeds)", "",
          "| K | C | seeds | FD base | FD CTF | Δ FD ↓ | ClassAcc base | ClassAcc CTF | Δ ClassAcc ↑ | KID base | "
          "KID CTF | NLL base | NLL CTF | Δ NLL ↓ | train CPU-s base | train CPU-s CTF |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        if not r["seeds"]:
            continue
        g = {m: csr._pm(*gap(r, m), m) for m, _ in GAPS}
        m, sd, n = gap(r, "FD")  # FD differences in whole units
        g["FD"] = f"{m:.0f}" + (f" ± {sd:.0f}" if n > 1 else "")
        L.append(f"| {r['K']} | {r['C']} | {','.join(map(str, r['seeds']))} | {both(r, 'baseline', 'FD')} | "
                 f"{both(r, 'ctf', 'FD')} | {g['FD']} | {both(r, 'baseline', 'ClassAcc')} | {both(r, 'ctf', 'ClassAcc')} | "
                 f"{g['ClassAcc']} | {both(r, 'baseline', 'KID')} | {both(r, 'ctf', 'KID')} | {both(r, 'baseline', 'NLL')} | "
                 f"{both(r, 'ctf', 'NLL')} | {g['NLL']} | {both(r, 'baseline', 'train_cpu_s')} | "
                 f"{both(r, 'ctf', 'train_cpu_s')} |")
    L += ["", "Per seed (FD, ClassAcc; baseline → CTF):", ""]
    for r in rs:
        for s in r["seeds"]:
            b, c = r["rows"][s]["baseline"], r["rows"][s]["ctf"]
            L.append(f"- K={r['K']} seed {s}: FD {b['FD']:.0f} → {c['FD']:.0f}, ClassAcc {b['ClassAcc']:.3f} → "
                     f"{c['ClassAcc']:.3f}, NLL {b['NLL']:.3f} → {c['NLL']:.3f}; training CPU-s {b['train_cpu_s']:.0f} "
                     f"(baseline) / {c['train_cpu_s']:.0f} (stage 1 + 2)")
    if any(r["members"] for r in rs):
        L += ["", "No-network stage-2 decodings (stage 1 of seed 0 + a member of each sampled cluster):", "",
              "| K | decoding | FD | ClassAcc |", "|---|---|---|---|"]
        for r in rs:
            for how, m in r["members"].items():
                L.append(f"| {r['K']} | {how} | {m['FD']:.0f} | {m['ClassAcc']:.3f} |")
    if speed:
        p = speed["pipelines"]
        L += ["", f"## Sampling speed (batch {speed['batch']}, one thread, median of {speed['repeats']} rounds "
              f"alternating all pipelines in one process; {speed['machine']}, {speed['dtype']})", "",
              "| K | baseline images/s | CTF images/s | CTF / baseline |", "|---|---|---|---|"]
        for k in KS:
            b, c = p.get(f"baseline/K{k}"), p.get(f"ctf/K{k}")
            if b and c:
                L.append(f"| {k} | {b['images_per_s']:.1f} | {c['images_per_s']:.1f} | "
                         f"{c['images_per_s'] / b['images_per_s']:.2f}x |")
    if cost:
        g, tk = cost["gpt"], cost["tokenizer"]
        L += ["", "## The paper's grid (16x16 codes, K = 16384): measured step costs and an estimate, not a run", "",
              f"CPU-seconds per training step, one thread, fp32; GPT-tiny at batch {cost['batch_gpt']} on random codes "
              "(clusters of 32 stand in for k-means ones); the tokenizer at batch 16 with the study's L2 recipe "
              f"and K = 16384. One seed of the study's schedule: {cost['tokenizer_steps']} tokenizer steps + "
              f"{cost['gpt_steps']} steps of each transformer.", "",
              "| part | 8x8 codes (VQ-64-f8) | 16x16 codes (VQ-64-f4) | ratio |", "|---|---|---|---|"]
        rows = [("tokenizer step", tk["VQ-64-f8"]["cpu_s"], tk["VQ-64-f4"]["cpu_s"])]
        rows += [(f"{stage} step", g[f"{stage}/8x8"], g[f"{stage}/16x16"]) for stage in ("coarse", "fine", "baseline")]
        L += [f"| {n} | {a:.3f} | {b:.3f} | {b / a:.1f}x |" for n, a, b in rows]

        def total(key, grid):
            gpt = sum(g[f"{s}/{grid}"] for s in (("coarse", "fine") if key == "ctf" else ("baseline",)))
            return gpt * cost["gpt_steps"] / 60
        tok8, tok16 = (tk[p]["cpu_s"] * cost["tokenizer_steps"] / 60 for p in ("VQ-64-f8", "VQ-64-f4"))
        L += ["", f"Estimated CPU-minutes for one seed: tokenizer {tok8:.0f} (8x8) vs {tok16:.0f} (16x16); "
              f"CTF stages {total('ctf', '8x8'):.0f} vs {total('ctf', '16x16'):.0f}; baseline "
              f"{total('base', '8x8'):.0f} vs {total('base', '16x16'):.0f}; whole run (without sampling) "
              f"{tok8 + total('ctf', '8x8') + total('base', '8x8'):.0f} vs "
              f"{tok16 + total('ctf', '16x16') + total('base', '16x16'):.0f}."]
    L += ["", "## Cost (CPU-minutes, one thread per process, summed over every process that worked on a K)", "",
          "| K | tokenizer | codes, clusters, training and scoring, all seeds | seeds |", "|---|---|---|---|"]
    for r in rs:
        cpu = sum(i.get("cpu_s", 0.0) for i in csr.merge(res / f"K{r['K']}")["invocations"]) / 60
        L.append(f"| {r['K']} | {(r['tokenizer'] or {}).get('train_cpu_min', float('nan')):.1f} | {cpu:.0f} | "
                 f"{','.join(map(str, r['seeds']))} |")
    inv = csr.merge(res / f"K{rs[0]['K']}")["invocations"]
    L += ["", f"Machine: {inv[0]['machine'] if inv else 'see K<k>/report.md'}; float32 (no native bf16 here)."]
    (res / "report.md").write_text("\n".join(L) + "\n")
    plot(rs, speed, res)


def plot(rs: list[dict], speed: dict | None, res: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in rs if r["seeds"]]
    if not rs:
        return
    panels = [("FD", "Δ FD (CTF − baseline), lower: CTF better"),
              ("ClassAcc", "Δ ClassAcc (CTF − baseline), higher: CTF better")]
    n = len(panels) + (1 if speed else 0) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2))
    for ax, (m, title) in zip(axes, panels):
        for r in rs:
            vals = [r["rows"][s]["ctf"][m] - r["rows"][s]["baseline"][m] for s in r["seeds"]]
            ax.scatter([r["K"]] * len(vals), vals, color="tab:blue", s=14, alpha=0.7)
        means = [gap(r, m)[0] for r in rs]
        ax.plot([r["K"] for r in rs], means, color="tab:blue", marker="o", label="mean over seeds")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_title(title, fontsize=8)
    i = len(panels)
    if speed:
        p = speed["pipelines"]
        ks = [k for k in KS if f"ctf/K{k}" in p and f"baseline/K{k}" in p]
        ax = axes[i]
        ax.plot(ks, [p[f"ctf/K{k}"]["images_per_s"] / p[f"baseline/K{k}"]["images_per_s"] for k in ks], marker="o")
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_title("images/s, CTF / baseline", fontsize=8)
        i += 1
    ax = axes[i]
    for r in rs:
        red = (r["redundancy"] or {}).get("stats", {})
        pts = sorted((r["K"] // red[f"kmeans-{r['K'] // d}"]["clusters"], red[f"kmeans-{r['K'] // d}"]["psnr_vs_reconstruction"])
                     for d in (128, 32, 8) if f"kmeans-{r['K'] // d}" in red)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"K={r['K']}")
        rnd = red.get(f"random-{default_num_coarse(r['K'])}")
        if rnd:
            ax.scatter([32], [rnd["psnr_vs_reconstruction"]], marker="x", color="black", s=20)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("codes per cluster (K / C)")
    ax.set_ylabel("swap PSNR vs reconstruction, dB")
    ax.set_title("redundancy (x: random clusters at K/32)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(res / "codebook_gap.png", dpi=110)
    plt.close(fig)
