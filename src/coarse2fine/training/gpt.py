"""Training the coarse (stage 1), fine (stage 2) and baseline transformers: the stage's `Task` for
the one loop (training/loop.py), the run directory and its resume rules.

Run dir: config.json {"kind": "gpt", "stage", "gpt", "train", "codes", ...}, model.safetensors (EMA
weights when EMA is on), state.pt, metrics.jsonl, tb/, summary.json. A resume must use the run's
settings (a larger --steps extends it); one process per run dir (a lock).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from coarse2fine import distributed
from coarse2fine.checkpoint import (check_run_out, load_train_state, read_run_config, store_tokenizer_dir,
                                    tokenizer_ref, write_run_config)
from coarse2fine.config import GPTConfig, TrainConfig, UserError, from_dict, to_dict
from coarse2fine.fileio import dump_json
from coarse2fine.data.codes import check_heldout, check_same_codes, codes_record, open_code_store
from coarse2fine.models import Transformer, count_params
from coarse2fine.stages import ClusterLoss, StageBatches, evaluate_tokens, stage_loss, stage_spec
from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.precision import resolve_dtype
from coarse2fine.training.common import (check_resume, lock_run, saved_settings, seed_everything, warmup_cosine,
                                         warn_long_warmup)
from coarse2fine.training.loop import EMA, Part, Task, adamw, fit, restore


def global_batch_indices(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """Indices of the global batch of `step`: slice of a per-epoch seeded permutation (drop last)."""
    per_epoch = n // batch
    if per_epoch == 0:
        raise UserError(f"the code store has {n} sequences, fewer than the global batch {batch}; lower --batch-size")
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch:(k + 1) * batch]


def stage_lr(cfg: TrainConfig):
    """Learning rate of 0-based step: the batch-scaled lr times warm-up and (cosine) decay."""
    return lambda step: cfg.scaled_lr * warmup_cosine(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio,
                                                      cfg.schedule == "cosine")


def saved_run(out_dir: str | Path) -> dict[str, Any]:
    """What a stage run was started with, as `train` keyword arguments: `train --resume` reads every
    setting it is not given from here (config.json and the run's copy of the coarse map)."""
    out = Path(out_dir)
    meta = read_run_config(out, "gpt")  # format, version and kind checked
    cm = out / "coarse_map.safetensors"
    if not (meta.get("codes") or {}).get("dir"):
        raise UserError(f"{out}/config.json records no code store (\"codes\": {{\"dir\": ...}}), so the run cannot be "
                        "resumed; start a new run with --codes")
    return {"stage": meta["stage"], "model_cfg": from_dict(GPTConfig, meta["gpt"]),
            "cfg": saved_settings(TrainConfig, meta.get("train"), f"{out}/config.json"),
            "codes_dir": meta["codes"]["dir"], "coarse_map": cm if cm.exists() else None,
            "heldout_dir": meta.get("heldout"), "restricted": bool(meta.get("restricted"))}


def train(stage: str, model_cfg: GPTConfig, cfg: TrainConfig, codes_dir: str | Path, out_dir: str | Path,
          coarse_map: CoarseMap | str | Path | None = None, heldout_dir: str | Path | None = None,
          restricted: bool = False, resume: bool = False, progress: bool = True,
          device: str | None = None, stop_at: int | None = None) -> dict[str, Any]:
    """Train one stage. Writes out_dir/{config.json, model.safetensors, state.pt, metrics.jsonl, tb/}.

    stop_at: end this call after that step (checkpoint written); `resume=True` continues the same
    schedule, refusing any setting that differs from the run's (a larger cfg.steps extends the run).
    coarse_map: the CoarseMap (as loaded by the caller: it is read once per run), or its path.
    Returns a summary dict (final loss/accuracy, held-out token metrics, wall time)."""
    spec = stage_spec(stage)
    cfg.validate()
    info = distributed.setup(device, group=cfg.fsdp)
    if info.is_main:
        warn_long_warmup(cfg.warmup_steps, cfg.steps)
    if cfg.fsdp and not info.enabled:
        raise UserError("--fsdp shards the model over a process group, which needs torchrun: `torchrun "
                        "--nproc_per_node N $(which coarse2fine) train ... --fsdp` (N may be 1), or drop --fsdp")
    out = Path(out_dir)
    store = open_code_store(codes_dir)  # extract-codes dir or a sharded ten-crop one
    cmap = coarse_map if isinstance(coarse_map, CoarseMap) or coarse_map is None else CoarseMap.load(coarse_map)
    batches = StageBatches(store, stage, cmap)
    heldout = (StageBatches(check_heldout(store, open_code_store(heldout_dir), heldout_dir), stage, cmap)
               if heldout_dir else None)
    if restricted and not spec.restricted_head:
        raise UserError("the cluster-restricted head applies to the fine stage only")
    if cfg.cluster_loss_weight > 0 and not spec.cluster_loss:
        raise UserError(f"--cluster-loss-weight (IAR) applies to the baseline stage only, not to {stage}; drop it")
    if cfg.cluster_loss_weight > 0 and cmap is None:
        raise UserError("--cluster-loss-weight needs --coarse-map: the clusters of its cluster-level loss")
    members = cmap.members.to(info.device) if restricted else None
    cluster = ClusterLoss.from_map(cmap, cfg.cluster_loss_weight, info.device) if cfg.cluster_loss_weight else None
    micro = cfg.batch_size // (info.world_size * cfg.grad_accum)
    if micro * info.world_size * cfg.grad_accum != cfg.batch_size:
        raise UserError(f"global batch {cfg.batch_size} must be divisible by world size {info.world_size} x "
                        f"grad accumulation {cfg.grad_accum}")

    run_meta = {"kind": "gpt", "stage": stage, "gpt": to_dict(model_cfg), "train": to_dict(cfg),
                "codes": codes_record(store, codes_dir), "restricted": restricted,
                "coarse_map": cmap.record() if cmap else None,
                "tokenizer": tokenizer_ref(store.meta.get("tokenizer_fingerprint"),
                                           store_tokenizer_dir(store.meta, codes_dir), out)}
    run_meta["heldout"] = str(Path(heldout_dir).resolve()) if heldout_dir else None
    with lock_run(out, info.is_main):  # one process per run dir, from the first check to the last write
        st = _check_run_dir(out, run_meta, cfg, cmap, resume)
        batches.check_model(model_cfg)  # after the resume checks: another store is named as such first
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_run_config(out, "gpt", run_meta)
            copy = out / "coarse_map.safetensors"  # the run keeps its own copy (resume reads it)
            if cmap is not None and cmap.source is None:
                cmap.save(copy)
            elif cmap is not None and not (copy.exists() and cmap.source == copy.resolve()):
                shutil.copyfile(cmap.source, copy)

        def micro_batches(step: int):
            gidx = global_batch_indices(step, len(batches), cfg.batch_size, cfg.seed)
            ridx = gidx[info.rank * micro * cfg.grad_accum:(info.rank + 1) * micro * cfg.grad_accum]
            return [batches.get(ridx[m * micro:(m + 1) * micro], info.device) for m in range(cfg.grad_accum)]

        evaluate = (lambda net: evaluate_tokens(net, heldout, info.device, members=members)) if heldout else None
        task = stage_task(stage, model_cfg, cfg, micro_batches, info, members, cluster, evaluate)
        model, dtype = task.model.net, task.dtype
        start = restore(task, st) if st is not None else 0
        rec = fit(task, out, info, start, st, stop_at=stop_at, progress=progress)
    summary = {k: rec[k] for k in ("step", "loss", "acc", "lr", "grad_norm") if k in rec}
    summary |= {"stage": spec.name, "params": count_params(model), "wall_s": rec["wall_s"],
                "parallel": "fsdp" if task.sharded else ("ddp" if info.enabled else "none"),
                "steps_this_run": rec["steps_this_run"], "dtype": str(dtype).replace("torch.", ""),
                "tokens_per_s": rec["steps_this_run"] * cfg.batch_size * model_cfg.seq_len / max(rec["wall_s"], 1e-9)}
    if heldout is not None and (info.is_main or task.sharded):
        summary["heldout"] = evaluate_tokens(task.release_net(), heldout, info.device, members=members)
    if info.is_main:
        dump_json(summary, out / "summary.json")
    return summary


def stage_task(stage: str, model_cfg: GPTConfig, cfg: TrainConfig, batches: Callable[[int], list[Any]], info,
               members: torch.Tensor | None = None, cluster: ClusterLoss | None = None,
               evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> Task:
    """The stage's Task for the one loop: part "model" (the transformer, built after seeding with cfg.seed),
    AdamW over `param_groups`, the batch-scaled warm-up/cosine learning rate, clipping, autocast to cfg.dtype
    and the EMA when cfg.ema_decay > 0. batches(step) -> this rank's micro-batches of (tokens, cond, targets)
    (StageBatches.get's layout); members [C, M]: the fine stage's restricted head; cluster: the IAR term.
    `train` runs it on a code store; the training benchmarks time its `train_step` on random codes."""
    spec = stage_spec(stage)
    seed_everything(cfg.seed)
    model = Transformer(model_cfg).to(info.device)

    def loss(b, shared):
        tokens, cond, targets = b
        value, acc = stage_loss(part.wrapped, spec, tokens, cond, targets, members, cluster)
        return value, {"acc": acc}

    part = Part("model", model, adamw(cfg.scaled_lr, (cfg.beta1, cfg.beta2), cfg.weight_decay),
                stage_lr(cfg), loss, clip=cfg.grad_clip)
    return Task(f"train {spec.name}", [part], batches, cfg.steps, cfg.seed, resolve_dtype(cfg.dtype, info.device),
                ema=EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None, evaluate=evaluate,
                eval_every=cfg.eval_every, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every, fsdp=cfg.fsdp)


def _check_run_dir(out: Path, run_meta: dict[str, Any], cfg: TrainConfig, cmap: CoarseMap | None,
                   resume: bool) -> dict[str, Any] | None:
    """Refuse a fresh start over a run, or a resume that changes it; -> the train state to resume.
    Adds run_meta["history"]: the run's --steps extensions, this one included."""
    if not resume:
        check_run_out(out, "gpt")  # another kind of run is named as what it is, before "pass --resume"
    if (out / "state.pt").exists() and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if not resume:
        return None
    old = read_run_config(out, "gpt")
    check_same_codes(old.get("codes"), run_meta["codes"], out)  # the data a run trains on is one of its settings
    if old.get("stage") != run_meta["stage"] or old.get("gpt") != run_meta["gpt"]:
        raise UserError(f"{out} holds a {old.get('stage')} run with another model config; "
                        "resume with the same stage/preset or choose another --out")
    if bool(old.get("restricted")) != run_meta["restricted"]:
        raise UserError(f"--head: the run has {'restricted' if old.get('restricted') else 'full'}; resume with it")
    copy = out / "coarse_map.safetensors"  # the run's copy of its map, compared code by code
    held = None  # the copy, read once (it is the map given when the plan loaded the run's own)
    if copy.exists():  # and the copy is the map the run recorded (not one put in its place since)
        held = cmap if cmap is not None and cmap.source == copy.resolve() else CoarseMap.load(copy)
        held.check_recorded(old.get("coarse_map"), copy, out)
    same = held is None if cmap is None else held is not None and (held is cmap or torch.equal(held.phi, cmap.phi))
    if not same:
        raise UserError(f"--coarse-map: not the map the run was trained with ({copy if copy.exists() else 'none'}); "
                        "leave --coarse-map out to use the run's own")
    st = load_train_state(out / "state.pt")
    ext = check_resume(saved_settings(TrainConfig, old.get("train"), f"{out}/config.json"), cfg, st["step"],
                       f"{out}/config.json", announce=distributed.rank() == 0)
    run_meta["history"] = old.get("history", []) + ([ext] if ext else [])
    return st

