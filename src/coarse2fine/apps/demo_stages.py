"""The demo's three transformers, trained side by side as one-thread processes (or in this process
when there is one worker), with one progress line at a time for all of them.

Each stage is an ordinary `training.gpt.train` run directory under the demo's folder; a child's
own output goes to <run>/train.log so the console shows the demo's lines only. An interrupted demo
resumes every stage from its state.pt on the next call.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

from coarse2fine import distributed
from coarse2fine.config import TrainConfig, UserError

STAGES = ("baseline", "fine", "coarse")  # longest first: the last to start is the shortest
# Three one-thread stages on two cores: an equal share keeps the longest (the baseline, whose head scores all K
# codes) at 2/3 of a core until the CTF stages end, and then the second core idles while it finishes alone. At
# this niceness the later stages give it a core of its own and share the other. With two CTF stages of about equal
# cost (both demos) that is never slower than equal shares, and faster the more the baseline costs: in the colour
# demo (GPT-tiny, K = 4096) it costs about as much as both CTF stages together.
LATER_STAGES_NICE = 5
POLL_S = 2.0
PRINT_EVERY_S = 30.0


def train_one(stage: str, out: Path, plan, tcfg: TrainConfig, meta: dict, clusters: int, progress: bool) -> dict:
    """Train (or resume, or just read back) one stage of the demo; returns its summary dict."""
    from coarse2fine.stages import STAGE_SPECS, stage_config
    from coarse2fine.training.gpt import train

    run = out / stage
    if (run / "summary.json").exists():
        return json.loads((run / "summary.json").read_text())
    drop = {k: plan.dropout for k in ("token_dropout_p", "resid_dropout_p", "ffn_dropout_p")}
    mcfg = stage_config(plan.gpt_preset, stage, meta["codebook_size"], clusters, meta["num_classes"], meta["grid"],
                        **drop)
    spec = STAGE_SPECS[stage]
    return train(stage, mcfg, TrainConfig(**asdict(tcfg)), out / "codes_train", run,
                 coarse_map=out / "coarse_map.safetensors" if spec.needs_coarse_map else None,
                 heldout_dir=out / "codes_test", resume=(run / "state.pt").exists(), progress=progress,
                 restricted=spec.restricted_head and plan.head == "restricted")


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this process (as a kill would: the run resumes from its last checkpoint) once `parent` is gone,
    e.g. killed with -9, which gives it no chance to stop its workers. A watcher thread polls getppid:
    portable, and it costs a wake-up per second."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _child(stage: str, out: str, plan, tcfg: TrainConfig, meta: dict, clusters: int, parent: int,
           nice: int = 0) -> None:
    """Entry point of a spawned stage process: one thread, output into <run>/train.log; it ends with the demo.
    nice: added to its niceness (LATER_STAGES_NICE for the stages after the longest when cores are short)."""
    exit_with_parent(parent)
    if nice:
        os.nice(nice)
    run = Path(out) / stage
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / "train.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    distributed.configure_threads(1)
    train_one(stage, Path(out), plan, tcfg, meta, clusters, progress=False)
    # this process's CPU seconds: with the wall time they show how much the machine's other work cost it
    (run / "demo_cpu.json").write_text(json.dumps({"cpu_s": time.process_time(), "nice": os.nice(0)}) + "\n")


def steps_done(run: Path) -> int:
    """Last step logged in run/metrics.jsonl (0 when nothing is there yet)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue  # a line being written right now
    return 0


def train_stages(out: Path, plan, tcfg: TrainConfig, meta: dict, clusters: int, workers: int, bar) -> dict:
    """Train the coarse, fine and baseline models with `workers` processes at once.

    bar: the demo's Progress; gets one line every PRINT_EVERY_S and one per finished stage.
    Returns {stage: summary} in the order coarse, fine, baseline."""
    summaries: dict[str, dict] = {}
    if workers <= 1:
        for i, stage in enumerate(STAGES[::-1]):
            summaries[stage] = train_one(stage, out, plan, tcfg, meta, clusters, progress=False)
            bar.update((i + 1) / len(STAGES), f"{stage} model done")
    else:
        _run_parallel(out, plan, tcfg, meta, clusters, workers, bar, summaries)
    return {s: summaries[s] for s in ("coarse", "fine", "baseline")}


def _run_parallel(out, plan, tcfg, meta, clusters, workers, bar, summaries) -> None:
    ctx = mp.get_context("spawn")  # fork would copy an initialised OpenMP pool into the child
    pending, running = list(STAGES), {}
    total = tcfg.steps * len(pending)
    cores = distributed.allowed_cores()
    share = min(workers, len(STAGES)) > cores  # more stages at once than cores: the longest goes first
    together = workers >= len(STAGES)
    last_print = time.time()
    try:
        while pending or running:
            while pending and len(running) < workers:
                stage = pending.pop(0)
                nice = LATER_STAGES_NICE if share and stage != STAGES[0] else 0
                p = ctx.Process(target=_child, args=(stage, str(out), plan, tcfg, meta, clusters, os.getpid(), nice),
                                name=f"demo-{stage}")
                p.start()
                running[stage] = p
            time.sleep(POLL_S)
            for stage, p in list(running.items()):
                if p.is_alive():
                    continue
                p.join()
                del running[stage]
                if p.exitcode != 0:
                    raise UserError(f"training the {stage} model failed (exit code {p.exitcode}); "
                                    f"see {out / stage / 'train.log'}, then rerun the demo to resume")
                summaries[stage] = json.loads((out / stage / "summary.json").read_text())
                cpu = out / stage / "demo_cpu.json"
                if cpu.is_file():
                    summaries[stage].update(json.loads(cpu.read_text()))  # cpu_s, nice
                bar.update(_fraction(out, total, together), f"{stage} model done: held-out token accuracy "
                                                  f"{summaries[stage].get('heldout', {}).get('acc', float('nan')):.3f}")
            if running and time.time() - last_print >= PRINT_EVERY_S:
                last_print = time.time()
                steps = ", ".join(f"{s} {steps_done(out / s)}/{tcfg.steps}" for s in running)
                bar.update(_fraction(out, total, together), steps)
    finally:
        for p in running.values():  # only on an error or Ctrl-C: stop the stages this call started
            if p.is_alive():
                p.terminate()
            p.join()


def _fraction(out: Path, total: int, together: bool = False) -> float:
    """The training phase's progress for the time-left estimate: the steps done over all the steps, or, when every
    stage runs at once (together), the least advanced stage's share: the baseline costs about twice a CTF stage, so
    the summed steps ran ahead of the time and the estimate came out a third short (14 min left at 6 min into a
    colour demo that needed 25 more)."""
    if together:
        return min(steps_done(out / s) for s in STAGES) / max(1, total // len(STAGES))
    return sum(steps_done(out / s) for s in STAGES) / max(1, total)
