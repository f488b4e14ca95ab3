"""The one training loop. The transformer stages (training/gpt.py) and the VQ tokenizer
(training/tokenizer.py) describe what they train as a `Task`; `fit` runs it from top to bottom.

A task has one or more `Part`s, each a network with its own optimizer, learning-rate function and
loss: the stages and a plain tokenizer have one ("model"); an adversarially trained tokenizer adds
"disc", its discriminator. Per step, for each active part in order: zero its gradients, forward and
backward over the rank's micro-batches, average loss and metrics over ranks, clip, check finiteness,
optimizer step. Then the task's after-step hook, the EMA, the log, evaluation and the checkpoint.

What makes resume exact, also at another world size:
- batches are a pure function of (seed, step): the task's `batches(step)` gives this rank's
  micro-batches of the global batch of `step`, so the data position is the step;
- torch's generators are re-seeded before every micro-batch from (seed, step, global micro index);
- learning rates are a function of the step (no scheduler object to drift);
- the train state (every part's network and optimizer, the EMA, RNG, step) is written atomically
  with full tensors, whatever the wrapping (DDP, FSDP or none).
Safety: a NaN/Inf loss or gradient norm stops the run before anything of that step is saved; a
Ctrl-C in a single process finishes the step, writes a checkpoint and stops.
"""
from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from coarse2fine import distributed
from coarse2fine.checkpoint import rng_state, save_run_weights, save_train_state, set_rng_state
from coarse2fine.parallel import (full_model_state, full_optim_state, grad_norm_value, is_sharded, load_optim_state,
                                  no_sync, reshard, unwrap, wrap_model, wrap_shadow)
from coarse2fine.precision import autocast
from coarse2fine.training.common import MetricsLog, check_finite, ema_update, step_seed

Metrics = dict[str, torch.Tensor]


# ---- the pieces a task is made of ------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on >= 2-D weights (matrices, convolutions, embeddings) as LlamaGen,
    except the parameters the module names in `no_weight_decay()` (the VQ codebook); none elsewhere."""
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and name not in exempt else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(lr: float, betas: tuple[float, float], weight_decay: float) -> Callable[[nn.Module], torch.optim.AdamW]:
    """A Part's optimizer factory: AdamW over `param_groups` of the (wrapped) module."""
    return lambda model: torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)


def grad_norm(model: nn.Module, clip: float) -> torch.Tensor:
    """Total gradient norm (before clipping), clipping to `clip` when > 0."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


class EMA:
    """Exponential moving average of a network: a shadow copy, never trained, sharded like the
    network under FSDP. Parameters are averaged (in the shadow's dtype), buffers copied.
    warmup: decay min(decay, (1 + step) / (10 + step)), so that a short run's average is not
    dominated by the random initialisation (the tokenizer's choice; the stages average plainly)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval()  # wrapped like the model by `fit`
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        ema_update(self.module.parameters(), model.parameters(), d)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)

    @torch.no_grad()
    def copy_rows(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Restart rows of one parameter (an average of an old and a replaced codeword is meaningless)."""
        self.module.get_parameter(name)[rows] = values.to(self.module.get_parameter(name).dtype)


@dataclass
class Part:
    """One trained network of a task.

    net: the plain module (wrapped for DDP/FSDP by `fit`); optimizer(module) -> its optimizer, built by
    `fit` after the wrapping (FSDP replaces the parameters); lr(step) -> learning rate of 0-based step;
    loss(micro_batch, shared) -> (scalar loss to minimise, metrics to log): `shared` is one dict per
    micro-batch ({"step": 0-based step} to start with), passed to every part in order (the tokenizer's
    generator leaves its reconstruction there for the discriminator); active(step): whether the part trains at that step."""

    name: str
    net: nn.Module
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    lr: Callable[[int], float]
    loss: Callable[[Any, dict], tuple[torch.Tensor, Metrics]]
    clip: float = 1.0
    active: Callable[[int], bool] = lambda step: True
    wrapped: nn.Module | None = None  # set by fit
    opt: torch.optim.Optimizer | None = None  # set by fit


@dataclass
class Task:
    """What `fit` trains. parts[0] is the released network ("model"); batches(step) -> this rank's
    micro-batches of global step `step`; after_step(step) -> extra metrics (runs after the optimizer
    steps, before the EMA); evaluate(net) -> held-out metrics every eval_every steps; describe(rec)
    -> extra fields derived from a step's record (e.g. PSNR from the MSE)."""

    name: str
    parts: list[Part]
    batches: Callable[[int], list[Any]]
    steps: int
    seed: int
    dtype: torch.dtype = torch.float32
    ema: EMA | None = None
    after_step: Callable[[int], dict[str, float]] | None = None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    eval_every: int = 0
    describe: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    log_every: int = 50
    ckpt_every: int = 500
    fsdp: bool = False
    tensorboard: bool = True
    sharded: bool = False  # set by fit: FSDP, so that evaluations must run on every rank

    @property
    def model(self) -> Part:
        return self.parts[0]

    def release_net(self) -> nn.Module:
        """The network evaluations and the release weights use: the EMA when on, else the model."""
        return self.ema.module if self.ema is not None else unwrap(self.model.wrapped or self.model.net)


# ---- train state -----------------------------------------------------------------------------------


def restore(task: Task, st: dict[str, Any]) -> int:
    """Load a train state into the task's plain modules (call before `fit` wraps them); -> its step.
    States written before the loop was one (a "scheduler" or no "parts") load too: the learning rate
    is a function of the step."""
    nets = {task.model.name: st["model"], **{k: v["model"] for k, v in st.get("parts", {}).items()}}
    for part in task.parts:
        if part.name not in nets:
            raise KeyError(part.name)
        part.net.load_state_dict(nets[part.name])
    if task.ema is not None and st.get("ema"):
        task.ema.module.load_state_dict(st["ema"])
    if st.get("rng") is not None:
        set_rng_state(st["rng"])
    return int(st["step"])


def _restore_optimizers(task: Task, st: dict[str, Any]) -> None:
    opts = {task.model.name: st["optimizer"], **{k: v["optimizer"] for k, v in st.get("parts", {}).items()}}
    for part in task.parts:
        load_optim_state(part.wrapped, part.opt, opts[part.name])


def _save(task: Task, out: Path, step: int, info) -> None:
    """Atomic checkpoint of full tensors (any world size can resume it) and the release weights (the
    EMA when on). Under FSDP the gathers are collectives: every rank calls this."""
    states = {p.name: (full_model_state(p.wrapped), full_optim_state(p.wrapped, p.opt)) for p in task.parts}
    ema_sd = full_model_state(task.ema.module) if task.ema is not None else None
    if info.is_main:
        main = task.model.name
        state = {"step": step, "model": states[main][0], "optimizer": states[main][1], "ema": ema_sd,
                 "rng": rng_state(),
                 "parts": {k: {"model": m, "optimizer": o} for k, (m, o) in states.items() if k != main}}
        save_train_state(out / "state.pt", state)
        save_run_weights(out, ema_sd if ema_sd is not None else states[main][0])
    distributed.barrier()


# ---- the loop --------------------------------------------------------------------------------------


def prepare(task: Task, info, st: dict[str, Any] | None = None) -> None:
    """Wrap every part for DDP/FSDP (and the EMA like the model), build the optimizers over the wrapped
    parameters, and load a resumed state's optimizer states."""
    for part in task.parts:
        part.wrapped = wrap_model(part.net, info, fsdp=task.fsdp)
        part.opt = part.optimizer(unwrap(part.wrapped))
    if task.ema is not None:
        task.ema.module = wrap_shadow(task.ema.module, info, fsdp=task.fsdp)
    if st is not None:
        _restore_optimizers(task, st)
    task.sharded = is_sharded(task.model.wrapped)  # every forward is then a collective
    for part in task.parts:
        part.wrapped.train()


def train_step(task: Task, step: int, info, last_ckpt: int = 0) -> dict[str, Any]:
    """0-based `step` of a prepared task: each active part's optimizer step, the after-step hook, the EMA
    -> the step's record (step counted from 1, as logged)."""
    rec = {"step": step + 1, "lr": task.model.lr(step)}
    micro = task.batches(step)
    shared = [{"step": step} for _ in micro]
    for part in task.parts:
        if part.active(step):
            rec |= _train_part(task, part, micro, shared, step, info, last_ckpt)
    if task.after_step is not None:
        rec |= task.after_step(step)
    if task.ema is not None:
        task.ema.update(unwrap(task.model.wrapped), step)
    if task.describe is not None:
        rec |= task.describe(rec)
    return rec


def fit(task: Task, out: Path, info, start: int = 0, st: dict[str, Any] | None = None, stop_at: int | None = None,
        time_budget_s: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Train `task` from step `start` (its state `st` already restored into the plain modules when
    resuming) to task.steps, or to `stop_at` / the time budget (a checkpoint is written either way).
    Returns the last step's record with "wall_s", "steps_this_run" and "step"."""
    prepare(task, info, st)
    writer = _tb_writer(out / "tb") if info.is_main and task.tensorboard else None
    log = MetricsLog(out / "metrics.jsonl", resume_step=start, enabled=info.is_main)
    tty = progress and info.is_main and sys.stderr.isatty()
    bar = _progress(task.steps, start, tty, task.name)
    end = task.steps if stop_at is None else min(stop_at, task.steps)
    step = last_ckpt = start
    t0, rec = time.monotonic(), {}
    try:
        with _deferred_interrupt(enabled=not info.enabled) as interrupted:
            while step < end:
                rec = train_step(task, step, info, last_ckpt)
                step += 1
                log.write(rec)
                if info.is_main and (step % task.log_every == 0 or step == end):
                    log.flush()
                    _report(rec, writer, bar if tty else None, progress and not tty, task)
                bar.update(1)
                if task.evaluate and task.eval_every and step % task.eval_every == 0 and (info.is_main or task.sharded):
                    ev = task.evaluate(task.release_net())
                    reshard(task.release_net())
                    for k, v in ev.items():
                        writer.add_scalar(f"heldout/{k}", v, step) if writer else None
                    log.write({"step": step, "heldout": ev})
                stop = step == end or interrupted() or (time_budget_s is not None
                                                        and time.monotonic() - t0 > time_budget_s)
                if step % task.ckpt_every == 0 or stop:
                    log.sync()  # the log covers at least what the checkpoint covers
                    _save(task, out, step, info)
                    last_ckpt = step
                if interrupted():
                    raise KeyboardInterrupt
                if stop:
                    break
    finally:
        bar.close()
        log.close()
        if writer:
            writer.close()
    return {**rec, "step": step, "wall_s": time.monotonic() - t0, "steps_this_run": step - start}


def _train_part(task: Task, part: Part, micro: list[Any], shared: list[dict], step: int, info,
                last_ckpt: int) -> dict[str, float]:
    """One optimizer step of `part` over this rank's micro-batches -> its metrics, averaged over the
    micro-batches and the ranks (so every rank sees the same numbers and stops at the same step)."""
    for group in part.opt.param_groups:
        group["lr"] = part.lr(step)
    part.opt.zero_grad(set_to_none=True)
    n = len(micro)
    total: dict[str, float] = {}
    for m, batch in enumerate(micro):
        # dropout seed per global micro-batch (its slice of the global batch), not per (rank, micro-step):
        # N ranks x A micro-steps then equal 1 rank x N*A micro-steps exactly
        torch.manual_seed(step_seed(task.seed, step, info.rank * n + m))
        with no_sync(part.wrapped, skip=m < n - 1), autocast(info.device, task.dtype):
            loss, metrics = part.loss(batch, shared[m])
            (loss / n).backward()
        for k, v in {"loss": loss.detach(), **metrics}.items():
            total[k] = total.get(k, 0.0) + float(v) / n
    keys = list(total)
    reduced = distributed.all_reduce_mean(torch.tensor([total[k] for k in keys], device=info.device)).tolist()
    gnorm = grad_norm_value(grad_norm(part.wrapped, part.clip))
    prefix = "" if part is task.model else f"{part.name}_"
    check_finite(step + 1, {f"{prefix.replace('_', ' ')}loss": reduced[0],
                            f"{prefix.replace('_', ' ')}gradient norm": gnorm}, last_ckpt)
    part.opt.step()
    return {f"{prefix}{k}": v for k, v in zip(keys, reduced)} | {f"{prefix}grad_norm": gnorm}


def _report(rec: dict[str, Any], writer, bar, lines: bool, task: Task) -> None:
    shown = {k: v for k, v in rec.items() if k != "step" and isinstance(v, float) and math.isfinite(v)}
    if writer:
        for k, v in shown.items():
            writer.add_scalar(f"train/{k}", v, rec["step"])
    brief = {k: f"{v:.4g}" for k, v in shown.items() if k in ("loss", "acc", "psnr", "usage", "disc_loss")}
    if bar is not None:
        bar.set_postfix(brief)
    elif lines:
        print(f"{task.name} step {rec['step']}/{task.steps} " + " ".join(f"{k} {v}" for k, v in brief.items()),
              file=sys.stderr, flush=True)


class _deferred_interrupt:
    """Within a single process, a Ctrl-C (SIGINT) lets the current step finish; the loop then writes a
    checkpoint and raises KeyboardInterrupt. Across processes the interrupt is left as it is (ranks
    would see it at different steps); the last periodic checkpoint is then what resumes."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.hit = False
        self.old = None

    def __enter__(self) -> Callable[[], bool]:
        if self.enabled:
            self.old = signal.signal(signal.SIGINT, self._on_sigint)
        return lambda: self.hit

    def _on_sigint(self, signum, frame) -> None:
        if self.hit:  # a second Ctrl-C: the user does not want to wait for the step
            raise KeyboardInterrupt
        self.hit = True
        print("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self.old)


def _tb_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _progress(total: int, initial: int, enabled: bool, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=name, dynamic_ncols=True)
