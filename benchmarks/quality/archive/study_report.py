"""Tables (report.md) and plots (PNG, matplotlib Agg) of the first quality study (archive/study.py): part of
that RECORD, not maintained (see archive/study.py).

Everything is rendered from results.json alone, so a partial study renders what it has so far.
"""
from __future__ import annotations

import math
from pathlib import Path

from coarse2fine.tokenizer.clustering import default_num_coarse

METRICS = ["FD", "KID", "Precision", "Recall", "ClassAcc", "IS"]
LOWER_BETTER = {"FD", "KID"}
# Paper Table 1 (ImageNet 256x256): (FID, IS) of LlamaGen and LlamaGen + CTF at equal backbone size.
PAPER_TABLE1 = [("B", 5.46, 193.61, 4.15, 254.99), ("L", 3.80, 248.28, 2.97, 291.53),
                ("XL", 3.39, 227.08, 2.76, 299.69)]


def _fmt(k: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if k == "KID":
        return f"{v:.3g}"
    if k in ("Precision", "Recall", "ClassAcc"):
        return f"{v:.3f}"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"


def _header(extra: list[str] | None = None) -> list[str]:
    cols = ["FD ↓", "KID ↓", "Prec ↑", "Rec ↑", "ClassAcc ↑", "IS-clf ↑"] + (extra or [])
    return ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]


def _row(label: str, e: dict | None, extra: list[str] | None = None) -> str:
    if e is None:
        return f"| {label} | " + " | ".join(["(not run)"] + ["-"] * (len(METRICS) - 1) + (extra or [])) + " |"
    return f"| {label} | " + " | ".join([_fmt(k, e["metrics"].get(k)) for k in METRICS] + (extra or [])) + " |"


def _heldout(db: dict, run: str, step: int | None = None) -> dict | None:
    r = db["runs"].get(run)
    if not r or not r.get("heldout"):
        return None
    h = r["heldout"]
    key = str(step) if step is not None else max(h, key=int)
    return h.get(key)


def _joint_nll(db: dict, coarse: str, fine: str, step: int | None = None) -> float | None:
    """CTF's NLL of the fine codes, nats/token: NLL(coarse) + NLL(fine | all true coarse labels).
    An upper bound with the full K-way head (mass outside the cluster is lost), exact when restricted."""
    a, b = _heldout(db, coarse, step), _heldout(db, fine, step)
    return None if a is None or b is None else a["nll"] + b["nll"]


def render(db: dict, res: Path) -> None:
    p, s, E = db["plan"], db["setup"], db["entries"]
    inv = db["invocations"]
    wall = sum(i["wall_s"] for i in inv)
    cpu = sum(i["cpu_s"] for i in inv)
    K = s.get("tokenizer", {}).get("K", 4096)
    C = default_num_coarse(K)
    names = db.get("metric_names", {})
    L = [f"# CTF vs AR baseline on `{p['data']}` ({p['resolution']} px)", ""]
    L += ["Commands (in order; later ones resume the same work dir):", ""]
    L += [f"- `{i['command']}` — started {i['started']}, {i['threads']} torch thread(s), wall "
          f"{i['wall_s'] / 60:.1f} min, CPU {i['cpu_s'] / 60:.1f} min" for i in inv]
    L += ["", f"Machine: {inv[-1]['machine']}, shared with other jobs (wall time is inflated by them; CPU "
          f"time is this process's own). Total: wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min.", ""]
    done_conv = sorted({int(k.split('/')[-1]) for k in E if k.startswith("conv/")})
    if not done_conv or done_conv[-1] < p["steps"] or not all(
            k in E for k in ("abl/default", f"abl/s2size/{p['big_preset']}", "abl/head/restricted")):
        L += [f"**Status: partial** — convergence points reached: {done_conv or 'none'} of {p['checkpoints']} "
              f"(schedule {p['steps']} steps); rows marked (not run) were not reached.", ""]
    tok, clf = s.get("tokenizer"), s.get("classifier")
    L += ["## Setup", ""]
    if s.get("data"):
        d = s["data"]
        L.append(f"- data: {d['train']} train images ({d['train_codes']} code sequences, flip={p['flip']}), "
                 f"{d['test']} test images, {len(d['classes'])} classes")
    if tok:
        L.append(f"- tokenizer: VQ (ch {tok['vq']['ch']}, ch_mult {tok['vq']['ch_mult']}, no attention), K={K}, "
                 f"8x8 codes, {tok['steps']} steps; test PSNR {tok['psnr_test_db']:.2f} dB, codebook usage "
                 f"{100 * tok['usage_test']:.1f}%")
    L.append(f"- models: backbone `{p['preset']}` for baseline, stage 1 and stage 2 (stage 2 bidirectional); "
             f"{p['steps']} steps, batch {p['batch']}, AdamW lr {p['lr'] * p['batch'] / 256:.1e} cosine, "
             f"no EMA; default clusters: k-means, K/32 = {C}")
    L.append(f"- sampling defaults: CTF τ1 1.1, τ2 1.1, CFG 2.0 (stage 1), top-k all (paper Sec. 5.1); "
             f"baseline τ 1.0, CFG 2.0 (LlamaGen)")
    if clf:
        L.append(f"- classifier (for ClassAcc / IS-clf): {clf['train_count']} train images, {clf['epochs']} "
                 f"epochs; held-out accuracy {clf['accuracy']:.3f} on {clf['count']} {clf['split']} images; real "
                 f"{clf['split']} images score IS-clf {clf['is_real'] or float('nan'):.2f}")
    ref = next(iter(E.values()))["ref"] if E else None
    L.append(f"- metrics: {', '.join(names.values()) or 'FD/KID/precision/recall on EfficientNet-Lite0'}; "
             f"reference: {ref or '?'} images of the `{p['ref_split']}` split. FD here is **not** FID "
             "(other network, other resolution, small N): compare rows of one table only.")
    L.append(f"- N: {p['n_head']} images per convergence/headline row, {p['n_abl']} per ablation row "
             "(class-balanced; the same sampling seeds in every row)")
    L.append("")

    # headline
    last = str(p["steps"])
    L += ["## Headline: same backbone, batch, steps and tokenizer", ""]
    L += _header(["held-out NLL (fine codes, nats/token) ↓", "train wall (s)", "params"])
    base_run, co_run, fi_run = "baseline", f"coarse_kmeans-{C}", f"fine_kmeans-{C}"
    for label, key, nll, runs in (
            ("AR baseline (LlamaGen-style)", f"conv/baseline/{last}", _heldout(db, base_run, p["steps"]), [base_run]),
            ("CTF (stage 1 + stage 2)", f"conv/ctf/{last}", None, [co_run, fi_run])):
        nll_v = nll["nll"] if nll else _joint_nll(db, co_run, fi_run, p["steps"])
        tr = sum(db["runs"].get(r, {}).get("train_s", 0) for r in runs)
        params = " + ".join(f"{db['runs'][r]['params'] / 1e6:.2f}M" for r in runs if r in db["runs"])
        L.append(_row(label, E.get(key), [_fmt("", nll_v) if nll_v is not None else "-", f"{tr:.0f}", params or "-"]))
    L += ["", "Paper, ImageNet 256², Table 1 (FID / IS with Inception-v3, 50k samples) for context:", "",
          "| backbone | LlamaGen FID | +CTF FID | LlamaGen IS | +CTF IS |", "|---|---|---|---|---|"]
    L += [f"| LlamaGen-{b} | {f1} | {f2} | {i1} | {i2} |" for b, f1, i1, f2, i2 in PAPER_TABLE1]
    L += ["", "![convergence](convergence.png)", "",
          "![samples: CTF left, baseline right; one row per class](samples_ctf_vs_baseline.png)", ""]

    # convergence
    L += ["## Convergence (paper Fig. 2)", ""]
    L += _header(["model", "held-out NLL", "held-out acc"])
    for k in p["checkpoints"]:
        for label, key in (("baseline", f"conv/baseline/{k}"), ("CTF", f"conv/ctf/{k}")):
            if label == "baseline":
                h = _heldout(db, base_run, k)
                extra = ["baseline", _fmt("", h["nll"]) if h else "-", _fmt("ClassAcc", h["acc"]) if h else "-"]
            else:
                h1, h2 = _heldout(db, co_run, k), _heldout(db, fi_run, k)
                jn = _joint_nll(db, co_run, fi_run, k)
                extra = ["CTF", _fmt("", jn) if jn is not None else "-",
                         f"s1 {h1['acc']:.3f} / s2 {h2['acc']:.3f}" if h1 and h2 else "-"]
            L.append(_row(f"step {k}", E.get(key), extra))
    L += ["", "Held-out NLL of CTF = NLL(stage 1, coarse) + NLL(stage 2, fine | true coarse); accuracies: stage 1 "
          "predicts the next coarse id, stage 2 the fine id given all true coarse ids; the baseline the next fine id.", ""]

    # Table 3 analogues
    L += ["## Ablations (paper Table 3) at the final step", "",
          f"Every row changes one thing against the default row (k-means K/32, `{p['preset']}` stage 2, full "
          "head, paper sampling defaults).", ""]
    dflt = E.get("abl/default")

    def table(title: str, rows: list[tuple[str, dict | None, list[str] | None]], extra: list[str] | None = None):
        L.extend([f"### {title}", ""] + _header(extra) + [_row(a, b, c) for a, b, c in rows] + [""])

    def s2acc(run: str) -> list[str]:
        h = _heldout(db, run, p["steps"])
        hc = _heldout(db, run.replace("fine_", "coarse_").split("_restricted")[0].split(f"_{p['big_preset']}")[0],
                      p["steps"])
        joint = h["nll"] + hc["nll"] if h and hc else None
        return [f"{h['acc']:.3f}" if h else "-", f"{hc['acc']:.3f}" if hc else "-",
                f"{joint:.2f}" if joint is not None else "-"]

    maps = s.get("maps", {})
    rows = []
    for d in p["divisors"]:
        c = K // d
        e = dflt if c == C else E.get(f"abl/map/kmeans-{c}")
        rows.append((f"{c} clusters (K/{d}, ~{d} codes each)", e, s2acc(f"fine_kmeans-{c}")))
    table("(a) number of clusters", rows, ["stage-2 acc (true coarse)", "stage-1 acc", "held-out NLL s1+s2"])
    rows = [("k-means" if m == "kmeans" else m, dflt if m == "kmeans" else E.get(f"abl/map/{m}-{C}"),
             s2acc(f"fine_{m}-{C}") + [_size_range(maps.get(f"{m}-{C}"))]) for m in ("kmeans", "random", "balanced")]
    table(f"(g) how the {C} clusters are made", rows, ["stage-2 acc (true coarse)", "stage-1 acc", "held-out NLL s1+s2", "cluster sizes"])
    big_run = f"{fi_run}_{p['big_preset']}"
    big_params = db["runs"].get(big_run, {}).get("params", 0) / 1e6
    rows = [(f"`{p['preset']}` ({db['runs'].get(fi_run, {}).get('params', 0) / 1e6:.2f}M)", dflt, s2acc(fi_run)),
            (f"`{p['big_preset']}` ({big_params:.2f}M)", E.get(f"abl/s2size/{p['big_preset']}"), s2acc(big_run))]
    table("(b) stage-2 model size", rows, ["stage-2 acc (true coarse)", "stage-1 acc", "held-out NLL s1+s2"])
    table("(c) CFG scale (stage 1)", [(f"{v}", dflt if v == 2.0 else E.get(f"abl/cfg/{v}"), None)
                                      for v in (1.5, 2.0, 3.0)])
    table("(d) top-k (stage 2)", [(f"{v}", E.get(f"abl/topk/{v}"), None) for v in (1, 32)] + [("all", dflt, None)])
    table("(e) temperature τ1 (stage 1; τ2 = 1.1)", [(f"{v}", dflt if v == 1.1 else E.get(f"abl/t1/{v}"), None)
                                                      for v in (0.9, 1.0, 1.1)])
    table("(f) temperature τ2 (stage 2; τ1 = 1.1)", [(f"{v}", dflt if v == 1.1 else E.get(f"abl/t2/{v}"), None)
                                                      for v in (0.9, 1.0, 1.1)])
    hr, hf = _heldout(db, f"{fi_run}_restricted", p["steps"]), _heldout(db, fi_run, p["steps"])
    table("(h) stage-2 head: full K-way (paper) vs restricted to the cluster's members",
          [("full K-way head", dflt, [f"{hf['nll']:.3f}" if hf else "-", f"{hf['acc']:.3f}" if hf else "-"]),
           ("restricted head", E.get("abl/head/restricted"),
            [f"{hr['nll']:.3f}" if hr else "-", f"{hr['acc']:.3f}" if hr else "-"])],
          ["stage-2 held-out NLL", "stage-2 held-out acc"])
    table("Baseline sampling sweep (for a fair headline: the baseline's own best knobs)",
          [(f"CFG {v}, τ 1.0", E.get(f"abl/base_cfg/{v}"), None) for v in (1.5, 2.0, 3.0)]
          + [("CFG 2.0, τ 1.1", E.get("abl/base_t/1.1"), None), ("CTF default (for reference)", dflt, None)])

    red = s.get("redundancy")
    L += ["## Redundancy (paper Fig. 1b)", ""]
    if red:
        L += [f"{red['n']} test images; every code is replaced by a random member of its cluster, then decoded. "
              f"PSNR of the plain reconstruction vs the original: {red['reconstruction']['psnr_vs_original']:.2f} dB.",
              "", "| clusters | PSNR vs reconstruction (dB) ↑ | PSNR vs original (dB) | codes changed |",
              "|---|---|---|---|"]
        for name, v in red.items():
            if isinstance(v, dict) and "psnr_vs_reconstruction" in v:
                L.append(f"| {name} | {v['psnr_vs_reconstruction']:.2f} ± {v['psnr_std']:.2f} | "
                         f"{v['psnr_vs_original']:.2f} | {100 * v['codes_changed']:.0f}% |")
        L += ["", f"![rows: original, reconstruction, k-means-{C} swap, random-{C} swap](redundancy.png)", ""]
    else:
        L += ["(not run)", ""]
    (res / "report.md").write_text("\n".join(L) + "\n")
    plot_convergence(db, res)


def _size_range(m: dict | None) -> str:
    return f"{m['min_size']}..{m['max_size']}" if m else "-"


def plot_convergence(db: dict, res: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    E, p = db["entries"], db["plan"]
    K = db["setup"].get("tokenizer", {}).get("K", 4096)
    C = default_num_coarse(K)
    panels = [("FD", "FD-EffNetLite0 ↓"), ("ClassAcc", "class accuracy ↑"), ("IS", "IS-clf ↑"), ("NLL", "held-out NLL ↓")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (m, title) in zip(axes, panels):
        for label, kind, color in (("baseline", "baseline", "tab:blue"), ("CTF", "ctf", "tab:red")):
            xs, ys = [], []
            for k in p["checkpoints"]:
                if m == "NLL":
                    v = (_heldout(db, "baseline", k) or {}).get("nll") if kind == "baseline" else \
                        _joint_nll(db, f"coarse_kmeans-{C}", f"fine_kmeans-{C}", k)
                else:
                    v = E.get(f"conv/{kind}/{k}", {}).get("metrics", {}).get(m)
                if v is not None:
                    xs.append(k)
                    ys.append(v)
            ax.plot(xs, ys, "o-", color=color, label=label)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{p['data']}: CTF vs baseline ({p['preset']}, batch {p['batch']}, same schedule)")
    fig.tight_layout()
    fig.savefig(res / "convergence.png", dpi=90)
    plt.close(fig)
