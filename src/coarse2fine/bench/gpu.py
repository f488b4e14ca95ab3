"""Pieces of the one-shot GPU run (benchmarks/gpu/run.py) that belong to the library: a synthetic
code store and coarse map to train on, a step clock that times the trainer from outside, the
training-engine comparison (no wrapper, DDP, FSDP2) and a description of the card.

Everything here also runs on a CPU (gloo instead of nccl), which is how the toy run keeps it tested.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coarse2fine.bench import speed as bench
from coarse2fine.stages import stage_config
from coarse2fine.tokenizer.clustering import cluster_codebook


# ---- synthetic training data ---------------------------------------------------------------------

def write_random_code_store(out: str | Path, count: int, codebook_size: int, grid: int, num_classes: int,
                            seed: int = 0) -> Path:
    """A code store in the extract-codes layout holding uniform random codes: what a speed run trains
    on, no tokenizer needed. Its meta.json carries no tokenizer fingerprint, so any coarse map of the
    same K may be paired with it."""
    from coarse2fine.data.codes import write_code_store

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook_size, (count, grid * grid))
    labels = rng.integers(0, num_classes, count)
    return write_code_store(out, codes, labels, num_classes=num_classes, classes=[], grid=grid,
                            codebook_size=codebook_size, dataset="random codes", split="train")

def write_random_coarse_map(path: str | Path, codebook_size: int, num_coarse: int, seed: int = 0) -> Path:
    """A seeded random partition of K codes into C near-equal clusters (the paper's random-cluster
    ablation), saved where `train --coarse-map` reads it. Speed does not depend on the partition."""
    g = torch.Generator().manual_seed(seed)
    codewords = torch.nn.functional.normalize(torch.randn(codebook_size, 8, generator=g), dim=1)
    cmap = cluster_codebook(codewords, num_coarse, method="random", seed=seed)
    path = Path(path)
    cmap.save(path)
    return path


# ---- timing the trainer from outside ---------------------------------------------------------------

class StepClock:
    """Timestamps of every optimizer step in this process, taken by a global post-step hook, so the
    unmodified trainer can be timed: with clock: train(...) -> clock.summary(tokens_per_step).

    The trainer reads the loss on the host each step (a device sync), so the interval between two
    hooks is one whole step; the first `skip` intervals (allocation, autotuning) are left out."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._handle = None

    def __enter__(self) -> "StepClock":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.stamps = [time.perf_counter()]
        self._handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: self.stamps.append(
            time.perf_counter()))
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        return False

    def summary(self, tokens_per_step: int, skip: int = 5) -> dict[str, Any]:
        """Median step seconds after `skip` steps, tokens/s from it, and how many steps it saw."""
        dts = np.diff(self.stamps)
        steady = dts[skip:] if len(dts) > skip else dts[1:] if len(dts) > 1 else dts
        step_s = float(np.median(steady)) if len(steady) else float("nan")
        return {"steps_seen": int(len(dts)), "steps_timed": int(len(steady)), "step_s": step_s,
                "tokens_per_s": tokens_per_step / step_s if step_s > 0 else None,
                "first_step_s": float(dts[0]) if len(dts) else None}


# ---- training engines on one process --------------------------------------------------------------

def init_single_process_group(device: torch.device) -> bool:
    """A world-size-1 process group (nccl on CUDA, gloo on CPU) from torchrun's environment, so DDP and
    FSDP2 can wrap a model on one device. Returns True when this call created it."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return True


def engine_train_bench(preset: str, stage: str, engines: tuple[str, ...], batch: int, codebook_size: int,
                       num_coarse: int, num_classes: int, grid: int, device: torch.device, dtype: torch.dtype,
                       repeats: int, warmup: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """tokens/s and peak memory of one training step of `stage` (the loop's `train_step`: forward,
    backward, clip, AdamW) with the model wrapped as the trainer wraps it under each engine: "none", "ddp",
    or "fsdp" (FSDP2, `fully_shard` per transformer block plus the root); the last two need a process
    group (init_single_process_group). Alternating rounds. Records: engine, step_s, tokens_per_s, peak_mib."""
    from coarse2fine.bench.runs import gpt_train_step

    if any(e not in ("none", "ddp", "fsdp") for e in engines):
        raise ValueError(f"unknown engine in {engines}; choose none, ddp or fsdp")
    cfg = stage_config(preset, stage, codebook_size, num_coarse, num_classes, grid)
    dname = "bf16" if dtype == torch.bfloat16 else "fp32"
    steps, mem, tokens = {}, {}, 0
    for engine in engines:
        _, step, tokens, _ = gpt_train_step(stage, cfg, batch, device, dname, engine, seed=seed)
        with bench.peak_memory(device) as pm:
            step()  # the first step allocates gradients and optimizer state
        steps[engine], mem[engine] = step, pm
    timings = bench.alternate(steps, repeats, warmup, device)
    out = []
    for engine, ts in timings.wall.items():
        t = bench.median(ts)
        out.append({"stage": stage, "engine": engine, "preset": preset, "batch": batch, "tokens_per_step": tokens,
                    "step_s": t, "tokens_per_s": tokens / t, "spread": bench.spread(ts),
                    "peak_mib": mem[engine].peak_mib, "memory_kind": mem[engine].kind, "times_s": ts})
    return out


# ---- the card ----------------------------------------------------------------------------------

def nvidia_smi(fields: str = "name,driver_version,memory.total,clocks.max.sm,power.limit") -> dict[str, str] | None:
    """One GPU's row of `nvidia-smi --query-gpu` as a dict, or None where nvidia-smi is missing."""
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode or not r.stdout.strip():
        return None
    vals = [v.strip() for v in r.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields.split(","), vals))


def device_report(device: torch.device) -> dict[str, Any]:
    """What the results must state about the machine: torch, CUDA, cuDNN and NCCL versions, the GPU
    (name, capability, memory, multiprocessors) and its driver, or the CPU on a toy run."""
    info: dict[str, Any] = dict(bench.machine_info(device))
    info["cuda_runtime"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                    multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version(), nvidia_smi=nvidia_smi())
        try:
            v = torch.cuda.nccl.version()  # a tuple in recent torch, an int in old ones
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except (AttributeError, RuntimeError):
            info["nccl"] = None
        info["driver"] = (info["nvidia_smi"] or {}).get("driver_version")
    return info


def card_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100' (the results folder name: benchmarks/results/gpu_<card>/)."""
    for key in ("h200", "h100", "gh200", "a100", "l40s", "l4", "a10"):
        if key in name.lower().replace(" ", ""):
            return key
    return "".join(c for c in name.lower() if c.isalnum())[:16] or "unknown"


def read_json(path: str | Path) -> dict[str, Any]:
    """A results fragment written by an earlier phase, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
