#!/usr/bin/env python3
"""Time the full `coarse2fine demo` from scratch in a temp folder and record it.

Records wall time, the CPU (lscpu model and flags), the dtype and threads the demo chose, its phase
times and the report's scores (FD, KID, class accuracy of CTF and baseline), plus `uptime` before
and after (the machine may be shared: say how busy it was). Appends to
benchmarks/results/demo/runs.json and rewrites runs.md; --keep copies report.md and the sample grid.

    PYTHONPATH=src python benchmarks/demo/run.py --label "native"               # auto dtype
    PYTHONPATH=src python benchmarks/demo/run.py --emulate-avx2 --label "AVX2"  # AVX2-only CPU, fp32
    PYTHONPATH=src python benchmarks/demo/run.py --emulate-avx2 --busy          # + one competing process
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "demo"
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_info() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    keep = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"model": fields.get("Model name", "?").strip(), "cpus": int(fields.get("CPU(s)", "0").strip() or 0),
            "flags": keep}


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[-1].strip()


def run(args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if args.emulate_avx2:
        env.update(AVX2_ENV)
    extra = args.demo_args.split() if args.demo_args else []
    with tempfile.TemporaryDirectory(prefix="c2f-demo-") as tmp:
        out = args.keep_dir or Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "coarse2fine.cli", "demo", "--out", str(out)] + extra
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
        row = {"label": args.label, "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
               "cpu": cpu_info(), "emulated_avx2": args.emulate_avx2, "busy": args.busy, "demo_args": extra,
               "load_before": uptime()}
        try:
            t, c = time.time(), _children_cpu()
            rc = subprocess.run(cmd, env=env).returncode
            row["wall_s"], row["cpu_total_s"] = time.time() - t, round(_children_cpu() - c, 1)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        row["load_after"] = uptime()
        if rc != 0:
            raise SystemExit(f"the demo failed with exit code {rc}")
        rep = json.loads((out / "report.json").read_text())
        ev = rep["evaluation"]
        row.update(cpu_s={k: round(v, 1) for k, v in rep.get("cpu_s", {}).items()},
                   stage_cpu_s={st: round(rep["models"][st].get("cpu_s", 0.0), 1) for st in rep["models"]},
                   idle_estimate_s=idle_estimate(rep, cores=2))
        row.update(dtype=rep["models"]["coarse"].get("dtype"), threads=rep.get("threads"),
                   stage_workers=rep.get("stage_workers"), steps=rep["plan"]["steps"], batch=rep["plan"]["batch_size"],
                   times_s={k: round(v, 1) for k, v in rep["times_s"].items()},
                   scores={n: {k: ev[n][k] for k in ("fd", "kid", "class_accuracy", "n", "m")} for n in ("ctf", "baseline")})
        if args.keep:
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "samples_ctf_vs_baseline.png", RESULTS / "samples_ctf_vs_baseline.png")
            shutil.copyfile(out / "report.md", RESULTS / "report.md")
    return row


def idle_estimate(rep: dict, cores: int = 2) -> float | None:
    """Wall seconds the same work would take on an otherwise idle machine with `cores` cores, from
    the CPU seconds it used: the models phase as its one-thread stage processes sharing the cores
    fairly (share_cores), every other phase as measured on one thread (its CPU seconds)."""
    cpu, stages = rep.get("cpu_s"), [m.get("cpu_s") for m in rep["models"].values()]
    if not cpu or None in stages:
        return None
    other = sum(v for k, v in cpu.items() if k not in ("models", "total"))
    return round(other + share_cores(stages, cores), 1)


def share_cores(work: list[float], cores: int) -> float:
    """Wall seconds for one-thread jobs of `work` CPU seconds started together on `cores` cores, each
    running at min(1, cores / jobs left): the last job alone leaves the other cores idle, which the
    plain sum / cores does not count."""
    left, t = sorted(work), 0.0
    while left:
        rate = min(1.0, cores / len(left))
        t += left[0] / rate
        left = [w - left[0] for w in left[1:]]
    return t


def render(rows: list[dict]) -> str:
    lines = ["# `coarse2fine demo` wall time", "",
             "Full demo from scratch (`benchmarks/demo/run.py`), install excluded. Emulated AVX2 rows run an "
             "AVX512-BF16 CPU with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (fp32); rows without avx512 "
             "flags ran on a real AVX2-only CPU (fp32 chosen by the demo). Busy: beside one "
             "`python -c 'while True: pass'`. Load: `uptime` 1/5/15-min averages before -> after (the machine is "
             "shared; a load above ~1 per core means other work competed).", "",
             "Idle 2-core estimate: the run's CPU seconds laid out on 2 otherwise idle cores (models: the three "
             "stage processes' CPU seconds / 2; other phases: their CPU seconds on one thread), which is what "
             "the wall time would be without the other engineers' jobs on this shared machine.", "",
             "| date (UTC) | label | CPU flags | dtype | steps x batch | workers x threads | busy | wall | "
             "idle 2-core estimate | models wall | CTF acc | base acc | CTF FD / KID | base FD / KID | "
             "load before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"]
        flags = ",".join(r["cpu"]["flags"]) + (" (emulated AVX2)" if r["emulated_avx2"] else "")
        acc = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        est = "n/a" if r.get("idle_estimate_s") is None else f"{r['idle_estimate_s'] / 60:.1f} min"
        lines.append(f"| {r['date_utc']} | {r['label']} | {flags} | {r['dtype']} | {r['steps']} x {r.get('batch', 64)} | "
                     f"{r['stage_workers']} x 1 "
                     f"(then {r['threads']}) | {'yes' if r['busy'] else 'no'} | {r['wall_s'] / 60:.1f} min | "
                     f"{est} | "
                     f"{r['times_s'].get('models', 0) / 60:.1f} min | {acc(s['ctf']['class_accuracy'])} | "
                     f"{acc(s['baseline']['class_accuracy'])} | {s['ctf']['fd']:.0f} / {s['ctf']['kid']:.3f} | "
                     f"{s['baseline']['fd']:.0f} / {s['baseline']['kid']:.3f} | {r['load_before']} -> {r['load_after']} |")
    lines += ["", f"CPU: {rows[-1]['cpu']['model']}, {rows[-1]['cpu']['cpus']} CPUs." if rows else ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="")
    ap.add_argument("--emulate-avx2", action="store_true", help="AVX2-only kernels (the demo then picks fp32)")
    ap.add_argument("--busy", action="store_true", help="run beside one competing CPU-bound process")
    ap.add_argument("--demo-args", default="", help="extra flags for `coarse2fine demo`, e.g. '--quick'")
    ap.add_argument("--keep", action="store_true", help="copy report.md and the sample grid to the results folder")
    ap.add_argument("--keep-dir", type=Path, help="write the demo here (kept) instead of a temp folder")
    ap.add_argument("--results", type=Path, default=RESULTS / "runs.json")
    args = ap.parse_args()
    row = run(args)
    rows = json.loads(args.results.read_text()) if args.results.is_file() else []
    rows.append(row)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=1) + "\n")
    args.results.with_suffix(".md").write_text(render(rows))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
