"""report.md and plots of convergence_study.py: CTF against the baseline along training, by steps and by
training CPU-seconds, the compute-matched comparison, where each network's held-out NLL is lowest, and
k-means against agglomerative clusters."""
from __future__ import annotations

import json
from pathlib import Path

import ctf_study_report as csr
from convergence_study import C, K  # the study's one codebook size and cluster count

KM = f"kmeans-{C}"
METRICS = (("FD", True), ("KID", True), ("ClassAcc", False), ("NLL", True))  # (name, lower is better)


def curves(db: dict, seed: int) -> dict[str, list[dict]]:
    """Per pipeline, one row per scored checkpoint: step, the metrics, the training CPU-seconds."""
    steps = sorted({int(k.split("/")[2]) for k in db["entries"] if k.startswith("head/")})
    out = {}
    for kind in ("ctf", "baseline"):
        rows = []
        for st in steps:
            m = {name: csr.metric(db, kind, st, seed, name) for name, _ in METRICS if name != "NLL"}
            m["NLL"] = csr.nll(db, kind, st, seed, KM)
            cpu = csr.compute(db, kind, st, seed, KM, "cpu_s")
            if m["FD"] is not None and cpu is not None:
                rows.append({"step": st, "cpu_s": cpu, **m})
        out[kind] = rows
    return out


def nll_minima(db: dict, seed: int) -> dict[str, tuple[int, float, int]]:
    """Per network: (step of the lowest held-out NLL, that NLL, last step scored)."""
    out = {}
    for name, r in db["runs"].items():
        if r["seed"] != seed or not r["heldout"] or (r.get("map") not in (None, KM)):
            continue
        pts = sorted((int(s), h["nll"]) for s, h in r["heldout"].items())
        best = min(pts, key=lambda p: p[1])
        out[r["stage"]] = (best[0], best[1], pts[-1][0])
    return out


def matched(rows_a: list[dict], rows_b: list[dict]) -> list[tuple[dict, dict]]:
    """For each checkpoint of A, B's latest checkpoint that cost no more training CPU than it."""
    pairs = []
    for a in rows_a:
        cheaper = [b for b in rows_b if b["cpu_s"] <= a["cpu_s"] * 1.02]  # 2%: timer noise at equal budgets
        if cheaper:
            pairs.append((a, max(cheaper, key=lambda b: b["cpu_s"])))
    return pairs


def _f(v, name: str) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if name in ("ClassAcc", "NLL") else (f"{v:.2f}" if name == "KID" else f"{v:.0f}")


def plot(cur: dict, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for row, (xkey, xlabel) in enumerate((("step", "training steps"), ("cpu_s", "training CPU-minutes"))):
        for col, (name, _) in enumerate(METRICS):
            ax = axes[row][col]
            for kind, colour in (("ctf", "tab:blue"), ("baseline", "tab:orange")):
                rs = [r for r in cur[kind] if r[name] is not None]
                xs = [r[xkey] / (60 if xkey == "cpu_s" else 1) for r in rs]
                ax.plot(xs, [r[name] for r in rs], "o-", color=colour, label=kind)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_title(name)
            if row == 0 and col == 0:
                ax.legend()
    fig.suptitle(f"emoji64, 8x8 codes, K = {K}, C = {C}, GPT-tiny, seed 0")
    fig.tight_layout()
    fig.savefig(dest / "convergence.png", dpi=80)
    plt.close(fig)


def clusters_section(res: Path) -> list[str]:
    d = res / f"K{K}_clusters"
    if not d.exists():
        return []
    db = csr.merge(d)
    if not db["plan"]:
        return []
    step = db["plan"]["steps"]
    lines = ["", f"## k-means against agglomerative clusters (C = {C}, seed 0, {step}-step schedule)", "",
             "`convergence_study.py --lane agglomerative`: stage 1 and stage 2 trained on each map, same "
             "tokenizer, codes, schedule and seed.", "",
             "| clusters | cluster sizes min / max | swap PSNR dB | FD | KID | ClassAcc | NLL (coarse + fine) |",
             "|---|---|---|---|---|---|---|"]
    swap = json.loads((d / "swap.json").read_text())["stats"] if (d / "swap.json").exists() else {}
    rows = [("k-means", f"head/ctf/{step}/s0", KM)]
    rows.append(("agglomerative (average linkage)", f"peer/map/agglomerative-{C}/s0", f"agglomerative-{C}"))
    setup = db["setup"]
    for label, key, mapname in rows:
        e = db["entries"].get(key)
        if not e:
            lines.append(f"| {label} | not run yet | | | | | |")
            continue
        m = e["metrics"]
        co, fi = csr.ctf_runs(mapname, 0)
        nll = sum(db["runs"][n]["heldout"][str(step)]["nll"] for n in (co, fi)) if all(
            n in db["runs"] and str(step) in db["runs"][n]["heldout"] for n in (co, fi)) else None
        sw = swap.get(mapname.split("-")[0], {})  # cluster_swap's row for this method, if it ran
        st = setup.get("maps", {}).get(mapname) or sw.get("sizes", {})
        sizes = f"{st.get('min_size', '-')} / {st.get('max_size', '-')}"
        psnr = f"{sw['psnr_vs_reconstruction']:.2f}" if "psnr_vs_reconstruction" in sw else "-"
        lines.append(f"| {label} | {sizes} | {psnr} | {m['FD']:.0f} | {m['KID']:.2f} | {m['ClassAcc']:.3f} | "
                     f"{_f(nll, 'NLL')} |")
    return lines


def seeds_section(db: dict) -> list[str]:
    """CTF minus baseline at every checkpoint that both pipelines of a seed reached, seed by seed."""
    seeds = sorted({r["seed"] for r in db["runs"].values()})
    rows = []
    for sd in seeds:
        cur = curves(db, sd)
        base = {r["step"]: r for r in cur["baseline"]}
        for c in cur["ctf"]:
            b = base.get(c["step"])
            if b:
                rows.append((c["step"], sd, c, b))
    if not any(sd != 0 for _, sd, _, _ in rows):
        return []
    lines = ["", "## Seed by seed: CTF minus the baseline at equal steps", "",
             "| step | seed | Δ FD | Δ ClassAcc | Δ NLL |", "|---|---|---|---|---|"]
    for st, sd, c, b in sorted(rows, key=lambda t: (t[0], t[1])):
        d = {n: (c[n] - b[n]) if c[n] is not None and b[n] is not None else None for n in ("FD", "ClassAcc", "NLL")}
        lines.append(f"| {st} | {sd} | {_f(d['FD'], 'FD')} | {_f(d['ClassAcc'], 'ClassAcc')} | {_f(d['NLL'], 'NLL')} |")
    return lines


def render(res: Path, work: Path | None = None) -> None:
    d = res / f"K{K}"
    db = csr.merge(d) if d.exists() else None
    if not db or not db["plan"]:
        print(f"nothing to report in {d} yet")
        return
    seed = 0
    cur = curves(db, seed)
    plan = db["plan"]
    lines = [f"# Does CTF's lead survive training? (issue 30) emoji64, K = {K}, C = {C}", "",
             f"Command: `benchmarks/quality/convergence_study.py --lane ctf|baseline --seeds 0` (two one-thread "
             f"processes), then `--report`. One schedule of {plan['steps']} steps (setup below), scored at "
             f"steps {', '.join(map(str, plan['checkpoints']))} of that one schedule with {plan['n_head']} "
             "class-balanced samples (FD/KID on EfficientNet-Lite0 at 64 px against the 5,145 training images; "
             "class accuracy of the study's emoji64 classifier; held-out NLL per token on the 573 test images, "
             "CTF = stage 1 + stage 2). CPU-s: the training process's own CPU time (one thread).", ""]
    lines += csr._setup(db, KM)
    lines += csr._provenance(db)
    lines += ["", "## Along training (seed 0)", "",
              "| step | CTF FD | base FD | CTF KID | base KID | CTF ClassAcc | base ClassAcc | CTF NLL | base NLL "
              "| CTF CPU-min | base CPU-min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    by_step = {r["step"]: r for r in cur["baseline"]}
    for r in cur["ctf"]:
        b = by_step.get(r["step"], {})
        base_cpu = f"{b['cpu_s'] / 60:.1f}" if b else "-"
        lines.append(f"| {r['step']} | " + " | ".join(f"{_f(r[n], n)} | {_f(b.get(n), n)}" for n, _ in METRICS)
                     + f" | {r['cpu_s'] / 60:.1f} | {base_cpu} |")
    mins = nll_minima(db, seed)
    lines += ["", "Lowest held-out NLL per network (step, nats per token; the last scored step beside it):", ""]
    lines += [f"- {stage}: step {s} ({v:.3f}); scored up to step {last}" + (
        " -- the minimum is the last checkpoint: not yet past it" if s == last else "")
        for stage, (s, v, last) in sorted(mins.items())]
    lines += ["", "## At equal training compute (seed 0)", "",
              "CTF at the baseline's budget: for each baseline checkpoint, CTF's latest checkpoint that cost no "
              "more training CPU; and the baseline at CTF's budget the same way.", "",
              "| budget (CPU-min) | baseline step | CTF step | base FD | CTF FD | base ClassAcc | CTF ClassAcc | "
              "base NLL | CTF NLL |", "|---|---|---|---|---|---|---|---|---|"]
    for b, c in matched(cur["baseline"], cur["ctf"]):
        lines.append(f"| {b['cpu_s'] / 60:.1f} (baseline's) | {b['step']} | {c['step']} | {_f(b['FD'], 'FD')} | "
                     f"{_f(c['FD'], 'FD')} | {_f(b['ClassAcc'], 'ClassAcc')} | {_f(c['ClassAcc'], 'ClassAcc')} | "
                     f"{_f(b['NLL'], 'NLL')} | {_f(c['NLL'], 'NLL')} |")
    for c, b in matched(cur["ctf"], cur["baseline"]):
        lines.append(f"| {c['cpu_s'] / 60:.1f} (CTF's) | {b['step']} | {c['step']} | {_f(b['FD'], 'FD')} | "
                     f"{_f(c['FD'], 'FD')} | {_f(b['ClassAcc'], 'ClassAcc')} | {_f(c['ClassAcc'], 'ClassAcc')} | "
                     f"{_f(b['NLL'], 'NLL')} | {_f(c['NLL'], 'NLL')} |")
    lines += seeds_section(db)
    lines += clusters_section(res)
    lines += ["", "convergence.png: the four scores against steps (top) and training CPU-minutes (bottom), log x."]
    if cur["ctf"] and cur["baseline"]:
        plot(cur, res)
    (res / "report.md").write_text("\n".join(lines) + "\n")
    (res / "curves.json").write_text(json.dumps({"seed": seed, "curves": cur, "nll_minima": mins}, indent=1))
    print("\n".join(lines))
