"""report.md and plots for ctf_study.py, rendered from every results_*.json in the results dir.

Each study process writes its own results file; this merges them (runs and entries have distinct keys
per seed), so a partial study renders what it has so far.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from coarse2fine.config import train_recipe
from coarse2fine.sampling import BASELINE_DEFAULT as B, CTF_COARSE_DEFAULT as S1, CTF_FINE_DEFAULT as S2
from coarse2fine.stages import stage_spec
from coarse2fine.tokenizer.clustering import default_num_coarse

METRICS = ["FD", "KID", "Precision", "Recall", "ClassAcc", "IS"]
LOWER_BETTER = {"FD", "KID", "NLL"}
PAPER_TABLE1 = [("B", 5.46, 193.61, 4.15, 254.99), ("L", 3.80, 248.28, 2.97, 291.53),
                ("XL", 3.39, 227.08, 2.76, 299.69)]


def merge(res: Path) -> dict:
    db: dict = {"runs": {}, "entries": {}, "invocations": [], "setup": {}, "plan": None, "metric_names": {}}
    for f in sorted(res.glob("results_*.json")):
        d = json.loads(f.read_text())
        db["plan"] = db["plan"] or d.get("plan")
        for k, v in d.get("setup", {}).items():
            if k == "maps":  # each process records the maps it clustered: keep all of them
                db["setup"].setdefault("maps", {}).update(v)
            else:
                db["setup"].setdefault(k, v)
        db["runs"].update(d.get("runs", {}))
        db["entries"].update(d.get("entries", {}))
        db["invocations"] += d.get("invocations", [])
        db["metric_names"].update(d.get("metric_names", {}))
        if d.get("speed"):
            db["speed"] = d["speed"]
        db.setdefault("flatness", {}).update(d.get("flatness", {}))
    return db


def _ms(vals: list[float]) -> tuple[float, float, int]:
    a = np.array([v for v in vals if v is not None and not math.isnan(v)], dtype=float)
    if not len(a):
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan"), len(a)


def _fmt(v: float, k: str = "") -> str:
    if v is None or math.isnan(v):
        return "-"
    if k == "KID":
        return f"{v:.3g}"
    if k in ("Precision", "Recall", "ClassAcc", "acc"):
        return f"{v:.3f}"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def _pm(m: float, s: float, n: int, k: str) -> str:
    if n == 0:
        return "-"
    mean = _fmt(m, k)
    if n < 2 or math.isnan(s):
        return mean
    if "e" in mean:  # exponent notation (a huge KID): no shared last digit to round the std to
        return f"{mean} ± {_fmt(s, k)}"
    decimals = len(mean.split(".")[1]) if "." in mean else 0  # the std to the mean's last shown digit
    return f"{mean} ± {s:.{decimals}f}"


def seeds_of(db: dict) -> list[int]:
    return sorted({r["seed"] for r in db["runs"].values() if r.get("stage") == "baseline" and not r.get("map")})


def run_name(stage: str, mapname: str | None, seed: int, tag: str = "") -> str:
    """The study's name of a run: stage (coarse, fine, baseline), its clusters (not for the baseline),
    a tag ("_iar", "_GPT-small") and the seed, e.g. fine_kmeans-128_GPT-small_s0."""
    return (f"{stage}_{mapname}" if stage_spec(stage).needs_coarse_map else stage) + tag + f"_s{seed}"


def ctf_runs(mapname: str, seed: int, tag: str = "") -> tuple[str, str]:
    return run_name("coarse", mapname, seed, tag), run_name("fine", mapname, seed, tag)


def nll(db: dict, kind: str, step: int, seed: int, mapname: str) -> float | None:
    """Held-out NLL of the fine codes (nats/token). CTF: NLL(coarse) + NLL(fine | true coarse) with the
    cluster-restricted head, which is the exact joint NLL of the fine code."""
    if kind == "baseline":
        h = db["runs"].get(run_name("baseline", None, seed), {}).get("heldout", {}).get(str(step))
        return h["nll"] if h else None
    a, b = (db["runs"].get(n, {}).get("heldout", {}).get(str(step)) for n in ctf_runs(mapname, seed))
    return a["nll"] + b["nll"] if a and b else None


def compute(db: dict, kind: str, step: int, seed: int, mapname: str, what: str) -> float | None:
    """Training compute to reach `step`: what = "cpu_s" (CPU-seconds, one thread) or "flops"."""
    names = (run_name("baseline", None, seed),) if kind == "baseline" else ctf_runs(mapname, seed)
    vals = [db["runs"].get(n, {}).get(what, {}).get(str(step)) for n in names]
    return None if any(v is None for v in vals) else float(sum(vals))


def metric(db: dict, kind: str, step: int, seed: int, m: str) -> float | None:
    e = db["entries"].get(f"head/{kind}/{step}/s{seed}")
    return e["metrics"].get(m) if e else None


def render_dir(res: Path) -> None:
    db = merge(res)
    if not db["plan"]:
        return
    p, s = db["plan"], db["setup"]
    K = s.get("tokenizer", {}).get("K", 4096)
    km = f"kmeans-{default_num_coarse(K)}"
    seeds = seeds_of(db)
    last = p["steps"]
    L = [f"# CTF vs the AR baseline on `{p['data']}`, trained {p['steps']} steps, {len(seeds)} seed(s)", ""]
    L += _provenance(db)
    L += _setup(db, km)
    # ---- headline ------------------------------------------------------------------------------------
    L += ["## Headline: same backbone, batch, schedule, tokenizer and data; mean ± std over seeds", ""]
    cols = METRICS + ["NLL"]
    L += ["| model | seeds | " + " | ".join(["FD ↓", "KID ↓", "Prec ↑", "Rec ↑", "ClassAcc ↑", "IS-clf ↑",
                                             "held-out NLL ↓"]) + " | train CPU-s | train TFLOP |",
          "|---" * (len(cols) + 4) + "|"]
    stats = {}
    for label, kind in (("AR baseline (LlamaGen-style)", "baseline"), ("CTF (stage 1 + stage 2)", "ctf")):
        row = {}
        for m in cols:
            vals = [nll(db, kind, last, sd, km) if m == "NLL" else metric(db, kind, last, sd, m) for sd in seeds]
            row[m] = _ms([v for v in vals if v is not None])
        cpu = _ms([compute(db, kind, last, sd, km, "cpu_s") for sd in seeds])
        fl = _ms([compute(db, kind, last, sd, km, "flops") for sd in seeds])
        stats[kind] = row
        L.append(f"| {label} | {row['FD'][2]} | " + " | ".join(_pm(*row[m], m) for m in cols)
                 + f" | {_fmt(cpu[0])} | {_fmt(fl[0] / 1e12) if fl[2] else '-'} |")
    L += ["", _verdict(stats), ""]
    L += ["Paper, ImageNet 256², Table 1 (FID / IS, Inception-v3, 50k samples), for context only:", "",
          "| backbone | LlamaGen FID | +CTF FID | LlamaGen IS | +CTF IS |", "|---|---|---|---|---|"]
    L += [f"| LlamaGen-{b} | {f1} | {f2} | {i1} | {i2} |" for b, f1, i1, f2, i2 in PAPER_TABLE1]
    L += ["", "![convergence in steps and in training compute](convergence.png)", ""]
    if (res / "samples_ctf_vs_baseline.png").exists():
        L += ["![samples: CTF left, baseline right; one row per class](samples_ctf_vs_baseline.png)", ""]
    # ---- convergence -------------------------------------------------------------------------------------
    L += ["## Convergence (paper Fig. 2): steps and compute", ""]
    L += ["| step | model | seeds | FD ↓ | ClassAcc ↑ | held-out NLL ↓ | train CPU-s | train TFLOP |",
          "|---|---|---|---|---|---|---|---|"]
    for k in p["checkpoints"]:
        for kind in ("baseline", "ctf"):
            fd = _ms([metric(db, kind, k, sd, "FD") for sd in seeds])
            ca = _ms([metric(db, kind, k, sd, "ClassAcc") for sd in seeds])
            nl = _ms([nll(db, kind, k, sd, km) for sd in seeds])
            cpu = _ms([compute(db, kind, k, sd, km, "cpu_s") for sd in seeds])
            fl = _ms([compute(db, kind, k, sd, km, "flops") for sd in seeds])
            L.append(f"| {k} | {kind} | {fd[2]} | {_pm(*fd, 'FD')} | {_pm(*ca, 'ClassAcc')} | {_pm(*nl, 'NLL')} | "
                     f"{_fmt(cpu[0])} | {_fmt(fl[0] / 1e12) if fl[2] else '-'} |")
    L += ["", _crossing(db, seeds, km), ""]
    flat = _flattening(db, seeds)
    if flat:
        L += [flat, ""]
    # ---- peers ---------------------------------------------------------------------------------------------
    L += _peers(db, km)
    if (res / "samples_methods.png").exists():
        L += ["Samples of every method (`--phases grids`): the same sampling noise in every panel, one row per "
              "class.", "", "![samples of every method](samples_methods.png)", ""]
    L += _speed(db, res)
    (res / "report.md").write_text("\n".join(L) + "\n")
    plot(db, res, seeds, km)


def _provenance(db: dict) -> list[str]:
    inv = db["invocations"]
    L = ["Commands (each process writes its own results file; later ones resume the same work dir):", ""]
    L += [f"- `{i['command']}` — started {i['started']}, {i['threads']} torch thread(s), wall "
          f"{i['wall_s'] / 60:.1f} min, CPU {i['cpu_s'] / 60:.1f} min" for i in inv]
    machine = inv[-1]["machine"] if inv else "?"
    L += ["", f"Machine: {machine}. Wall times are inflated when the 2 cores were shared; CPU-seconds are each "
          "process's own.", ""]
    return L


def _setup(db: dict, km: str) -> list[str]:
    p, s = db["plan"], db["setup"]
    L = ["## Setup", ""]
    if s.get("data"):
        d = s["data"]
        L.append(f"- data: {d['train']} train images ({d['train_codes']} code sequences), {d['test']} test images, "
                 f"{len(d['classes'])} classes")
    tok = s.get("tokenizer")
    if tok:
        L.append(f"- tokenizer: VQ (ch {tok['vq']['ch']}, ch_mult {tok['vq']['ch_mult']}, no attention), K={tok['K']}, "
                 f"{tok['steps']} steps; test PSNR {tok['psnr_test_db']:.2f} dB, codebook usage "
                 f"{100 * tok['usage_test']:.1f}%")
    dtypes = sorted({r.get("dtype", "?") for r in db["runs"].values()})
    L.append(f"- models: `{p['preset']}` for baseline, stage 1 and stage 2 (bidirectional, cluster-restricted "
             f"head); {p['steps']} steps, batch {p['batch']}, AdamW lr {p['lr'] * p['batch'] / 256:.1e}, cosine with "
             f"{train_recipe(p['preset'], p['steps'])['warmup_steps']} warmup steps, no EMA; clusters: k-means K/32 "
             f"({km}); training dtype "
             f"{', '.join(dtypes)}")
    L.append(f"- sampling: CTF τ1 {S1.temperature}, τ2 {S2.temperature}, CFG {S1.cfg_scale} on stage 1 (paper Sec. "
             f"5.1); baseline τ {B.temperature}, CFG {B.cfg_scale} (LlamaGen); {p['n_head']} class-balanced images per score, the same sampling noise for every model")
    clf = s.get("classifier")
    if clf:
        L.append(f"- classifier for ClassAcc / IS-clf: held-out accuracy {clf['accuracy']:.3f} on {clf['count']} "
                 f"{clf['split']} images")
    L.append(f"- FD/KID/precision/recall on EfficientNet-Lite0 features at 64 px against the `{p['ref_split']}` "
             "split: **not FID**; compare rows of these tables only")
    return L + [""]


def _verdict(stats: dict) -> str:
    """Which differences exceed the seed spread (|Δmean| > std_a + std_b)."""
    b, c = stats.get("baseline"), stats.get("ctf")
    if not b or not c or b["FD"][2] < 2 or c["FD"][2] < 2:
        return "Fewer than two seeds per model so far: no spread to compare against yet."
    out = []
    for m in METRICS + ["NLL"]:
        (mb, sb, _), (mc, sc, _) = b[m], c[m]
        if any(math.isnan(x) for x in (mb, sb, mc, sc)):
            continue
        if mc == mb:
            out.append(f"{m}: equal")
            continue
        better = (mc < mb) if m in LOWER_BETTER else (mc > mb)
        beyond = abs(mc - mb) > sb + sc
        out.append(f"{m}: CTF {'better' if better else 'worse'}" + (" (beyond the seed spread)" if beyond
                                                                     else " (within the seed spread)"))
    return "Differences, CTF vs baseline (beyond the spread = |Δ mean| > std_CTF + std_baseline): " + "; ".join(out) + "."


def _interp_reach(xs: list[float], ys: list[float], target: float, lower_better: bool) -> float | None:
    """First x at which the curve reaches target (linear interpolation between checkpoints)."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        ok = y <= target if lower_better else y >= target
        if ok:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (x - x0) * (target - y0) / (y - y0) if y != y0 else x
    return None


def _crossing(db: dict, seeds: list[int], km: str) -> str:
    p = db["plan"]
    ks = p["checkpoints"]
    parts = []
    for m in ("FD", "ClassAcc"):
        base_final = _ms([metric(db, "baseline", ks[-1], sd, m) for sd in seeds])[0]
        ys = [_ms([metric(db, "ctf", k, sd, m) for sd in seeds])[0] for k in ks]
        cpus = [_ms([compute(db, "ctf", k, sd, km, "cpu_s") for sd in seeds])[0] for k in ks]
        fls = [_ms([compute(db, "ctf", k, sd, km, "flops") for sd in seeds])[0] for k in ks]
        base_cpu = _ms([compute(db, "baseline", ks[-1], sd, km, "cpu_s") for sd in seeds])[0]
        base_fl = _ms([compute(db, "baseline", ks[-1], sd, km, "flops") for sd in seeds])[0]
        if math.isnan(base_final) or any(math.isnan(y) for y in ys):
            continue
        step = _interp_reach(ks, ys, base_final, m == "FD")
        if step is None:
            parts.append(f"CTF does not reach the baseline's final {m} ({_fmt(base_final, m)}) within {ks[-1]} steps")
            continue
        cpu = _interp_reach(cpus, ys, base_final, m == "FD")
        fl = _interp_reach(fls, ys, base_final, m == "FD")
        parts.append(f"CTF reaches the baseline's final {m} ({_fmt(base_final, m)}) at step ~{step:.0f} "
                     f"({step / ks[-1]:.2f}x the steps), {cpu / base_cpu:.2f}x the baseline's training CPU-seconds "
                     f"and {fl / base_fl:.2f}x its training FLOPs" if cpu and fl else
                     f"CTF reaches the baseline's final {m} at step ~{step:.0f}")
    return ("Compute to match (mean curves, linear interpolation between checkpoints): " + "; ".join(parts) + ".") \
        if parts else ""


def _flattening(db: dict, seeds: list[int]) -> str:
    """The flattening criterion (held-out NLL gain < 1% over the last fifth of training): exact when the
    plan has a checkpoint at 4/5 of the steps, else a linear estimate from the last two checkpoints;
    plus the training-loss gain over the last fifth from the runs' logs (`--phases flatness`)."""
    p = db["plan"]
    ks, last = p["checkpoints"], p["steps"]
    out = []
    if len(ks) >= 2:
        k0 = round(0.8 * last) if round(0.8 * last) in ks else ks[-2]
        a = _ms([nll(db, "baseline", k0, sd, "") for sd in seeds])[0]
        b = _ms([nll(db, "baseline", last, sd, "") for sd in seeds])[0]
        if not (math.isnan(a) or math.isnan(b)):
            gain = (a - b) / a * (0.2 * last) / (last - k0)
            how = "measured" if k0 == round(0.8 * last) else "linear estimate from these two checkpoints"
            per = {}  # the same gain seed by seed, for its spread
            for sd in seeds:
                x, y = nll(db, "baseline", k0, sd, ""), nll(db, "baseline", last, sd, "")
                if x is not None and y is not None:
                    per[sd] = 100 * (x - y) / x * (0.2 * last) / (last - k0)
            by_seed = "" if len(per) < 2 else (
                " Per seed: " + ", ".join(f"s{sd} {g:.2f}%" for sd, g in per.items())
                + f" ({_pm(*_ms(list(per.values())), '')}%).")
            out.append(f"Baseline held-out NLL {a:.3f} at step {k0} -> {b:.3f} at {last}: {100 * gain:.2f}% over the "
                       f"last fifth of training ({how}; flattened means < 1%)."
                       + (" It rises: the model over-fits the training set." if gain < 0 else "") + by_seed)
    fl = db.get("flatness", {})
    groups: dict[str, list[float]] = {}
    for name, v in fl.items():
        if "_GPT-" in name:
            continue
        groups.setdefault(name.rsplit("_s", 1)[0], []).append(100 * v["gain_last_fifth"])
    if groups:
        w = next(iter(fl.values()))["window"]
        parts = [f"{k} {_pm(*_ms(v), '')}% ({len(v)} seed{'s' * (len(v) > 1)})" for k, v in sorted(groups.items())]
        out.append(f"Training-loss gain over the last fifth (mean loss of the {w} steps before step "
                   f"{round(0.8 * last)} vs before {last}): " + "; ".join(parts) + ".")
    return " ".join(out)


def _peers(db: dict, km: str) -> list[str]:
    E = db["entries"]
    last = db["plan"]["steps"]
    co, fi = ctf_runs(km, 0)
    rows = [("CTF, stage-2 network (default)", f"head/ctf/{last}/s0", (co, fi)),
            ("stage 1 + random member of each cluster (MASC decoding, no stage 2)", "peer/random-member/s0", (co,)),
            ("stage 1 + member nearest the centroid (no stage 2)", "peer/centroid-member/s0", (co,)),
            ("IAR: baseline + cluster-level loss, balanced clusters", "peer/iar/s0", (run_name("baseline", None, 0, "_iar"),)),
            ("AR baseline", f"head/baseline/{last}/s0", (run_name("baseline", None, 0),))]
    for name in sorted({k.split("/")[2] for k in E if k.startswith("peer/map/")}):
        rows.insert(-1, (f"CTF with {name.replace('-', ' ')} clusters", f"peer/map/{name}/s0",
                         ctf_runs(name, 0)))
    if not any(k.startswith("peer/") for k in E):
        return ["## Peer methods", "", "(not run yet: `ctf_study.py --phases peers --seeds 0`)", ""]
    L = ["## Peer methods and ablations (seed 0, same schedule; the headline's std gives the noise level)", "",
         "| method | FD ↓ | KID ↓ | Prec ↑ | Rec ↑ | ClassAcc ↑ | IS-clf ↑ | sampling s / image | train CPU-s |",
         "|---" * 9 + "|"]
    for label, key, names in rows:
        e = E.get(key)
        if e is None:
            L.append(f"| {label} | (not run) |" + " - |" * 7)
            continue
        L.append(f"| {label} | " + " | ".join(_fmt(e["metrics"].get(m), m) for m in METRICS)
                 + f" | {e['sample_s'] / e['n']:.4f} | {_fmt(_train_cpu(db, names, last))} |")
    return L + [""]


def _train_cpu(db: dict, names: tuple[str, ...], step: int) -> float:
    vals = [db["runs"].get(n, {}).get("cpu_s", {}).get(str(step)) for n in names]
    return float("nan") if any(v is None for v in vals) else float(sum(vals))


def _speed_runs(db: dict, name: str) -> tuple[str, ...]:
    """The runs behind a speed row ("CTF GPT-small", "baseline GPT-tiny")."""
    p = db["plan"]
    kind, preset = name.split(" ", 1)
    tag = "" if preset == p["preset"] else f"_{preset}"
    km = f"kmeans-{default_num_coarse(db['setup'].get('tokenizer', {}).get('K', 4096))}"
    return ctf_runs(km, 0, tag) if kind == "CTF" else (run_name("baseline", None, 0, tag),)


def _speed_verdict(rows: dict) -> str:
    """Each pair where one model is at least as good on FD and ClassAcc as another: their speed ratio."""
    out = []
    for a, ra in rows.items():
        for b, rb in rows.items():
            if a == b or a.split()[0] == b.split()[0] or None in (ra["FD"], rb["FD"], ra["ClassAcc"], rb["ClassAcc"]):
                continue
            if ra["FD"] <= rb["FD"] and ra["ClassAcc"] >= rb["ClassAcc"]:
                out.append(f"{a} is at least as good as {b} on both FD and ClassAcc and samples "
                           f"{ra['images_per_s'] / rb['images_per_s']:.2f}x as fast")
    if not out:
        return ("No CTF model is at least as good as a baseline on both FD and ClassAcc, nor the other way round: "
                "each trades one score for the other, so there is no model of equal quality to compare speeds with.")
    return "Equal-or-better quality against speed: " + "; ".join(out) + "."


def _speed(db: dict, res: Path) -> list[str]:
    sp = db.get("speed")
    if not sp:
        return ["## Quality against sampling cost", "", "(not run yet: `ctf_study.py --phases speed --seeds 0`)", ""]
    L = ["## Quality against sampling cost (seed 0; images/s measured side by side in one process)", "",
         f"Batch {sp['batch']}, {sp['threads']} thread(s), {sp['dtype']}, median of {sp['repeats']} batches, "
         f"VQ decode {sp['decode']}.", "",
         "| model | params | images/s ↑ | FD ↓ | ClassAcc ↑ | train CPU-s |", "|---|---|---|---|---|---|"]
    for name, r in sp["rows"].items():
        L.append(f"| {name} | {r['params'] / 1e6:.2f}M | {r['images_per_s']:.1f} | {_fmt(r['FD'], 'FD')} | "
                 f"{_fmt(r['ClassAcc'], 'ClassAcc')} | {_fmt(_train_cpu(db, _speed_runs(db, name), db['plan']['steps']))} |")
    L += ["", _speed_verdict(sp["rows"]), "", "![quality against sampling speed](quality_vs_speed.png)", ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, m in zip(axes, ("FD", "ClassAcc")):
        for name, r in sp["rows"].items():
            ax.scatter(r["images_per_s"], r[m], color="tab:red" if name.startswith("CTF") else "tab:blue")
            ax.annotate(name, (r["images_per_s"], r[m]), fontsize=8)
        ax.set_xlabel("images/s (CPU, 1 thread)")
        ax.set_ylabel(m + (" ↓" if m == "FD" else " ↑"))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(res / "quality_vs_speed.png", dpi=90)
    plt.close(fig)
    return L


def plot(db: dict, res: Path, seeds: list[int], km: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = db["plan"]["checkpoints"]
    panels = [("FD", "FD-EffNetLite0 ↓"), ("ClassAcc", "class accuracy ↑"), ("NLL", "held-out NLL ↓")]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for row, xkind in enumerate(("steps", "cpu_s")):
        for ax, (m, title) in zip(axes[row], panels):
            for kind, color in (("baseline", "tab:blue"), ("ctf", "tab:red")):
                xs, ys, es = [], [], []
                for k in ks:
                    vals = [nll(db, kind, k, sd, km) if m == "NLL" else metric(db, kind, k, sd, m) for sd in seeds]
                    mean, std, n = _ms([v for v in vals if v is not None])
                    x = k if xkind == "steps" else _ms([compute(db, kind, k, sd, km, "cpu_s") for sd in seeds])[0]
                    if n and not math.isnan(x):
                        xs.append(x / (1 if xkind == "steps" else 60))
                        ys.append(mean)
                        es.append(0 if math.isnan(std) else std)
                if xs:
                    ax.errorbar(xs, ys, yerr=es, fmt="o-", color=color, capsize=3,
                                label="CTF (stage 1 + stage 2)" if kind == "ctf" else "AR baseline")
            final = _ms([nll(db, "baseline", ks[-1], sd, km) if m == "NLL" else metric(db, "baseline", ks[-1], sd, m)
                         for sd in seeds])[0]
            if not math.isnan(final):  # where CTF reaches the baseline's final score (the question of Fig. 2)
                ax.axhline(final, color="tab:blue", ls=":", lw=1)
            ax.set_title(title)
            ax.set_xlabel("training step" if xkind == "steps" else "training compute (CPU-minutes, 1 thread)")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"{db['plan']['data']}: CTF vs baseline, mean ± std over {len(seeds)} seed(s)")
    fig.tight_layout()
    fig.savefig(res / "convergence.png", dpi=90)
    plt.close(fig)
