"""Tokenizer subcommands: train-tokenizer, reconstruct, extract-codes."""
from __future__ import annotations

import argparse
from pathlib import Path

from coarse2fine.cli._args import (add_data, add_device, add_dtype, add_threads, nonneg_float, nonneg_int,
                                   positive_float, positive_int, seed_int)
from coarse2fine.cli._args import check_out_path
from coarse2fine.cli.models import add_vq_preset, load_tokenizer_any
from coarse2fine.config import (DISC_LOSSES, GEN_LOSSES, MAX_CODEBOOK, VQ_PRESETS, TokenizerTrainConfig,
                                tokenizer_recipe)


def _ema_decay(s: str) -> float:
    v = nonneg_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


# TokenizerTrainConfig field -> (flag type, or choices, or bool; help). Every flag defaults to None = "not
# given": a fresh run takes the preset's recipe (config.tokenizer_recipe), --resume the run's saved value.
_TOKENIZER_FLAGS = {
    "steps": (positive_int, "total optimisation steps"),
    "batch_size": (positive_int, "global batch size"),
    "lr": (positive_float, "peak AdamW learning rate"),
    "warmup_steps": (nonneg_int, "linear warm-up steps"),
    "weight_decay": (nonneg_float, "AdamW weight decay on conv weights (never the codebook)"),
    "recon_loss": (("l1", "l2"), "pixel reconstruction loss"),
    "recon_weight": (nonneg_float, "weight of the pixel reconstruction loss"),
    "perceptual_weight": (nonneg_float, "weight of the perceptual loss on EfficientNet-Lite2 features (0 = off)"),
    "perceptual_depth": (positive_int, "Lite2 taps the perceptual loss compares, shallowest first (1-5; shallow "
                                       "taps keep colour)"),
    "perceptual_ramp": (nonneg_int, "steps over which the perceptual weight rises linearly from 0"),
    "colour_weight": (nonneg_float, "weight of the mean-colour error on an 8x8 grid (images average-pooled; 0 = off)"),
    "disc_weight": (nonneg_float, "weight of the PatchGAN adversarial loss (0 = no discriminator)"),
    "disc_start": (nonneg_int, "first step of the adversarial loss and of discriminator training"),
    "disc_loss": (DISC_LOSSES, "the discriminator's loss"),
    "gen_adv_loss": (GEN_LOSSES, "the tokenizer's adversarial loss"),
    "disc_adaptive": (bool, "scale the adversarial loss by VQGAN's adaptive weight (gradient-norm ratio at the "
                            "decoder's last layer)"),
    "disc_channels": (positive_int, "PatchGAN width (channels of its first layer)"),
    "disc_layers": (positive_int, "PatchGAN stride-2 layers"),
    "disc_lr": (nonneg_float, "discriminator learning rate (0 = the tokenizer's)"),
    "ema_decay": (_ema_decay, "EMA decay of the exported weights (0 = off)"),
    "reseed_dead": (bool, "move unused codewords onto recent encoder outputs"),
    "ckpt_every": (positive_int, "checkpoint interval (steps)"),
    "log_every": (positive_int, "progress-line interval (steps; metrics.jsonl has every step)"),
}


def _recipe_defaults(field: str) -> str:
    """"default X" of VQ-tiny/VQ-small, and the 64 px and LlamaGen presets' values where they differ."""
    values = {who: getattr(TokenizerTrainConfig(**tokenizer_recipe(preset)), field)
              for who, preset in (("VQ-tiny/VQ-small", "VQ-tiny"), ("VQ-64-f8/f4", "VQ-64-f8"), ("VQ-16/VQ-8", "VQ-16"))}
    first = values.pop("VQ-tiny/VQ-small")
    return "; ".join([f"default {first}"] + [f"{who}: {v}" for who, v in values.items() if v != first])


def register(sub) -> None:
    p = sub.add_parser("train-tokenizer", help="train a VQ tokenizer (LlamaGen architecture) on a data set",
                       description="Train a VQ autoencoder; the run dir gets config.json, model.safetensors "
                                   "(EMA weights when EMA is on), state.pt and metrics.jsonl.")
    _data_args(p, default_split=None)
    p.add_argument("--vq-preset", choices=sorted(VQ_PRESETS),
                   help="tokenizer architecture (default VQ-tiny: 32x32 -> 8x8 codes, K=4096)")
    p.add_argument("--codebook-size", type=positive_int,
                   help=f"codebook entries K of a new tokenizer, 2 to {MAX_CODEBOOK} (default: the preset's, 4096 on the "
                        "CPU presets)")
    p.add_argument("--commit-beta", type=nonneg_float,
                   help="weight of the commitment loss of a new tokenizer (default: the preset's, 0.25 as LlamaGen)")
    p.add_argument("--entropy-loss-ratio", type=nonneg_float,
                   help="weight of the codebook entropy loss of a new tokenizer (default: the preset's, 0 = off)")
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    for field, (typ, what) in _TOKENIZER_FLAGS.items():
        kw = {"choices": typ} if isinstance(typ, tuple) else (
            {"action": argparse.BooleanOptionalAction} if typ is bool else {"type": typ})
        p.add_argument("--" + field.replace("_", "-"), default=None, help=f"{what} ({_recipe_defaults(field)})", **kw)
    add_dtype(p, None, "autocast precision of the conv stack")
    p.add_argument("--seed", type=seed_int, help="random seed (default 0)")
    p.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                   help="stop (with a checkpoint) after this much wall time; --resume continues")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_device(p)
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reconstruct", help="encode+decode images, save originals beside reconstructions, "
                                           "print PSNR and codebook usage")
    _tokenizer_arg(p)
    _data_args(p, default_split="test")
    p.add_argument("--num-shown", type=nonneg_int, default=64,
                   help="images shown in the PNG (0 = no PNG; default 64)")
    p.add_argument("--num-images", type=positive_int,
                   help="images used for PSNR/usage (default: the whole split)")
    p.add_argument("--out", default="recon.png", help="PNG path (default recon.png)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per encoder batch (default 128)")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("extract-codes", help="encode a data split (and its horizontal flips) into a "
                                             "memory-mapped code store; rerun to resume")
    _tokenizer_arg(p)
    _data_args(p, default_split="train")
    p.add_argument("--out", required=True, help="code store directory")
    p.add_argument("--no-flip", action="store_true", help="skip the horizontally flipped copy of each image")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per encoder batch (default 64)")
    add_device(p)
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=cmd_extract)


def _data_args(p, default_split: str | None) -> None:
    add_data(p, default=None)
    p.add_argument("--limit-per-class", type=positive_int, help="keep only the first N images of each class")
    if default_split is not None:
        p.add_argument("--split", default=default_split, help=f"data split (default {default_split})")


def _tokenizer_arg(p) -> None:
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer run dir, or a LlamaGen VQ .pt file (then --vq-preset picks the architecture)")
    add_vq_preset(p)


def _load_tokenizer(args):
    return load_tokenizer_any(args.tokenizer, args.vq_preset).to(args.device)


def _dataset(args, resolution: int, split: str, data: dict | None = None):
    """The data set the flags name (or `data`: a plan's name/root/limit_per_class/val_fraction) -> (dataset,
    the record a run keeps of it)."""
    from coarse2fine.data import build_dataset

    d = data if data is not None else {"name": args.data, "root": args.data_root,
                                        "limit_per_class": args.limit_per_class, "val_fraction": args.val_fraction}
    name = d["name"] or "default"
    ds = build_dataset(name, resolution, split, root=d["root"], limit_per_class=d["limit_per_class"],
                       val_fraction=d["val_fraction"])
    info = {"name": name, "root": d["root"], "limit_per_class": d["limit_per_class"], "split": split,
            "val_fraction": getattr(ds, "val_fraction", None)}
    return ds, info


def cmd_train(args) -> int:
    from coarse2fine.data.datasets import warn_resampled
    from coarse2fine.training.plan import plan_tokenizer_run
    from coarse2fine.training.tokenizer import train_tokenizer

    out = Path(args.out)
    check_out_path(out)
    given = {f: getattr(args, f) for f in _TOKENIZER_FLAGS if f != "steps"}
    plan = plan_tokenizer_run(out, resume=args.resume, preset=args.vq_preset,
                              arch={"codebook_size": args.codebook_size, "commit_beta": args.commit_beta,
                                    "entropy_loss_ratio": args.entropy_loss_ratio},
                              data={"name": args.data, "root": args.data_root, "limit_per_class": args.limit_per_class,
                                    "val_fraction": args.val_fraction},
                              given={**given, "steps": args.steps})
    if plan.summary and not args.no_progress:
        print(plan.summary, flush=True)
    size = plan.vq["image_size"] if isinstance(plan.vq, dict) else plan.vq.image_size
    ds, info = _dataset(args, size, "train", plan.data)
    warn_resampled(ds)
    train_tokenizer(plan.vq, out, ds, plan.recipe, steps=args.steps, resume=args.resume, data_info=info,
                    time_budget_s=args.time_budget, progress=not args.no_progress, device=args.device,
                    dtype=args.dtype, seed=args.seed, **given)
    print(f"tokenizer saved in {out} (config.json, model.safetensors, state.pt)")
    return 0


def cmd_reconstruct(args) -> int:
    import torch

    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.training.tokenizer import evaluate_reconstruction

    check_out_path(args.out, kind="file", suffix=".png")  # before the tokenizer and data are loaded
    vq = _load_tokenizer(args)
    ds, _ = _dataset(args, vq.cfg.image_size, args.split)
    res = evaluate_reconstruction(vq, ds, batch_size=args.batch_size, limit=args.num_images, keep=args.num_shown)
    if args.num_shown:
        # pairs side by side: original_i, reconstruction_i; 8 pairs per row
        pairs = torch.stack([res["originals"], res["recons"]], dim=1).flatten(0, 1)  # [2n, R, R, 3]
        save_grid(pairs.numpy(), args.out, nrow=16)
        print(f"wrote {args.out}: {len(res['originals'])} originals (left) beside reconstructions (right)")
    print(f"PSNR {res['psnr']:.2f} dB over {res['n']} {args.split} images; codebook usage "
          f"{100 * res['usage']:.1f}% ({res['codes_used']}/{vq.cfg.codebook_size} codes)")
    return 0


def cmd_extract(args) -> int:
    from coarse2fine.data.codes import check_extract_out, extract_codes
    from coarse2fine.data.datasets import warn_resampled

    out = Path(args.out)
    check_out_path(out)
    check_extract_out(out)  # before loading anything: new, empty, resumable, or a failed start to redo
    vq = _load_tokenizer(args)
    ds, info = _dataset(args, vq.cfg.image_size, args.split)
    warn_resampled(ds)
    out = extract_codes(vq, ds, args.out, flip=not args.no_flip, batch_size=args.batch_size,
                        tokenizer_dir=args.tokenizer, data_info=info, progress=not args.no_progress)
    rows = len(ds) * (1 if args.no_flip else 2)
    print(f"codes of {len(ds)} images ({rows} rows) in {out}")
    return 0
