#!/usr/bin/env python3
"""Thread policies under one competing CPU-bound process: which keeps the demo's training fast?

Workload: the demo's step (GPT-small, batch 64, 8x8 grid, forward + backward) repeated --steps
times in a fresh process. Policies, each on an idle machine and beside `python -c 'while True: pass'`:
  2 threads (OpenMP default, active wait) | 2 threads, OMP_WAIT_POLICY=PASSIVE | 1 thread |
  auto (distributed.configure_threads: threads from the free cores)
and the demo's three models: one after another with 2 threads vs three one-thread processes at once.
Writes benchmarks/results/demo/threads.{json,md}; records `uptime` before each row (shared machines).

    PYTHONPATH=src python benchmarks/demo/threads.py [--steps 6] [--out benchmarks/results/demo]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def work(steps: int, threads: int | None) -> None:
    """The timed job (child process): prints elapsed seconds of `steps` training steps."""
    import torch

    from coarse2fine.distributed import configure_threads
    from coarse2fine.models import Transformer, stage_config
    from coarse2fine.stages import stage_loss, stage_spec

    n = configure_threads(threads)
    torch.manual_seed(0)
    m = Transformer(stage_config("GPT-small", "coarse", 4096, 128, 10, 8)).train()
    tokens, cond, targets = torch.randint(0, 128, (64, 63)), torch.randint(0, 10, (64,)), torch.randint(0, 128, (64, 64))
    stage_loss(m, stage_spec("coarse"), tokens, cond, targets)[0].backward()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        stage_loss(m, stage_spec("coarse"), tokens, cond, targets)[0].backward()
    print(json.dumps({"seconds": time.perf_counter() - t, "threads": n}))


def _job(steps: int, threads: int | None, env: dict) -> subprocess.Popen:
    args = [sys.executable, __file__, "--work", "--steps", str(steps)] + ([] if threads is None else ["--threads", str(threads)])
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)


def _wait(p: subprocess.Popen) -> dict:
    out, _ = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"job failed with exit code {p.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def measure(steps: int) -> list[dict]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    base["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + base.get("PYTHONPATH", "")
    single = [("2 threads (OpenMP default)", 2, {}), ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
              ("1 thread", 1, {}), ("auto: configure_threads() (free cores)", None, {})]
    rows = []
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(1.0 if busy else 0.0)  # let the competitor show up in /proc/stat
            for name, threads, extra in single:
                load = _uptime()
                r = _wait(_job(steps, threads, {**base, **extra}))
                rows.append({"policy": name, "busy": busy, "jobs": 1, "seconds": r["seconds"], "threads": r["threads"],
                             "load": load})
                print(rows[-1], flush=True)
            load = _uptime()
            t = time.perf_counter()
            for _ in range(3):
                _wait(_job(steps, 2, base))
            rows.append({"policy": "3 models one after another, 2 threads", "busy": busy, "jobs": 3,
                         "seconds": time.perf_counter() - t, "threads": 2, "load": load})
            print(rows[-1], flush=True)
            load = _uptime()
            t = time.perf_counter()
            for p in [_job(steps, 1, base) for _ in range(3)]:
                _wait(p)
            rows.append({"policy": "3 models at once, 1 thread each (the demo)", "busy": busy, "jobs": 3,
                         "seconds": time.perf_counter() - t, "threads": 1, "load": load})
            print(rows[-1], flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return rows


def table(rows: list[dict], steps: int) -> str:
    idle = {r["policy"]: r["seconds"] for r in rows if not r["busy"]}
    ref1 = idle["2 threads (OpenMP default)"]
    lines = [f"# Thread policies beside one competing CPU-bound process", "",
             f"Workload: {steps} GPT-small training steps (batch 64, forward + backward) per job, fresh process. "
             "'vs idle' = busy time / the same policy idle; 'vs best idle' = busy time / the idle 2-thread time "
             "(3-job rows: / the idle 3-at-once time). Load = `uptime` 1/5/15-min averages before the row.", "",
             "| policy | jobs | threads | idle s | busy s | vs idle | vs best idle | load idle | load busy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["busy"]:
            continue
        b = next(x for x in rows if x["busy"] and x["policy"] == r["policy"])
        best = ref1 if r["jobs"] == 1 else min(x["seconds"] for x in rows if not x["busy"] and x["jobs"] == 3)
        lines.append(f"| {r['policy']} | {r['jobs']} | {b['threads']} (idle {r['threads']}) | {r['seconds']:.1f} | "
                     f"{b['seconds']:.1f} | {b['seconds'] / r['seconds']:.2f}x | {b['seconds'] / best:.2f}x | "
                     f"{r['load']} | {b['load']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo")
    args = ap.parse_args()
    if args.work:
        work(args.steps, args.threads)
        return 0
    rows = measure(args.steps)
    env = {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps({"env": env, "steps": args.steps, "rows": rows}, indent=1) + "\n")
    md = table(rows, args.steps) + f"\nEnvironment: {env}; cores: {os.cpu_count()}.\n"
    (args.out / "threads.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
