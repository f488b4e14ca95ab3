"""What the stage trainer (loop.py) and the tokenizer trainer (tokenizer.py) share: the learning-rate
schedule, the EMA step, precision, seeding, the metrics log, the run lock and the resume check.

One home each, so the two trainers cannot drift apart (they used to carry three different bf16 probes).
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch

from coarse2fine.config import RETIRED_FIELDS, ConfigError, UserError, from_dict, run_settings, to_dict
from coarse2fine.fileio import DirLock, atomic_write_bytes, lock_dir

# ---- schedule, EMA, precision, seeding ---------------------------------------------------------


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float, cosine: bool = True) -> float:
    """LR multiplier of 0-based `step`: linear warm-up over `warmup` steps ((step + 1) / warmup), then a
    cosine decay from 1 to `min_ratio` at step `total` (or a constant 1 when cosine=False)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def warn_long_warmup(warmup: int, steps: int) -> None:
    """A warm-up longer than the run: the learning rate climbs to only steps/warmup of the one asked for and
    never decays, which trained without a word (`--steps 50` on the tokenizer's default warm-up of 100)."""
    if warmup > steps:
        logging.getLogger("coarse2fine.train").warning(
            "--warmup-steps %d is longer than --steps %d: the learning rate climbs to only %d%% of --lr and never "
            "decays; lower --warmup-steps (e.g. %d, 5%% of the run) or raise --steps", warmup, steps,
            100 * steps // warmup, round(0.05 * steps))


@torch.no_grad()
def ema_update(shadow: Iterable[torch.Tensor], live: Iterable[torch.Tensor], decay: float) -> None:
    """shadow <- decay * shadow + (1 - decay) * live, pairwise, in the shadow's dtype."""
    for s, p in zip(shadow, live):
        s.lerp_(p.detach().to(s.dtype), 1 - decay)


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (CPU and every GPU): model initialisation is a function of it."""
    torch.manual_seed(seed)


def step_seed(seed: int, *parts: int) -> int:
    """A deterministic seed for (run seed, step, ...): hash of a tuple of ints, stable across runs."""
    return hash((seed, *parts)) % (2 ** 63)


def check_finite(step: int, values: dict[str, float], last_ckpt: int) -> None:
    """Stop the run (UserError) when a training quantity is NaN/Inf. `step` is the 1-based step that
    produced it; nothing of that step is saved, so the checkpoint of `last_ckpt` stays the last one."""
    bad = [f"the {k} is {v}" for k, v in values.items() if v is not None and not math.isfinite(v)]
    if bad:
        kept = (f"the last good checkpoint (step {last_ckpt}) is kept" if last_ckpt
                else "no checkpoint had been written yet")
        raise UserError(f"step {step}: {' and '.join(bad)}; stopped before saving, {kept}; "
                        "lower --lr or check the data")


# ---- metrics log ---------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each with a "step".

    Opening it for a resumed run keeps the lines up to the checkpoint's step (later ones are
    recomputed) and drops a partial last line left by a kill; a fresh run starts it empty. Lines are
    flushed with `flush()` (for people tailing it) and flushed + fsynced with `sync()`, which the
    trainers call before every checkpoint, so a checkpoint never covers steps the log lost.
    Non-finite numbers are refused: JSON has no NaN, and the trainers stop before logging one."""

    def __init__(self, path: str | Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.f = None
        if not enabled:
            return
        kept = [line for line, _ in _records(self.path, upto=resume_step)] if resume_step else []
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())
        self.f = self.path.open("a")

    def write(self, rec: dict[str, Any]) -> None:
        if self.f is None:
            return
        try:
            line = json.dumps(rec, allow_nan=False)
        except ValueError as e:
            raise UserError(f"step {rec.get('step')}: a non-finite metric in {rec}; not logged") from e
        self.f.write(line + "\n")

    def flush(self) -> None:
        if self.f is not None:
            self.f.flush()

    def sync(self) -> None:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f is not None:
            self.sync()
            self.f.close()
            self.f = None


def read_metrics(path: str | Path, upto: int | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (those with step <= upto when given). A corrupt or partial LAST
    line (a kill mid-write) is dropped; a corrupt line before it is an error naming the line."""
    return [rec for _, rec in _records(Path(path), upto)]


def _records(p: Path, upto: int | None) -> list[tuple[str, dict[str, Any]]]:
    if not p.exists():
        return []
    lines = p.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, KeyError, TypeError) as e:
            if i == len(lines) - 1:
                break
            raise UserError(f"{p} line {i + 1} is not a metrics record ({e}); delete that line and retry") from e
        if upto is None or step <= upto:
            out.append((line, rec))
    return out


# ---- run lock --------------------------------------------------------------------------------------


# the lock itself lives in fileio (lock_dir), shared with the sample, sample-fid and extract-codes outputs
RunLock = DirLock


def lock_run(run_dir: str | Path, enabled: bool = True):
    """One training process per run dir: the lock on the process that writes it (rank 0), a no-op elsewhere.
    A run that fails before its first checkpoint into a folder it created leaves no folder behind."""
    return lock_dir(run_dir, "another training process", enabled, clean_failed=("state.pt", "model.safetensors"))


# ---- resume check ----------------------------------------------------------------------------------

# settings a resume may change because the computation does not depend on them: how the work is laid
# out over processes (the global batch, data order and dropout seeds stay fixed, so a run can move to
# another world size) and how often it logs, evaluates and checkpoints
FREE_FIELDS = ("grad_accum", "fsdp", "log_every", "ckpt_every", "eval_every", "recipe")  # recipe: provenance only


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def saved_settings(cls, saved: dict[str, Any], source: str):
    """The dataclass `cls` stored in a run's config.json ("train"), normalised (lists -> tuples)."""
    if not isinstance(saved, dict):
        raise ConfigError(f"{source} has no training settings; it cannot be resumed")
    return run_settings(cls, saved, source)


def check_resume(saved, asked, step: int, source: str, announce: bool = True) -> dict[str, Any] | None:
    """Refuse a resume whose settings differ from the run's; both are instances of one dataclass.

    Every differing field is named. Exceptions: FREE_FIELDS, and a `steps` larger than the
    current `step` (an extension: returned as a history entry {"at_step", "steps_from", "steps_to"}
    for config.json, and announced on stdout when `announce`, i.e. on rank 0). A `steps` at or below the
    current step is refused."""
    a, b = to_dict(from_dict(type(saved), to_dict(saved))), to_dict(from_dict(type(saved), to_dict(asked)))
    clash = [f"{flag(k)}: the run has {a[k]!r}, this command asks {b[k]!r}"
             for k in a if k not in FREE_FIELDS and k != "steps" and a[k] != b[k]]
    if clash:
        raise UserError(f"--resume: settings differ from {source}: {'; '.join(clash)}; resume with the run's "
                        "settings (leave those flags out) or start a new --out")
    if b["steps"] == a["steps"]:
        return None
    if b["steps"] <= step:
        raise UserError(f"--steps {b['steps']}: the run is already at step {step} (of {a['steps']}); pass a "
                        f"larger --steps to extend it, or leave --steps out to finish it")
    if announce:
        print(f"extending {Path(source).parent} from {a['steps']} to {b['steps']} steps (at step {step}); "
              "recorded in config.json \"history\"", flush=True)
    return {"at_step": step, "steps_from": a["steps"], "steps_to": b["steps"]}
