"""The training loop shared by the coarse (stage 1), fine (stage 2) and baseline models.

One code path for 1 and N processes (torchrun). What makes resume exact, also at another world size:
- the data order is a pure function of (seed, epoch): a seeded permutation per epoch, and the
  global batch of step s is slice s of it, split over ranks and accumulation micro-steps;
- dropout randomness is re-seeded at every step from (seed, step, rank, micro-step);
- model, EMA, optimizer and schedule state are saved atomically in `state.pt`.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coarse2fine import distributed
from coarse2fine.checkpoint import (load_train_state, save_run_weights, save_train_state, store_tokenizer_dir,
                                   tokenizer_ref, write_run_config)
from coarse2fine.config import GPTConfig, TrainConfig, UserError, dump_json, from_dict, load_json, to_dict
from coarse2fine.data.tencrop import open_code_store
from coarse2fine.stages import StageBatches, evaluate_tokens, stage_loss
from coarse2fine.models import STAGES, Transformer, count_params
from coarse2fine.parallel import (full_model_state, full_optim_state, grad_norm_value, is_sharded, load_optim_state,
                                  no_sync, reshard, unwrap, wrap_model, wrap_shadow)
from coarse2fine.tokenizer.clustering import CoarseMap


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
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return 1.0
    return f


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text() or "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)


# ---- the run ---------------------------------------------------------------------------------

def train(stage: str, model_cfg: GPTConfig, cfg: TrainConfig, codes_dir: str | Path, out_dir: str | Path,
          coarse_map: str | Path | None = None, heldout_dir: str | Path | None = None,
          restricted: bool = False, resume: bool = False, progress: bool = True,
          device: str | None = None, stop_at: int | None = None) -> dict[str, Any]:
    """Train one stage. Writes out_dir/{config.json, model.safetensors, state.pt, metrics.jsonl, tb/}.

    stop_at: end this call after that step (checkpoint written); `resume=True` continues the same
    schedule. Returns a summary dict (final loss/accuracy, held-out token metrics, wall time)."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of {STAGES}")
    cfg.validate()
    info = distributed.setup(device)
    out = Path(out_dir)
    store = open_code_store(codes_dir)  # extract-codes dir or a sharded ten-crop one
    cmap = CoarseMap.load(coarse_map) if coarse_map else None
    batches = StageBatches(store, stage, cmap)
    heldout = StageBatches(open_code_store(heldout_dir), stage, cmap) if heldout_dir else None
    members = cmap.members.to(info.device) if (restricted and stage == "fine") else None
    if restricted and stage != "fine":
        raise UserError("the cluster-restricted head applies to the fine stage only")
    micro = cfg.batch_size // (info.world_size * cfg.grad_accum)
    if micro * info.world_size * cfg.grad_accum != cfg.batch_size:
        raise UserError(f"global batch {cfg.batch_size} must be divisible by world size {info.world_size} x "
                        f"grad accumulation {cfg.grad_accum}")

    run_meta = {"kind": "gpt", "stage": stage, "gpt": to_dict(model_cfg), "train": to_dict(cfg),
                "codes": {"dir": str(Path(codes_dir).resolve()), **store.meta}, "restricted": restricted,
                "coarse_map": cmap.stats() | {"fingerprint": cmap.fingerprint, "method": cmap.method} if cmap else None,
                "tokenizer": tokenizer_ref(store.meta.get("tokenizer_fingerprint"),
                                           store_tokenizer_dir(store.meta, codes_dir), out)}
    if out.exists() and (out / "state.pt").exists() and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume:
        old = load_json(out / "config.json")
        if old.get("stage") != stage or old.get("gpt") != run_meta["gpt"]:
            raise UserError(f"{out} holds a {old.get('stage')} run with another model config; "
                            "resume with the same stage/preset or choose another --out")

    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg).to(info.device)
    ema = Transformer(model_cfg).to(info.device).eval() if cfg.ema_decay > 0 else None
    if ema is not None:
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
    st = load_train_state(out / "state.pt") if resume else None
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
        if info.is_main:
            _truncate_metrics(out / "metrics.jsonl", step)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, "gpt", run_meta)
        if cmap is not None:
            shutil.copyfile(Path(coarse_map) if Path(coarse_map).is_file() else Path(coarse_map) / "coarse_map.safetensors",
                            out / "coarse_map.safetensors")

    writer = _tb_writer(out / "tb") if info.is_main else None
    log = (out / "metrics.jsonl").open("a") if info.is_main else None
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
                torch.manual_seed(hash((cfg.seed, step, info.rank * cfg.grad_accum + m)) % (2 ** 63))
                tokens, cond, targets = batches.get(ridx[m * micro:(m + 1) * micro], info.device)
                with no_sync(wrapped, skip=m < cfg.grad_accum - 1), _autocast(info.device, dtype):
                    loss, acc = stage_loss(wrapped, stage, tokens, cond, targets, members)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                acc_sum += acc.item() / cfg.grad_accum
            gnorm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if ema is not None:
                ema_update(ema, unwrap(wrapped), cfg.ema_decay)
            step += 1
            steps_done += 1
            loss_g = distributed.all_reduce_mean(torch.tensor([loss_sum, acc_sum], device=info.device)).tolist()
            rec = {"step": step, "loss": loss_g[0], "acc": loss_g[1], "lr": sched.get_last_lr()[0],
                   "grad_norm": grad_norm_value(gnorm)}
            if info.is_main:
                log.write(json.dumps(rec) + "\n")
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
                if log:
                    log.write(json.dumps({"step": step, "heldout": ev}) + "\n")
            if step % cfg.ckpt_every == 0 or step == end:
                _save(out, wrapped, ema, opt, sched, step, info)
            summary = rec
    except KeyboardInterrupt:
        _save(out, wrapped, ema, opt, sched, step, info)
        raise
    finally:
        bar.close()
        if log:
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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint being resumed, so the log matches an uninterrupted run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _tb_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _progress(total: int, initial: int, enabled: bool, stage: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=f"train {stage}", dynamic_ncols=True)
