"""The one-shot GPU run: proves the GPU code paths and measures them, inside a 10-minute budget.

    python benchmarks/gpu/run.py --out DIR            # an H100/H200 (see README.md)
    python benchmarks/gpu/run.py --toy --out DIR      # a CPU, toy sizes, about a minute (CI runs this)

Every work item (plan.ITEMS) runs in its own process with a time cap cut to what is left of the
global budget; an item that fails, crashes or runs out of time is recorded with its error and the
run goes on. DIR/results.json and DIR/results.md are rewritten after every item; DIR/run.log holds
every item's output. Heavy files (checkpoints, the synthetic code store) go to --scratch.
This process imports no torch, so nothing a GPU does can take the bookkeeping down with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from phases import item_path  # noqa: E402  (phases.py imports torch only inside its functions)
from plan import DEFAULT_BUDGET_S, SIZES, items_for  # noqa: E402
from report import render  # noqa: E402

MIN_ITEM_S = 15  # an item is not started with less time than this left


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from the parent ids in /proc (torchrun starts its workers in
    sessions of their own, so a process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))

    def below(pid: int) -> list[int]:
        return [d for c in children.get(pid, []) for d in (c, *below(c))]
    return below(root)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, finished but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the item's whole process tree (listed before anything dies: orphans leave the tree),
    then SIGKILL whatever still runs after 5 s."""
    tree = [proc.pid] + _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
            if _alive(pid):
                os.kill(pid, sig)
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline and (proc.poll() is None or any(_alive(p) for p in tree[1:])):
            time.sleep(0.2)
        if proc.poll() is not None and not any(_alive(p) for p in tree[1:]):
            return
    proc.wait()


def item_command(phase: str, item: str, args, scratch: Path, result: Path) -> list[str]:
    flags = ["--scratch", str(scratch)] + (["--toy"] if args.toy else []) + (["--toy-compile"] if args.toy_compile else [])
    if phase == "train":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                str(HERE / "train_worker.py"), item, "--result", str(result)] + flags
    return [sys.executable, str(HERE / "phases.py"), phase, item] + flags


def run_item(phase: str, item: str, timeout: float, args, scratch: Path, log) -> dict:
    result = item_path(scratch, phase, item)
    result.unlink(missing_ok=True)
    cmd = item_command(phase, item, args, scratch, result)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(HERE)] +
                                                        ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
           "PYTHONUNBUFFERED": "1"}
    if args.toy:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the toy run is the CPU path, also on a machine with a GPU
    log.write(f"\n===== {phase} {item} (cap {timeout:.0f} s): {shlex.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else "error"
        error = None if rc == 0 else f"exited with code {rc}; see run.log ({phase} {item})"
    except subprocess.TimeoutExpired:
        _stop(proc)
        rc, status, error = None, "timeout", f"stopped after its time cap of {timeout:.0f} s"
    wall = time.perf_counter() - t0
    rec = {"status": status, "wall_s": round(wall, 2), "cap_s": round(timeout, 1), "returncode": rc}
    if error:
        rec["error"] = error
    try:  # a cut-off training item keeps the stages it finished
        rec["result"] = json.loads(result.read_text())
    except (OSError, ValueError):
        if status == "ok":
            rec.update(status="error", error=f"finished but wrote no result ({result.name})")
    return rec


def write_outputs(out: Path, results: dict) -> None:
    try:
        md = render(results)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # the JSON still gets written
        md = f"# GPU run\n\nresults.md could not be rendered ({type(e).__name__}: {e}); see results.json.\n"
    for name, text in (("results.json", json.dumps(results, indent=1, default=str) + "\n"), ("results.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_run", help="folder for results.json, results.md, run.log (default gpu_run)")
    ap.add_argument("--toy", action="store_true", help="CPU, toy sizes, gpu-marked tests skipped (about a minute)")
    ap.add_argument("--toy-compile", action="store_true", help="toy run: also time the compiled decode step "
                                                               "(a cold CPU compile adds about a minute)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help=f"wall-clock budget of the whole run in seconds (default {DEFAULT_BUDGET_S})")
    ap.add_argument("--only", nargs="+", default=None, metavar="PHASE",
                    help="run only these phases (env, tests, sample, train); the env probe always runs")
    ap.add_argument("--scratch", default="", help="folder for checkpoints and the code store (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.toy_compile and not args.toy:
        ap.error("--toy-compile goes with --toy")
    start, t0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="c2f_gpu_run_"))
    (scratch / "items").mkdir(parents=True, exist_ok=True)
    size_name = "toy" if args.toy else "full"
    size = dict(SIZES[size_name], compile_mode="default" if args.toy_compile else SIZES[size_name]["compile_mode"])
    plan = items_for(size_name, size["sample_presets"], size["compile_mode"])
    if args.only:
        plan = [p for p in plan if p[0] in set(args.only) | {"env"}]
    results = {"command": shlex.join([sys.executable, *sys.argv]), "start": start, "size": size_name,
               "sizes": size, "budget_s": args.budget_s, "scratch": str(scratch), "phases": {},
               "plan": [{"phase": p, "item": i, "cap_s": c} for p, i, c in plan]}
    write_outputs(out, results)
    with open(out / "run.log", "a") as log:
        for phase, item, cap in plan:
            left = args.budget_s - (time.perf_counter() - t0)
            ph = results["phases"].setdefault(phase, {"items": {}, "wall_s": 0.0})
            if left < MIN_ITEM_S:
                ph["items"][item] = {"status": "skipped", "error": f"budget spent ({left:.0f} s left)"}
            else:
                print(f"[{time.perf_counter() - t0:6.1f} s] {phase} {item} (cap {min(cap, left):.0f} s) ...", flush=True)
                rec = run_item(phase, item, min(cap, left), args, scratch, log)
                ph["items"][item] = rec
                ph["wall_s"] = round(ph["wall_s"] + rec["wall_s"], 2)
                print(f"[{time.perf_counter() - t0:6.1f} s] {phase} {item}: {rec['status']} in {rec['wall_s']:.1f} s"
                      + (f" ({rec['error']})" if rec.get("error") else ""), flush=True)
            results["wall_s"] = round(time.perf_counter() - t0, 2)
            write_outputs(out, results)
    results["end"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_outputs(out, results)
    print((out / "results.md").read_text())
    bad = [f"{p}/{i}" for p, ph in results["phases"].items() for i, r in ph["items"].items() if r["status"] != "ok"]
    print(f"wrote {out / 'results.json'} and results.md in {results['wall_s']:.0f} s; "
          + (f"items not ok: {', '.join(bad)}" if bad else "every item ok"))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
