"""The training loop shared by the coarse (stage 1), fine (stage 2) and baseline models.

One code path for 1 and N processes (torchrun). What makes resume exact, also at another world size:
- the data order is a pure function of (seed, epoch): a seeded permutation per epoch, and the
  global batch of step s is slice s of it, split over ranks and accumulation micro-steps;
- dropout randomness is re-seeded at every step from (seed, step, rank, micro-step);
- model, EMA, optimizer and schedule state are saved atomically in `state.pt`.
Safety: a NaN/Inf loss or gradient norm stops the run before anything of that step is saved; a
resume must use the run's settings (a larger --steps extends it); one process per run dir (a lock).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coarse2fine import distributed
from coarse2fine.checkpoint import (load_train_state, read_run_config, save_run_weights, save_train_state, store_tokenizer_dir,
                                   tokenizer_ref, write_run_config)
from coarse2fine.config import GPTConfig, TrainConfig, UserError, dump_json, from_dict, to_dict
from coarse2fine.data.tencrop import open_code_store
from coarse2fine.models import Transformer, count_params
from coarse2fine.parallel import (full_model_state, full_optim_state, grad_norm_value, is_sharded, load_optim_state,
                                  no_sync, reshard, unwrap, wrap_model, wrap_shadow)
from coarse2fine.stages import ClusterLoss, StageBatches, evaluate_tokens, stage_loss, stage_spec
from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.training.common import (MetricsLog, autocast, check_finite, check_resume, ema_update, lock_run,
                                         resolve_dtype, saved_settings, seed_everything, step_seed, warmup_cosine)


def global_batch_indices(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """Indices of the global batch of `step`: slice of a per-epoch seeded permutation (drop last)."""
    per_epoch = n // batch
    if per_epoch == 0:
        raise UserError(f"the code store has {n} sequences, fewer than the global batch {batch}; lower --batch-size")
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch:(k + 1) * batch]


# ---- model helpers -------------------------------------------------------------------------------

def param_groups(model: nn.Module, weight_decay: float):
    """Weight decay on >= 2-D weights (matrices, embeddings) only, as LlamaGen."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig):
    return lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio, cfg.schedule == "cosine")


def grad_norm(model: nn.Module, clip: float) -> torch.Tensor:
    """Total gradient norm (before clipping), clipping to `clip` when > 0."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


# ---- the run ---------------------------------------------------------------------------------

def saved_run(out_dir: str | Path) -> dict[str, Any]:
    """What a stage run was started with, as `train` keyword arguments: `train --resume` reads every
    setting it is not given from here (config.json and the run's copy of the coarse map)."""
    out = Path(out_dir)
    meta = read_run_config(out, "gpt")  # format, version and kind checked
    cm = out / "coarse_map.safetensors"
    return {"stage": meta["stage"], "model_cfg": from_dict(GPTConfig, meta["gpt"]),
            "cfg": saved_settings(TrainConfig, meta.get("train"), f"{out}/config.json"),
            "codes_dir": meta["codes"]["dir"], "coarse_map": cm if cm.exists() else None,
            "heldout_dir": meta.get("heldout"), "restricted": bool(meta.get("restricted"))}


def train(stage: str, model_cfg: GPTConfig, cfg: TrainConfig, codes_dir: str | Path, out_dir: str | Path,
          coarse_map: str | Path | None = None, heldout_dir: str | Path | None = None,
          restricted: bool = False, resume: bool = False, progress: bool = True,
          device: str | None = None, stop_at: int | None = None) -> dict[str, Any]:
    """Train one stage. Writes out_dir/{config.json, model.safetensors, state.pt, metrics.jsonl, tb/}.

    stop_at: end this call after that step (checkpoint written); `resume=True` continues the same
    schedule, refusing any setting that differs from the run's (a larger cfg.steps extends the run).
    Returns a summary dict (final loss/accuracy, held-out token metrics, wall time)."""
    spec = stage_spec(stage)
    cfg.validate()
    info = distributed.setup(device)
    out = Path(out_dir)
    store = open_code_store(codes_dir)  # extract-codes dir or a sharded ten-crop one
    cmap = CoarseMap.load(coarse_map) if coarse_map else None
    batches = StageBatches(store, stage, cmap)
    heldout = StageBatches(open_code_store(heldout_dir), stage, cmap) if heldout_dir else None
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
                "codes": {"dir": str(Path(codes_dir).resolve()), **store.meta}, "restricted": restricted,
                "coarse_map": cmap.stats() | {"fingerprint": cmap.fingerprint, "method": cmap.method} if cmap else None,
                "tokenizer": tokenizer_ref(store.meta.get("tokenizer_fingerprint"),
                                           store_tokenizer_dir(store.meta, codes_dir), out)}
    run_meta["heldout"] = str(Path(heldout_dir).resolve()) if heldout_dir else None
    with lock_run(out, info.is_main):  # one process per run dir, from the first check to the last write
        st = _check_run_dir(out, run_meta, cfg, cmap, resume)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_run_config(out, "gpt", run_meta)
            if cmap is not None and not _same_file(coarse_map, out / "coarse_map.safetensors"):
                shutil.copyfile(Path(coarse_map) if Path(coarse_map).is_file() else Path(coarse_map) / "coarse_map.safetensors",
                                out / "coarse_map.safetensors")
        return _fit(spec.name, model_cfg, cfg, batches, heldout, out, st, info, micro, members, cluster, progress,
                    stop_at)


def _check_run_dir(out: Path, run_meta: dict[str, Any], cfg: TrainConfig, cmap: CoarseMap | None,
                   resume: bool) -> dict[str, Any] | None:
    """Refuse a fresh start over a run, or a resume that changes it; -> the train state to resume.
    Adds run_meta["history"]: the run's --steps extensions, this one included."""
    if (out / "state.pt").exists() and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if not resume:
        return None
    old = read_run_config(out, "gpt")
    if old.get("stage") != run_meta["stage"] or old.get("gpt") != run_meta["gpt"]:
        raise UserError(f"{out} holds a {old.get('stage')} run with another model config; "
                        "resume with the same stage/preset or choose another --out")
    if bool(old.get("restricted")) != run_meta["restricted"]:
        raise UserError(f"--head: the run has {'restricted' if old.get('restricted') else 'full'}; resume with it")
    copy = out / "coarse_map.safetensors"  # the run's copy of its map, compared code by code
    same = (not copy.exists() if cmap is None
            else copy.exists() and torch.equal(CoarseMap.load(copy).phi, cmap.phi))
    if not same:
        raise UserError(f"--coarse-map: not the map the run was trained with ({copy if copy.exists() else 'none'}); "
                        "leave --coarse-map out to use the run's own")
    st = load_train_state(out / "state.pt")
    ext = check_resume(saved_settings(TrainConfig, old.get("train"), f"{out}/config.json"), cfg, st["step"],
                       f"{out}/config.json")
    run_meta["history"] = old.get("history", []) + ([ext] if ext else [])
    if ext and distributed.rank() == 0:
        print(f"extending {out} from {ext['steps_from']} to {ext['steps_to']} steps (at step {ext['at_step']}); "
              "recorded in config.json \"history\"", flush=True)
    return st


def _same_file(a: str | Path, b: Path) -> bool:
    return b.exists() and Path(a).resolve() == b.resolve()


def _fit(stage, model_cfg, cfg, batches, heldout, out, st, info, micro, members, cluster, progress, stop_at):
    """The optimisation loop of `train`, under the run lock (st: the train state to resume, or None)."""
    seed_everything(cfg.seed)
    model = Transformer(model_cfg).to(info.device)
    ema = Transformer(model_cfg).to(info.device).eval() if cfg.ema_decay > 0 else None
    if ema is not None:
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
    if st is not None:  # full tensors go into the plain modules, before any wrapping or sharding
        model.load_state_dict(st["model"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
    dtype = resolve_dtype(cfg.precision, info.device)
    wrapped = wrap_model(model, info, fsdp=cfg.fsdp)
    ema = wrap_shadow(ema, info, fsdp=cfg.fsdp) if ema is not None else None
    sharded = is_sharded(wrapped)  # then every forward is a collective: evaluations run on all ranks
    opt = torch.optim.AdamW(param_groups(wrapped, cfg.weight_decay), lr=cfg.scaled_lr,
                            betas=(cfg.beta1, cfg.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    step = 0
    if st is not None:
        load_optim_state(wrapped, opt, st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step = st["step"]
    last_ckpt = step

    writer = _tb_writer(out / "tb") if info.is_main else None
    log = MetricsLog(out / "metrics.jsonl", resume_step=step, enabled=info.is_main)
    bar = _progress(cfg.steps, step, progress and info.is_main, stage)
    t0, steps_done, summary = time.time(), 0, {}
    wrapped.train()
    try:
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        while step < end:
            gidx = global_batch_indices(step, len(batches), cfg.batch_size, cfg.seed)
            ridx = gidx[info.rank * micro * cfg.grad_accum:(info.rank + 1) * micro * cfg.grad_accum]
            loss_sum = acc_sum = 0.0
            for m in range(cfg.grad_accum):
                # dropout seed per global micro-batch (its slice of the global batch), not per (rank,
                # micro-step): N ranks x A micro-steps then equal 1 rank x N*A micro-steps exactly
                torch.manual_seed(step_seed(cfg.seed, step, info.rank * cfg.grad_accum + m))
                tokens, cond, targets = batches.get(ridx[m * micro:(m + 1) * micro], info.device)
                with no_sync(wrapped, skip=m < cfg.grad_accum - 1), autocast(info.device, dtype):
                    loss, acc = stage_loss(wrapped, stage, tokens, cond, targets, members, cluster)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                acc_sum += acc.item() / cfg.grad_accum
            # the loss is averaged over ranks and the gradients are all-reduced: every rank sees the
            # same numbers, so every rank stops at the same step
            loss_g = distributed.all_reduce_mean(torch.tensor([loss_sum, acc_sum], device=info.device)).tolist()
            gnorm = grad_norm_value(grad_norm(wrapped, cfg.grad_clip))
            check_finite(step + 1, {"loss": loss_g[0], "gradient norm": gnorm}, last_ckpt)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if ema is not None:
                ema_update(ema.parameters(), unwrap(wrapped).parameters(), cfg.ema_decay)
            step += 1
            steps_done += 1
            rec = {"step": step, "loss": loss_g[0], "acc": loss_g[1], "lr": sched.get_last_lr()[0],
                   "grad_norm": gnorm}
            log.write(rec)
            if info.is_main:
                if step % cfg.log_every == 0 or step == cfg.steps:
                    log.flush()
                    for k in ("loss", "acc", "lr"):
                        writer.add_scalar(f"train/{k}", rec[k], step) if writer else None
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.3f}")
            if heldout is not None and cfg.eval_every and step % cfg.eval_every == 0 and (info.is_main or sharded):
                ev = evaluate_tokens(ema or unwrap(wrapped), heldout, info.device, members=members)
                reshard(ema or wrapped)
                if writer:
                    writer.add_scalar("heldout/nll", ev["nll"], step)
                    writer.add_scalar("heldout/acc", ev["acc"], step)
                log.write({"step": step, "heldout": ev})
            if step % cfg.ckpt_every == 0 or step == end:
                log.sync()  # the log covers at least what the checkpoint covers
                _save(out, wrapped, ema, opt, sched, step, info)
                last_ckpt = step
            summary = rec
    except KeyboardInterrupt:
        log.sync()
        _save(out, wrapped, ema, opt, sched, step, info)
        raise
    finally:
        bar.close()
        log.close()
        if writer:
            writer.close()
    wall = time.time() - t0
    summary = {**summary, "stage": stage, "params": count_params(model), "wall_s": wall,
               "steps_this_run": steps_done, "dtype": str(dtype).replace("torch.", ""),
               "tokens_per_s": steps_done * cfg.batch_size * model_cfg.seq_len / max(wall, 1e-9)}
    if heldout is not None and (info.is_main or sharded):
        summary["heldout"] = evaluate_tokens(ema or unwrap(wrapped), heldout, info.device, members=members)
    if info.is_main:
        dump_json(summary, out / "summary.json")
    return summary


def _save(out: Path, wrapped, ema, opt, sched, step: int, info) -> None:
    """Atomic checkpoint of full tensors (any world size can resume it). Release weights: EMA when
    enabled, else the raw model. Under FSDP the gathers are collectives: every rank calls this."""
    model_sd = full_model_state(wrapped)
    ema_sd = full_model_state(ema) if ema is not None else None
    optim_sd = full_optim_state(wrapped, opt)
    if info.is_main:
        state = {"model": model_sd, "optimizer": optim_sd, "scheduler": sched.state_dict(),
                 "step": step, "ema": ema_sd}
        save_train_state(out / "state.pt", state)
        save_run_weights(out, ema_sd if ema is not None else model_sd)
    distributed.barrier()


def _tb_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _progress(total: int, initial: int, enabled: bool, stage: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=f"train {stage}", dynamic_ncols=True)
