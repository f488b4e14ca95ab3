"""Training loop of the VQ tokenizer (reconstruction + VQ losses), resumable step-exactly.

Run dir: config.json {"kind": "vq", "vq", "data", "train"}, model.safetensors (EMA weights when EMA
is on), state.pt (model, EMA, optimizer, step, RNG), metrics.jsonl (one line per logged step).
Exact resume: batches, flips and dead-code re-seeds are drawn from generators seeded by (seed,
step), so the run needs nothing but the step to continue as if never stopped.

Distributed: one code path. `batch_size` is the global batch; rank r trains on its slice of it, DDP
averages gradients, rank 0 writes files and its re-seeded codewords are broadcast to the others.
The usage window (a buffer DDP broadcasts from rank 0) then holds rank 0's codes only, so under
DDP a code counts as dead when rank 0's share of the batches did not pick it.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from coarse2fine import distributed
from coarse2fine.checkpoint import (load_strict, load_train_state, rng_state, save_run_weights, save_train_state,
                                    read_run_config, set_rng_state, write_run_config)
from coarse2fine.config import ConfigError, UserError, VQConfig, from_dict, to_dict, vq_config
from coarse2fine.data.preprocess import to_uint8
from coarse2fine.tokenizer.vq import VQModel, codebook_usage
from coarse2fine.training.common import (MetricsLog, autocast, bf16_native, check_finite, check_resume, ema_update,
                                         lock_run, saved_settings, seed_everything, warmup_cosine)


@dataclass
class TokenizerTrainConfig:
    """Optimisation settings of a tokenizer run (stored under "train" in config.json)."""

    # defaults tuned for the CPU presets on 32x32 data (LlamaGen's VQ-16 used lr 1e-4, batch 128)
    steps: int = 1200
    batch_size: int = 32            # global batch (split across ranks)
    lr: float = 2e-3
    warmup_steps: int = 100         # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0       # AdamW decay on conv weights only (never on the codebook)
    grad_clip: float = 1.0
    recon_loss: str = "l2"          # "l1" or "l2" on [-1, 1] pixels
    ema: bool = True
    ema_decay: float = 0.999
    # bfloat16 autocast for the conv stack (the quantizer stays float32). None = auto: on where bf16
    # is native (common.bf16_native: 1.4x faster per step on this box's AVX512-BF16), off otherwise
    bf16: bool | None = None
    flip: bool = True               # random horizontal flips
    seed: int = 0
    reseed_dead: bool = True        # move unused codewords onto recent encoder latents
    reseed_every: int = 25          # steps between re-seeds
    reseed_until: float = 0.8       # stop re-seeding after this fraction of `steps` so codes settle
    reseed_noise: float = 0.01
    log_every: int = 25
    ckpt_every: int = 500
    recipe: str = "custom"          # which tokenizer_recipe the defaults came from (provenance only)


# Recipes by preset: the fields above are the "cpu" recipe (VQ-tiny/VQ-small on 32 px data: 27 dB test PSNR
# on the embedded set in 1200 steps); LlamaGen's VQ-16/VQ-8 recipe: batch 128, lr 1e-4 constant, wd 0.05.
TOKENIZER_RECIPES: dict[str, dict[str, Any]] = {
    "cpu": {},
    "llamagen": dict(batch_size=128, lr=1e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.05),
}


def tokenizer_recipe(preset: str) -> dict[str, Any]:
    """TokenizerTrainConfig fields of the preset's recipe, "recipe" naming it (flags given override them)."""
    name = "llamagen" if preset in ("VQ-16", "VQ-8") else "cpu"
    return {**TOKENIZER_RECIPES[name], "recipe": name}


def _seed_for(seed: int, purpose: int, i: int) -> int:
    """Independent deterministic seeds per (run seed, purpose, step/epoch)."""
    return (seed * 1_000_003 + purpose * 7_919 + i * 104_729) % (2**63 - 1)


class ImageBatches:
    """Deterministic batches: batch `step` = slice of the seeded permutation of epoch step // spe,
    with seeded flips. Images come from dataset.get_raw (uint8), cached in memory when small."""

    CACHE_BYTES = 1 << 30

    def __init__(self, dataset, batch_size: int, seed: int, flip: bool, rank: int = 0, world: int = 1):
        self.ds, self.n, self.bs, self.seed, self.flip = dataset, len(dataset), batch_size, seed, flip
        if self.n < batch_size:
            raise UserError(f"data set has {self.n} images, fewer than --batch-size {batch_size}")
        if batch_size % world:
            raise UserError(f"--batch-size {batch_size} is not divisible by the {world} processes")
        self.per_rank, self.rank = batch_size // world, rank
        self.steps_per_epoch = self.n // batch_size  # drop the ragged tail of each epoch
        r = dataset.resolution
        self.cache = None
        if self.n * r * r * 3 <= self.CACHE_BYTES:
            self.cache = torch.from_numpy(np.stack([dataset.get_raw(i) for i in range(self.n)]))
        self._perm_epoch, self._perm = -1, None

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            raw = self.cache[idx]
        else:
            raw = torch.from_numpy(np.stack([self.ds.get_raw(int(i)) for i in idx]))
        return raw.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # [b,R,R,3] uint8 -> [b,3,R,R]

    def get(self, step: int) -> torch.Tensor:
        """This rank's images of global batch `step`: FloatTensor [batch_size / world, 3, R, R]."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(_seed_for(self.seed, 1, epoch))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        lo = pos * self.bs + self.rank * self.per_rank
        x = self._images(self._perm[lo:lo + self.per_rank])
        if self.flip:
            g = torch.Generator().manual_seed(_seed_for(self.seed, 2, step))
            flips = (torch.rand(self.bs, generator=g) < 0.5)[self.rank * self.per_rank:][:self.per_rank]
            x[flips] = x[flips].flip(-1)
        return x


class EMA:
    """Exponential moving average of parameters (float32 shadow); buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # short warm-up so the average is not dominated by the random init in short runs
        d = min(self.decay, (1 + step) / (10 + step))
        params, sd = dict(model.named_parameters()), model.state_dict()
        ema_update((self.shadow[k] for k in sd if k in params), (v for k, v in sd.items() if k in params), d)
        for k, v in sd.items():
            if k not in params:
                self.shadow[k].copy_(v)

    def copy_rows(self, key: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        self.shadow[key][rows] = values.float()


def lr_at(step: int, tc: TokenizerTrainConfig) -> float:
    return tc.lr * warmup_cosine(step, tc.warmup_steps, tc.steps, tc.min_lr_ratio)


def psnr_from_mse(mse_pm1: float) -> float:
    """PSNR (dB) from an MSE measured on [-1, 1] pixels (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse_pm1, 1e-12))


def _resolve(vq_cfg: VQConfig | dict | str, train: TokenizerTrainConfig | dict | None,
             overrides: dict[str, Any]) -> tuple[VQConfig, TokenizerTrainConfig]:
    if isinstance(vq_cfg, str):
        vq_cfg = vq_config(vq_cfg)
    elif isinstance(vq_cfg, dict):
        vq_cfg = from_dict(VQConfig, vq_cfg)
    base = to_dict(train) if isinstance(train, TokenizerTrainConfig) else dict(train or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    tc = from_dict(TokenizerTrainConfig, base)
    if tc.recon_loss not in ("l1", "l2"):
        raise ConfigError(f"recon_loss must be 'l1' or 'l2', got {tc.recon_loss!r}")
    return vq_cfg, tc


def train_tokenizer(vq_cfg: VQConfig | dict | str, out_dir: str | Path, dataset,
                    train: TokenizerTrainConfig | dict | None = None, *, steps: int | None = None,
                    resume: bool = False, data_info: dict | None = None, time_budget_s: float | None = None,
                    stop_at_step: int | None = None, progress: bool = True, device: str | None = None,
                    **train_overrides) -> Path:
    """Train (or resume) a VQ tokenizer on `dataset` (ImageDataset); returns the run dir.

    vq_cfg: VQConfig, its dict, or a preset name. train / train_overrides / steps: TokenizerTrainConfig
    fields (None = not given). time_budget_s / stop_at_step end this call early (checkpoint written;
    `resume=True` continues). On resume a setting not given takes the run's value; a given one that
    differs is refused, except a larger `steps` (an extension, recorded in config.json "history").
    A NaN/Inf loss or gradient norm stops the run before that step is saved. One process per run dir.
    """
    info = distributed.setup(device)
    with lock_run(out_dir, info.is_main):
        return _train_tokenizer(vq_cfg, out_dir, dataset, train, steps, resume, data_info, time_budget_s,
                                stop_at_step, progress, info, train_overrides)


def _train_tokenizer(vq_cfg, out_dir, dataset, train, steps, resume, data_info, time_budget_s, stop_at_step,
                     progress, info, train_overrides) -> Path:
    out = Path(out_dir)
    vq_cfg, tc = _resolve(vq_cfg, train, {**train_overrides, "steps": steps})
    st, history = None, []
    if resume:
        saved = read_run_config(out, "vq")  # format, version and kind checked
        saved_vq = from_dict(VQConfig, saved["vq"])
        if to_dict(vq_cfg) != to_dict(saved_vq):  # both normalised: a JSON list equals the preset's tuple
            raise UserError(f"--vq-preset: {out} holds a tokenizer of another architecture; leave --vq-preset out "
                            "to resume it, or start a new --out")
        saved_tc = saved_settings(TokenizerTrainConfig, saved.get("train"), f"{out}/config.json")
        asked = to_dict(train) if isinstance(train, TokenizerTrainConfig) else dict(train or {})
        asked.update({**train_overrides, "steps": steps})
        tc = from_dict(TokenizerTrainConfig, {**to_dict(saved_tc), **{k: v for k, v in asked.items() if v is not None}})
        st = load_train_state(out / "state.pt")
        ext = check_resume(saved_tc, tc, int(st["step"]), f"{out}/config.json")
        history = saved.get("history", []) + ([ext] if ext else [])
        vq_cfg = saved_vq
        if ext and info.is_main:
            print(f"extending {out} from {ext['steps_from']} to {ext['steps_to']} steps (at step {ext['at_step']}); "
                  "recorded in config.json \"history\"", file=sys.stderr, flush=True)
    elif (out / "state.pt").exists():
        raise UserError(f"{out} already holds a tokenizer run; pass --resume to continue it or pick another --out")
    if tc.bf16 is None:
        tc.bf16 = bf16_native(info.device.type)
    if dataset.resolution != vq_cfg.image_size:
        raise UserError(f"data resolution {dataset.resolution} != tokenizer image_size {vq_cfg.image_size}")

    seed_everything(tc.seed)
    model = VQModel(vq_cfg).to(info.device)
    ema = EMA(model, tc.ema_decay) if tc.ema else None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("quantize.") else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(tc.beta1, tc.beta2))
    start = 0
    if st is not None:
        load_strict(model, st["model"], f"{out}/state.pt")
        opt.load_state_dict(st["optimizer"])
        if ema is not None:
            ema.shadow = {k: v.float() for k, v in st["ema"].items()}
        set_rng_state(st["rng"])
        start = int(st["step"])
    net = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
    batches = ImageBatches(dataset, tc.batch_size, tc.seed, tc.flip, info.rank, info.world_size)
    data_info = {"name": getattr(dataset, "name", "?"), "split": getattr(dataset, "split", "?"),
                 "resolution": dataset.resolution, "size": len(dataset), **(data_info or {})}
    run_cfg = {"kind": "vq", "vq": to_dict(vq_cfg), "data": data_info, "train": to_dict(tc)}
    if history:
        run_cfg["history"] = history
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, "vq", run_cfg)
    log = MetricsLog(out / "metrics.jsonl", resume_step=start, enabled=info.is_main)

    def checkpoint(step: int) -> None:
        if not info.is_main:
            return
        save_train_state(out / "state.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                            "ema": ema.shadow if ema else {}, "step": step, "rng": rng_state()})
        save_run_weights(out, ema.shadow if ema else model)

    tty = progress and info.is_main and sys.stderr.isatty()
    bar = tqdm(total=tc.steps, initial=start, disable=not tty, desc="tokenizer", dynamic_ncols=True)
    t0, end = time.monotonic(), min(tc.steps, stop_at_step or tc.steps)
    step = last_ckpt = start
    model.train()
    try:
        while step < end:
            x = batches.get(step).to(info.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            with autocast(info.device, torch.bfloat16 if tc.bf16 else torch.float32):
                recon, aux = net(x)
            diff = recon.float() - x
            rec = diff.abs().mean() if tc.recon_loss == "l1" else diff.pow(2).mean()
            loss = rec + aux["vq_loss"] + aux["commit_loss"] + aux.get("entropy_loss", 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            else:
                gnorm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            # one sync per step; averaged over ranks, so a NaN on any rank stops every rank at this step
            loss_now, gn = distributed.all_reduce_mean(torch.stack([loss.detach().float(), gnorm.float()])).tolist()
            check_finite(step + 1, {"loss": loss_now, "gradient norm": gn}, last_ckpt)
            opt.step()
            reseeded = 0
            if tc.reseed_dead and (step + 1) % tc.reseed_every == 0 and step < tc.reseed_until * tc.steps:
                reseeded = _reseed(model, ema, tc.seed, step, tc.reseed_noise, info.enabled)
            if ema is not None:
                ema.update(model, step)
            step += 1
            if step % tc.log_every == 0 or step == end:
                # averaged over ranks: the numbers describe the global batch
                mse, lossv, recv = distributed.all_reduce_mean(
                    torch.stack([diff.detach().pow(2).mean(), loss.detach(), rec.detach()])).tolist()
                row = {"step": step, "loss": lossv, "rec": recv, "vq": aux["vq_loss"].item(),
                       "commit": aux["commit_loss"].item(), "psnr": round(psnr_from_mse(mse), 3),
                       "usage": round(model.quantize.window_usage(), 4), "perplexity": aux["perplexity"].item(),
                       "reseeded": reseeded, "lr": lr_at(step - 1, tc)}
                if info.is_main:
                    log.write(row)
                    log.flush()
                    if tty:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.2f}", usage=f"{row['usage']:.1%}")
                    elif progress:
                        print(f"step {step}/{tc.steps} loss {row['loss']:.4f} psnr {row['psnr']:.2f} "
                              f"usage {row['usage']:.1%}", file=sys.stderr, flush=True)
            bar.update(1)
            if step % tc.ckpt_every == 0 and step < end:
                log.sync()  # the log covers at least what the checkpoint covers
                checkpoint(step)
                last_ckpt = step
            if time_budget_s is not None and time.monotonic() - t0 > time_budget_s:
                break
        log.sync()
        checkpoint(step)
    finally:
        bar.close()
        log.close()
    distributed.barrier()
    return out


def _reseed(model: VQModel, ema: EMA | None, seed: int, step: int, noise: float, dist_on: bool) -> int:
    """Re-seed dead codewords (see VectorQuantizer.reseed_dead_codes); returns how many moved."""
    q = model.quantize
    before = q.embedding.weight.detach().clone()
    q.reseed_dead_codes(torch.Generator().manual_seed(_seed_for(seed, 3, step)), noise)
    if dist_on:  # every rank drew from its own latents: adopt rank 0's codebook and usage window
        torch.distributed.broadcast(q.embedding.weight.data, 0)
        torch.distributed.broadcast(q.codebook_used, 0)
    moved = (q.embedding.weight.detach() != before).any(1).nonzero().flatten()
    if ema is not None and moved.numel():
        # the average of an old and a re-seeded codeword is meaningless: restart those rows
        ema.copy_rows("quantize.embedding.weight", moved, q.embedding.weight.detach()[moved])
    return int(moved.numel())


@torch.no_grad()
def evaluate_reconstruction(vq: VQModel, dataset, batch_size: int = 128, limit: int | None = None,
                            keep: int = 0) -> dict[str, Any]:
    """Reconstruct `dataset` (first `limit` images): mean per-image PSNR (dB, uint8 [0,255] images),
    codebook usage (fraction of K codes appearing), count; "originals"/"recons" uint8 [keep,R,R,3]."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise UserError("nothing to evaluate: the data set is empty")
    device = next(vq.parameters()).device
    psnrs, codes_all, kept_o, kept_r = [], [], [], []
    for lo in range(0, n, batch_size):
        raw = torch.from_numpy(np.stack([dataset.get_raw(i) for i in range(lo, min(n, lo + batch_size))]))
        x = raw.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)  # [b,3,R,R] in [-1,1]
        codes = vq.encode(x)
        rec = to_uint8(vq.decode_codes(codes)).permute(0, 2, 3, 1).cpu()  # [b,R,R,3] uint8
        mse = (rec.float() - raw.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(255.0**2 / mse))
        codes_all.append(codes.cpu())
        if sum(len(o) for o in kept_o) < keep:
            kept_o.append(raw)
            kept_r.append(rec)
    codes = torch.cat(codes_all)
    res = {"psnr": torch.cat(psnrs).mean().item(), "usage": codebook_usage(codes, vq.cfg.codebook_size),
           "codes_used": int(torch.unique(codes).numel()), "n": n}
    if keep:
        res["originals"] = torch.cat(kept_o)[:keep]
        res["recons"] = torch.cat(kept_r)[:keep]
    return res

