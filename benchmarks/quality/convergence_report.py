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



def mean_curves(db: dict, seeds: list[int]) -> dict[str, list[dict]]:
    """Per pipeline, one row per checkpoint that every seed reached: the mean and the spread (sample std)
    of each metric and of the training CPU-seconds, and the per-seed values (for sign counts)."""
    per_seed = {sd: curves(db, sd) for sd in seeds}
    out = {}
    for kind in ("ctf", "baseline"):
        by_step: dict[int, list[dict]] = {}
        for sd in seeds:
            for r in per_seed[sd][kind]:
                by_step.setdefault(r["step"], []).append(r)
        rows = []
        for st, rs in sorted(by_step.items()):
            if len(rs) != len(seeds):
                continue
            row = {"step": st, "n": len(rs), "per_seed": {sd: r for sd, r in zip(seeds, rs)}}
            for name in ("cpu_s", *(m for m, _ in METRICS)):
                vals = [r[name] for r in rs if r[name] is not None]
                if not vals:
                    row[name], row[name + "_sd"] = None, None
                    continue
                mean = sum(vals) / len(vals)
                row[name] = mean
                row[name + "_sd"] = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            rows.append(row)
        out[kind] = rows
    return out


def _pmf(r: dict, name: str) -> str:
    if not r or r.get(name) is None:
        return "-"
    return _f(r[name], name) + (f" ± {_f(r[name + '_sd'], name)}" if r.get("n", 1) > 1 else "")


def along_section(cur: dict, title: str) -> list[str]:
    lines = ["", title, "",
             "| step | CTF FD | base FD | CTF KID | base KID | CTF ClassAcc | base ClassAcc | CTF NLL | base NLL "
             "| CTF CPU-min | base CPU-min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    by_step = {r["step"]: r for r in cur["baseline"]}
    for r in cur["ctf"]:
        b = by_step.get(r["step"], {})
        base_cpu = f"{b['cpu_s'] / 60:.1f}" if b else "-"
        lines.append(f"| {r['step']} | " + " | ".join(f"{_pmf(r, n)} | {_pmf(b, n)}" for n, _ in METRICS)
                     + f" | {r['cpu_s'] / 60:.1f} | {base_cpu} |")
    return lines


def minima_section(db: dict, seeds: list[int]) -> tuple[list[str], dict]:
    lines = ["", "Lowest held-out NLL per network and seed (step, nats per token; the last scored step beside it):", ""]
    mins = {}
    for sd in seeds:
        mins[sd] = nll_minima(db, sd)
        lines += [f"- seed {sd}, {stage}: step {s} ({v:.3f}); scored up to step {last}" + (
            " -- the minimum is the last checkpoint: not yet past it" if s == last else " -- past it")
            for stage, (s, v, last) in sorted(mins[sd].items())]
    return lines, mins


def matched_section(cur: dict, title: str) -> list[str]:
    """The compute-matched comparison on the seed-mean curves; per pair, in how many seeds CTF's FD and
    ClassAcc beat the baseline's (each seed's own checkpoints at those steps)."""
    lines = ["", title, "",
             "CTF at the baseline's budget: for each baseline checkpoint, CTF's latest checkpoint that cost no "
             "more mean training CPU; and the baseline at CTF's budget the same way. 'CTF ahead': seeds in "
             "which CTF's FD is lower / its ClassAcc higher at that pair of checkpoints.", "",
             "| budget (CPU-min) | baseline step | CTF step | base FD | CTF FD | base ClassAcc | CTF ClassAcc | "
             "base NLL | CTF NLL | CTF ahead (FD, ClassAcc) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def ahead(b: dict, c: dict) -> str:
        seeds = sorted(set(b.get("per_seed", {})) & set(c.get("per_seed", {})))
        fd = sum(c["per_seed"][s]["FD"] < b["per_seed"][s]["FD"] for s in seeds)
        ca = sum((c["per_seed"][s]["ClassAcc"] or 0) > (b["per_seed"][s]["ClassAcc"] or 0) for s in seeds)
        return f"{fd}/{len(seeds)}, {ca}/{len(seeds)}"

    def row(b: dict, c: dict, budget: dict, whose: str) -> str:
        return (f"| {budget['cpu_s'] / 60:.1f} ({whose}) | {b['step']} | {c['step']} | {_pmf(b, 'FD')} | "
                f"{_pmf(c, 'FD')} | {_pmf(b, 'ClassAcc')} | {_pmf(c, 'ClassAcc')} | {_pmf(b, 'NLL')} | "
                f"{_pmf(c, 'NLL')} | {ahead(b, c)} |")

    for b, c in matched(cur["baseline"], cur["ctf"]):
        lines.append(row(b, c, b, "baseline's"))
    for c, b in matched(cur["ctf"], cur["baseline"]):
        lines.append(row(b, c, c, "CTF's"))
    return lines


def _plot_mean(cur: dict, long: dict | None, dest: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for row, (xkey, xlabel) in enumerate((("step", "training steps"), ("cpu_s", "training CPU-minutes"))):
        for col, (name, _) in enumerate(METRICS):
            ax = axes[row][col]
            for curves_, style, tag in ((cur, "o-", ""), (long or {}, "s--", " (long schedule, seed 0)")):
                for kind, colour in (("ctf", "tab:blue"), ("baseline", "tab:orange")):
                    rs = [r for r in curves_.get(kind, []) if r.get(name) is not None]
                    if not rs:
                        continue
                    xs = [r[xkey] / (60 if xkey == "cpu_s" else 1) for r in rs]
                    ax.errorbar(xs, [r[name] for r in rs], yerr=[r.get(name + "_sd") or 0 for r in rs], fmt=style,
                                color=colour, label=kind + tag, capsize=3, alpha=1.0 if not tag else 0.7)
            ax.set_xscale("log")
            ax.minorticks_off()  # log minor labels overprint each other at this width
            ticks = sorted({r["step"] for c in (cur, long or {}) for k in c.values() for r in k}) if xkey == "step" \
                else [t for t in (2, 5, 10, 20, 50, 100, 200) if t <= max(r["cpu_s"] for k in cur.values() for r in k) / 30]
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.tick_params(axis="x", labelsize=7)
            ax.set_xlabel(xlabel)
            ax.set_title(name)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(dest / "convergence.png", dpi=80)
    plt.close(fig)


def long_dirs(res: Path) -> list[Path]:
    """Result dirs of longer schedules (convergence_study.py --steps N): K16384_<N>steps."""
    return sorted((d for d in res.glob(f"K{K}_*steps") if d.is_dir()), key=lambda d: int(d.name.split("_")[1][:-5]))


def render(res: Path, work: Path | None = None) -> None:
    d = res / f"K{K}"
    db = csr.merge(d) if d.exists() else None
    if not db or not db["plan"]:
        print(f"nothing to report in {d} yet")
        return
    seeds = csr.seeds_of(db)
    cur = mean_curves(db, seeds)
    plan = db["plan"]
    n = len(seeds)
    lines = [f"# Does CTF's lead survive training? (issue 30) emoji64, K = {K}, C = {C}", "",
             f"Command: `benchmarks/quality/convergence_study.py --lane ctf|baseline --seeds S` (two one-thread "
             f"processes per seed), then `--report`. One schedule of {plan['steps']} steps (setup below), scored at "
             f"steps {', '.join(map(str, plan['checkpoints']))} of that one schedule with {plan['n_head']} "
             "class-balanced samples (FD/KID on EfficientNet-Lite0 at 64 px against the 5,145 training images; "
             "class accuracy of the study's emoji64 classifier; held-out NLL per token on the 573 test images, "
             "CTF = stage 1 + stage 2). CPU-s: the training process's own CPU time (one thread). "
             f"Seeds: {', '.join(map(str, seeds))}; ± is the sample std over them.", ""]
    lines += csr._setup(db, KM)
    lines += csr._provenance(db)
    lines += along_section(cur, f"## Along training (mean ± std over {n} seed{'s' if n > 1 else ''})")
    mlines, mins = minima_section(db, seeds)
    lines += mlines
    lines += matched_section(cur, f"## At equal training compute ({n} seed{'s' if n > 1 else ''})")
    lines += seeds_section(db)
    long_cur = None
    for ld in long_dirs(res):
        ldb = csr.merge(ld)
        if not ldb["plan"]:
            continue
        lseeds = csr.seeds_of(ldb)
        lcur = mean_curves(ldb, lseeds)
        long_cur = long_cur or lcur
        steps = ldb["plan"]["steps"]
        lines += ["", f"## A {steps}-step schedule (seed{'s' if len(lseeds) > 1 else ''} "
                  f"{', '.join(map(str, lseeds))}): past the {plan['steps']}-step one", "",
                  f"`convergence_study.py --lane ctf|baseline --steps {steps} --checkpoints "
                  f"{','.join(map(str, ldb['plan']['checkpoints']))}`: the same setup (linked, not retrained), a "
                  f"cosine schedule {steps} steps long, so a checkpoint at step s here is not the {plan['steps']}-step "
                  f"run's step s (its learning rate is higher). Results: `{ld.name}/`."]
        lines += csr._provenance(ldb)
        lines += along_section(lcur, f"### Along the {steps}-step schedule")
        lines += minima_section(ldb, lseeds)[0]
        lines += matched_section(lcur, f"### At equal training compute, {steps}-step schedule")
    lines += clusters_section(res)
    lines += ["", "convergence.png: the four scores against steps (top) and training CPU-minutes (bottom), log x; "
              f"points are seed means with ± std bars ({n} seeds), dashed squares the longer schedule."]
    if cur["ctf"] and cur["baseline"]:
        _plot_mean(cur, long_cur, res, f"emoji64, 8x8 codes, K = {K}, C = {C}, GPT-tiny, {n} seeds")
    (res / "report.md").write_text("\n".join(lines) + "\n")
    (res / "curves.json").write_text(json.dumps({"seeds": seeds, "curves": cur, "long": long_cur,
                                                 "nll_minima": {str(k): v for k, v in mins.items()}}, indent=1))
    print("\n".join(lines))
