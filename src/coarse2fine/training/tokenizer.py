"""Training the VQ tokenizer: its `Task` for the one loop (training/loop.py) and its run directory.

Loss (LlamaGen's family, each term a TokenizerTrainConfig field and a flag): L1/L2 reconstruction,
VQ + commitment (+ entropy), a perceptual loss on EfficientNet-Lite2 features, and a PatchGAN
discriminator (hinge / vanilla / non-saturating) from `disc_start`, optionally balanced by VQGAN's
adaptive weight. With the discriminator the task has two parts: "model" (the tokenizer) and "disc".

Run dir: config.json {"kind": "vq", "vq", "data", "train"}, model.safetensors (EMA weights when EMA
is on), state.pt (both networks, both optimizers, EMA, RNG, step), metrics.jsonl (one line per step).
Exact resume: batches, flips and dead-code re-seeds are drawn from generators seeded by (seed,
step), so the run needs nothing but the step to continue as if never stopped.

Distributed: one code path. `batch_size` is the global batch; rank r trains on its slice of it, DDP
averages gradients, rank 0 writes files and its re-seeded codewords are broadcast to the others.
The usage window (a buffer DDP broadcasts from rank 0) then holds rank 0's codes only, so under
DDP a code counts as dead when rank 0's share of the batches did not pick it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from coarse2fine import distributed
from coarse2fine.checkpoint import check_run_out, load_train_state, read_run_config, write_run_config
from coarse2fine.config import (TokenizerTrainConfig, UserError, VQConfig, from_dict, to_dict, tokenizer_recipe,
                                vq_config)
from coarse2fine.data.preprocess import to_uint8
from coarse2fine.tokenizer.discriminator import PatchDiscriminator, adaptive_weight, disc_loss, gen_loss
from coarse2fine.tokenizer.vq import VQModel, codebook_usage
from coarse2fine.precision import resolve_dtype
from coarse2fine.training.common import (check_resume, lock_run, saved_settings, seed_everything, warmup_cosine,
                                         warn_long_warmup)
from coarse2fine.training.loop import EMA, Part, Task, adamw, fit, restore

__all__ = ["TokenizerTrainConfig", "tokenizer_recipe", "train_tokenizer", "evaluate_reconstruction", "ImageBatches"]
log = logging.getLogger("coarse2fine.train")


def tokenizer_lr(tc: TokenizerTrainConfig, lr: float):
    return lambda step: lr * warmup_cosine(step, tc.warmup_steps, tc.steps, tc.min_lr_ratio)


def psnr_from_mse(mse_pm1: float) -> float:
    """PSNR (dB) from an MSE measured on [-1, 1] pixels (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse_pm1, 1e-12))


def _resolve(vq_cfg: VQConfig | dict | str, train: TokenizerTrainConfig | dict | None,
             overrides: dict[str, Any]) -> tuple[VQConfig, TokenizerTrainConfig]:
    if isinstance(train, TokenizerTrainConfig):  # given whole: taken as it is
        base = to_dict(train)
    else:  # a preset name brings its recipe, as `train-tokenizer --vq-preset` does; a dict overrides it
        base = {**(tokenizer_recipe(vq_cfg) if isinstance(vq_cfg, str) else {}), **dict(train or {})}
    if isinstance(vq_cfg, str):
        vq_cfg = vq_config(vq_cfg)
    elif isinstance(vq_cfg, dict):
        vq_cfg = from_dict(VQConfig, vq_cfg)
    base.update({k: v for k, v in overrides.items() if v is not None})
    tc = from_dict(TokenizerTrainConfig, base)
    tc.validate()
    check_disc_fits(vq_cfg, tc)
    warn_long_warmup(tc.warmup_steps, tc.steps)
    return vq_cfg, tc


def check_disc_fits(vq_cfg: VQConfig, tc: TokenizerTrainConfig) -> None:
    """Refuse a PatchGAN too deep for the images (its stride-2 convolutions would leave no pixel to
    score) before anything is built or written."""
    if tc.disc_weight > 0 and PatchDiscriminator.patch_grid(vq_cfg.image_size, tc.disc_layers) < 1:
        most = PatchDiscriminator.max_layers(vq_cfg.image_size)
        raise UserError(f"--disc-layers {tc.disc_layers}: the discriminator halves {vq_cfg.image_size} px images "
                        f"{tc.disc_layers} times and is left with no patch to score; at {vq_cfg.image_size} px use "
                        f"--disc-layers {most} or fewer")
    if tc.disc_weight > 0 and tc.disc_start >= tc.steps:
        log.warning("--disc-start %d is at or beyond --steps %d: the discriminator never trains and --disc-weight "
                    "%g does nothing in this run; lower --disc-start (or raise --steps) to use it",
                    tc.disc_start, tc.steps, tc.disc_weight)


def train_tokenizer(vq_cfg: VQConfig | dict | str, out_dir: str | Path, dataset,
                    train: TokenizerTrainConfig | dict | None = None, *, steps: int | None = None,
                    resume: bool = False, data_info: dict | None = None, time_budget_s: float | None = None,
                    stop_at_step: int | None = None, progress: bool = True, device: str | None = None,
                    **train_overrides) -> Path:
    """Train (or resume) a VQ tokenizer on `dataset` (ImageDataset); returns the run dir.

    vq_cfg: VQConfig, its dict, or a preset name; a name brings the preset's training recipe
    (config.tokenizer_recipe, as the CLI does) unless `train` is a whole TokenizerTrainConfig.
    train / train_overrides / steps: TokenizerTrainConfig fields (None = not given). time_budget_s / stop_at_step end this call early (checkpoint written;
    `resume=True` continues). On resume a setting not given takes the run's value; a given one that
    differs is refused, except a larger `steps` (an extension, recorded in config.json "history").
    A NaN/Inf loss or gradient norm stops the run before that step is saved. One process per run dir.
    """
    info = distributed.setup(device)
    out = Path(out_dir)
    with lock_run(out, info.is_main):
        vq_cfg, tc, st, history = _plan(vq_cfg, out, train, steps, resume, train_overrides, info)
        if dataset.resolution != vq_cfg.image_size:
            raise UserError(f"data resolution {dataset.resolution} != tokenizer image_size {vq_cfg.image_size}")
        batches = ImageBatches(dataset, tc.batch_size, tc.seed, tc.flip, info.rank, info.world_size)
        data_info = {"name": getattr(dataset, "name", "?"), "split": getattr(dataset, "split", "?"),
                     "resolution": dataset.resolution, "size": len(dataset), **(data_info or {})}
        run_cfg = {"kind": "vq", "vq": to_dict(vq_cfg), "data": data_info, "train": to_dict(tc)}
        if history:
            run_cfg["history"] = history
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_run_config(out, "vq", run_cfg)
        task = tokenizer_task(vq_cfg, tc, batches, info)
        start = restore(task, st) if st is not None else 0
        fit(task, out, info, start, st, stop_at=stop_at_step, time_budget_s=time_budget_s, progress=progress)
    distributed.barrier()
    return out


def _plan(vq_cfg, out: Path, train, steps, resume: bool, overrides: dict, info):
    """The run's architecture and settings: given ones, or on resume the run's own with the given ones
    checked against them -> (vq_cfg, tc, train state or None, history)."""
    vq_cfg, tc = _resolve(vq_cfg, train, {**overrides, "steps": steps})
    if not resume:
        check_run_out(out, "vq")  # a stage run's state.pt is not a tokenizer's: named as what it is
        if (out / "state.pt").exists():
            raise UserError(f"{out} already holds a tokenizer run; pass --resume to continue it or pick another --out")
        return vq_cfg, tc, None, []
    saved = read_run_config(out, "vq")  # format, version and kind checked
    saved_vq = from_dict(VQConfig, saved["vq"])
    if to_dict(vq_cfg) != to_dict(saved_vq):  # both normalised: a JSON list equals the preset's tuple
        raise UserError(f"--vq-preset: {out} holds a tokenizer of another architecture; leave --vq-preset out "
                        "to resume it, or start a new --out")
    saved_tc = saved_settings(TokenizerTrainConfig, saved.get("train"), f"{out}/config.json")
    asked = to_dict(train) if isinstance(train, TokenizerTrainConfig) else dict(train or {})
    asked.update({**overrides, "steps": steps})
    tc = from_dict(TokenizerTrainConfig, {**to_dict(saved_tc), **{k: v for k, v in asked.items() if v is not None}})
    st = load_train_state(out / "state.pt")
    ext = check_resume(saved_tc, tc, int(st["step"]), f"{out}/config.json", announce=info.is_main)
    return saved_vq, tc, st, saved.get("history", []) + ([ext] if ext else [])


def tokenizer_task(vq_cfg: VQConfig, tc: TokenizerTrainConfig, batches: "ImageBatches", info) -> Task:
    """The tokenizer's Task: part "model" (the VQ autoencoder's loss), and part "disc" (the PatchGAN)
    when disc_weight > 0. Networks are built from tc.seed, the tokenizer first."""
    seed_everything(tc.seed)
    model = VQModel(vq_cfg).to(info.device)
    disc = (PatchDiscriminator(tc.disc_channels, tc.disc_layers).to(info.device) if tc.disc_weight > 0 else None)
    percept = None
    if tc.perceptual_weight > 0:
        from coarse2fine.tokenizer.perceptual import PerceptualLoss

        percept = PerceptualLoss(vq_cfg.image_size, tc.perceptual_depth).to(info.device)
    last_layer = model.decoder.conv_out.weight

    def model_loss(x: torch.Tensor, shared: dict) -> tuple[torch.Tensor, dict]:
        recon, aux = parts[0].wrapped(x)
        diff = recon.float() - x
        rec = diff.abs().mean() if tc.recon_loss == "l1" else diff.pow(2).mean()
        m = {"rec": rec.detach(), "vq": aux["vq_loss"].detach(), "commit": aux["commit_loss"].detach(),
             "mse": diff.detach().pow(2).mean(), "perplexity": aux["perplexity"].detach()}
        nll = tc.recon_weight * rec  # the image terms, which the adaptive weight balances against
        if percept is not None:
            p = percept(recon, x)
            ramp = min(1.0, (shared["step"] + 1) / tc.perceptual_ramp) if tc.perceptual_ramp else 1.0
            nll = nll + ramp * tc.perceptual_weight * p
            m["perceptual"] = p.detach()
        if tc.colour_weight > 0:
            c = (F.adaptive_avg_pool2d(recon.float(), 8) - F.adaptive_avg_pool2d(x, 8)).pow(2).mean()
            nll = nll + tc.colour_weight * c
            m["colour"] = c.detach()
        loss = nll + aux["vq_loss"] + aux["commit_loss"] + aux.get("entropy_loss", 0.0)
        if disc is not None and shared["step"] >= tc.disc_start:
            disc.requires_grad_(False)  # the generator's pass: no gradient into the discriminator
            g = gen_loss(tc.gen_adv_loss, disc(recon))
            disc.requires_grad_(True)
            w = adaptive_weight(nll, g, last_layer) if tc.disc_adaptive else torch.ones(())
            loss = loss + tc.disc_weight * w * g
            m |= {"adv": g.detach(), "adv_weight": w}
        shared["recon"] = recon.detach()
        return loss, m

    def disc_step_loss(x: torch.Tensor, shared: dict) -> tuple[torch.Tensor, dict]:
        real, fake = parts[1].wrapped(x), parts[1].wrapped(shared["recon"])
        return disc_loss(tc.disc_loss, real, fake), {"real": real.detach().float().mean(),
                                                     "fake": fake.detach().float().mean()}

    parts = [Part("model", model, adamw(tc.lr, (tc.beta1, tc.beta2), tc.weight_decay),
                  tokenizer_lr(tc, tc.lr), model_loss, clip=tc.grad_clip)]
    if disc is not None:
        lr = tc.disc_lr or tc.lr
        parts.append(Part("disc", disc, adamw(lr, (tc.beta1, tc.beta2), tc.weight_decay),
                          tokenizer_lr(tc, lr), disc_step_loss, clip=tc.grad_clip,
                          active=lambda step: step >= tc.disc_start))
    ema = EMA(model, tc.ema_decay, warmup=True) if tc.ema_decay > 0 else None

    def after_step(step: int) -> dict[str, float]:
        reseeded = 0
        if tc.reseed_dead and (step + 1) % tc.reseed_every == 0 and step < tc.reseed_until * tc.steps:
            reseeded = _reseed(model, ema, tc.seed, step, tc.reseed_noise, info.enabled)
        return {"reseeded": reseeded}

    def describe(rec: dict[str, Any]) -> dict[str, Any]:
        return {"psnr": round(psnr_from_mse(rec["mse"]), 3), "usage": round(model.quantize.window_usage(), 4)}

    return Task("tokenizer", parts, lambda step: [batches.get(step).to(info.device)], tc.steps, tc.seed,
                resolve_dtype(tc.dtype, info.device), ema=ema, after_step=after_step, describe=describe,
                log_every=tc.log_every, ckpt_every=tc.ckpt_every, tensorboard=False)


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

