"""The training items of the GPU run, started by run.py under torchrun --nproc_per_node 1:

  cli      `coarse2fine train` (the CLI's own code path) for stage 1, stage 2 and the baseline on a
           synthetic code store, then once more with --fsdp; tokens/s from a step clock hooked on the
           optimizer (the trainer's own figure also counts start-up and the final checkpoint), peak
           memory around each call.
  engines  one training step per stage under no wrapper, DDP and FSDP2 on a world-size-1 process
           group (nccl on CUDA, gloo on CPU), alternating rounds: what the wrappers cost on one GPU.
           Needed because at world size 1 the trainer (coarse2fine.parallel.wrap_model) leaves the
           model unwrapped, --fsdp or not, so the cli item alone never runs DDP or FSDP.

Writes its results after every stage to --result (JSON), so a cut-off run keeps what it finished.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from coarse2fine.bench import speed as bench
from coarse2fine.stages import stage_spec
from coarse2fine.bench.gpu import (StepClock, engine_train_bench, init_single_process_group, read_json,
                                   write_random_coarse_map, write_random_code_store)
from coarse2fine.bench.runs import DTYPES
from coarse2fine.cli import main as cli_main
from coarse2fine.config import UserError
from coarse2fine.fileio import atomic_write_bytes

from phases import size_of

STAGES = ("coarse", "fine", "baseline")
# what one stage may raise without ending the others: library and torch errors (CUDA OOM, compile and
# collective failures are RuntimeErrors), bad input, a missing file
RECOVERABLE = (RuntimeError, ValueError, OSError, AssertionError, KeyError, TypeError, UserError)


def _error(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {e}"[:800], "traceback": traceback.format_exc()[-1500:]}


class Results:
    def __init__(self, path: str, header: dict):
        self.path, self.data = Path(path), {**header, "stages": []}

    def add(self, rec: dict) -> None:
        self.data["stages"].append(rec)
        atomic_write_bytes(self.path, (json.dumps(self.data, indent=1, default=str) + "\n").encode())


def run_cli(args, size: dict, dev: torch.device, res: Results) -> None:
    data = Path(args.scratch) / "train_data"
    store = data / "codes"
    if not (store / "meta.json").exists():
        write_random_code_store(store, size["store_rows"], size["K"], size["grid"], size["num_classes"])
        write_random_coarse_map(data / "coarse_map.safetensors", size["K"], size["C"])
    tokens = size["train_batch"] * size["grid"] ** 2
    runs = [(s, size["train_steps"], False) for s in STAGES] + [("baseline", size["fsdp_cli_steps"], True)]
    for stage, steps, fsdp in runs:
        out = Path(args.scratch) / "train_runs" / f"{stage}{'_fsdp' if fsdp else ''}"
        argv = ["train", "--stage", stage, "--codes", str(store), "--preset", size["train_preset"],
                "--steps", str(steps), "--batch-size", str(size["train_batch"]), "--dtype", size["dtype"],
                "--out", str(out), "--device", dev.type, "--no-progress", "--log-every", str(steps),
                "--ckpt-every", str(steps)]
        argv += ["--coarse-map", str(data / "coarse_map.safetensors")] if stage != "baseline" else []
        argv += ["--head", "full"] if stage_spec(stage).restricted_head else []
        argv += ["--fsdp"] if fsdp else []
        rec = {"stage": stage, "flag": "--fsdp" if fsdp else "", "steps": steps, "batch": size["train_batch"],
               "tokens_per_step": tokens, "argv": " ".join(argv)}
        t0 = time.perf_counter()
        try:
            with bench.peak_memory(dev) as pm, StepClock() as clock:
                rec["returncode"] = cli_main(argv)
            rec.update(clock.summary(tokens, skip=min(5, steps // 2)))
            rec.update(peak_mib=pm.peak_mib, memory_kind=pm.kind)
            s = read_json(out / "summary.json")
            rec.update(final_loss=s.get("loss"), trainer_dtype=s.get("dtype"), trainer_wall_s=s.get("wall_s"),
                       trainer_tokens_per_s=s.get("tokens_per_s"), params=s.get("params"))
            rec["process_group"] = torch.distributed.is_initialized()  # False: world 1 trains unwrapped
            if rec["returncode"] != 0:
                rec["error"] = f"coarse2fine train exited {rec['returncode']} (its one-line error is in the log)"
        except RECOVERABLE as e:
            rec.update(_error(e))
        rec["wall_s"] = time.perf_counter() - t0
        res.add(rec)
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def run_engines(args, size: dict, dev: torch.device, res: Results) -> None:
    created = init_single_process_group(dev)
    try:
        for stage in STAGES:
            t0 = time.perf_counter()
            try:
                recs = engine_train_bench(size["train_preset"], stage, ("none", "ddp", "fsdp"), size["train_batch"],
                                          size["K"], size["C"], size["num_classes"], size["grid"], dev,
                                          DTYPES[size["dtype"]], repeats=size["engine_repeats"])
                for r in recs:
                    r.pop("times_s", None)
                rec = {"stage": stage, "engines": recs}
            except RECOVERABLE as e:
                rec = {"stage": stage, **_error(e)}
            rec["wall_s"] = time.perf_counter() - t0
            res.add(rec)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        if created:
            torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["cli", "engines"])
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--result", required=True, help="JSON file this part writes")
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--toy-compile", action="store_true", help="accepted for symmetry with phases.py; unused")
    args = ap.parse_args(argv)
    size = size_of(args)
    if size["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device; run the toy size (--toy) on a CPU")
    if size["device"] == "cuda":
        torch.cuda.set_device(0)
        dev = torch.device("cuda", 0)
    else:
        from coarse2fine.distributed import configure_threads

        configure_threads()
        dev = torch.device("cpu")
    res = Results(args.result, {"part": args.part, "preset": size["train_preset"], "dtype": size["dtype"],
                                "device": str(dev)})
    (run_cli if args.part == "cli" else run_engines)(args, size, dev, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
