"""Subcommands for ImageNet scale: import-llamagen, extract-codes-imagenet, sample-fid.

The last two run unchanged as one process or under torchrun (`torchrun --nproc_per_node 8 -m
coarse2fine.cli ...`); both resume when rerun with the same flags.
"""
from __future__ import annotations

import argparse
import json

from coarse2fine.cli._args import (DefaultsFormatter, add_compile, add_device, add_dtype, add_threads, nonneg_float,
                                   nonneg_int, positive_float, positive_int, reject_unused, seed_int)
from coarse2fine.apps.sample_fid import SAMPLE_BATCH
from coarse2fine.config import VQ_PRESETS


def register(sub) -> None:
    p = sub.add_parser(
        "import-llamagen", help="turn LlamaGen release files (vq_ds16_c2i.pt, c2i_B_256.pt, ...) into run directories",
        description="Writes OUT/tokenizer (from --vq) and OUT/baseline (from --gpt), loadable by every other "
                    "subcommand: cluster --tokenizer OUT/tokenizer, extract-codes*, sample --baseline OUT/baseline, "
                    "sample-fid. Files load with weights_only=True and strict key checks.",
        formatter_class=DefaultsFormatter)
    p.add_argument("--vq", help="LlamaGen tokenizer checkpoint, e.g. vq_ds16_c2i.pt")
    p.add_argument("--vq-preset", default="VQ-16", choices=sorted(VQ_PRESETS), help="tokenizer architecture of --vq")
    p.add_argument("--tokenizer", help="with --gpt and no --vq: an already imported tokenizer run dir")
    p.add_argument("--gpt", help="LlamaGen class-to-image checkpoint, e.g. c2i_B_256.pt")
    p.add_argument("--preset", help="architecture of --gpt: GPT-B, GPT-L, GPT-XL or GPT-XXL (heads are not stored "
                                    "in the file)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="resolution the models were trained at (256 for *_256.pt, 384 for *_384.pt); sets the grid "
                        "(default: the size the --vq file records, else its preset's; for --gpt alone, the tokenizer's)")
    p.add_argument("--ema", action="store_true", help="import the file's 'ema' weights instead of 'model'")
    p.add_argument("--out", required=True, help="output directory (gets tokenizer/ and baseline/)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "extract-codes-imagenet", help="ten-crop code extraction of an ImageNet-style folder, sharded and resumable",
        description="LlamaGen's augmentation: for each crop range r, ADM centre crop to int(S*r) px, then the four "
                    "corners and the centre, and the same of the mirrored image (10 code sequences per range). "
                    "Output: one memory-mapped .npy per shard plus index.json, usable as `train --codes OUT`. "
                    "Under torchrun the shards are spread over the ranks; a killed run resumes where it stopped "
                    "when rerun with the same flags (at any number of processes).",
        formatter_class=DefaultsFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer run dir (e.g. OUT/tokenizer of import-llamagen)")
    p.add_argument("--data-root", required=True,
                   help="image root: ROOT/<class>/... or ROOT/{train,val}/<class>/...; class ids = sorted folder names")
    p.add_argument("--split", default="train", help="split folder when ROOT has train/ val/")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--image-size", type=positive_int, default=None, help="crop size S in px (default: the tokenizer's)")
    p.add_argument("--crop-ranges", type=positive_float, nargs="+", default=[1.1, 1.05],
                   help="centre-crop margins (LlamaGen extracts 1.1 and 1.05); 10 variants per range")
    p.add_argument("--shard-size", type=positive_int, default=10_000, help="images per shard file")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per encoder batch (x 10 per crop range)")
    p.add_argument("--workers", type=nonneg_int, default=8, help="image decoding processes per rank (0 = in process)")
    p.add_argument("--limit-per-class", type=positive_int, default=None, help="only the first N images of each class")
    add_dtype(p, "fp32", "encoder autocast precision (LlamaGen extracts in fp32)")
    add_device(p)
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "sample-fid", help="sample N class-balanced images (default 50,000 = 50 per class) for FID: PNGs + ADM .npz",
        description="Sample i gets class i mod C. Chunks of --batch-size are seeded from (--seed, chunk), so the "
                    "images do not depend on the number of processes; rerunning with the same flags only samples "
                    "what is missing. Writes OUT/samples/*.png (lossless; never JPEG for FID), OUT/samples.npz "
                    "(arr_0 uint8 NxHxWx3 for the ADM evaluator, plus labels) and OUT/fid_run.json.",
        formatter_class=DefaultsFormatter)
    from coarse2fine.cli.models import SAMPLE_COMPILE_HELP, add_pipeline_source, add_sampling_flags

    add_pipeline_source(p)
    p.add_argument("--fine", help="CTF stage-2 run dir")
    p.add_argument("--tokenizer", help="tokenizer run dir (default: the one recorded in the runs)")
    p.add_argument("--num-samples", type=positive_int, default=50_000,
                   help="total images; a multiple of the class count")
    p.add_argument("--batch-size", type=positive_int, default=SAMPLE_BATCH,
                   help="images per sampling batch (part of the seeding)")
    p.add_argument("--seed", type=seed_int, default=0, help="base random seed; chunk i uses (seed, i)")
    p.add_argument("--image-size-eval", type=positive_int, default=None,
                   help="resize decoded images (bicubic) to this size, as LlamaGen scores its 384 px models at 256")
    add_dtype(p, "fp32", "autocast precision while sampling (LlamaGen's FID runs use bf16)")
    add_compile(p, SAMPLE_COMPILE_HELP)
    add_device(p)
    add_threads(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    add_sampling_flags(p)
    p.add_argument("--cfg-interval-llamagen", type=nonneg_float, default=None,
                   help="LlamaGen's --cfg-interval C instead of --cfg-interval: guidance on tokens 0..floor(C)+1, "
                        "the same as --cfg-interval floor(C)+2")
    p.set_defaults(func=cmd_sample_fid)


def cmd_import(args) -> int:
    from coarse2fine.apps.llamagen import describe, import_llamagen

    done = import_llamagen(args.out, vq=args.vq, gpt=args.gpt, preset=args.preset, vq_preset=args.vq_preset,
                           image_size=args.image_size, tokenizer_dir=args.tokenizer, use_ema=args.ema)
    for name, path in done.items():
        print(f"wrote {path}: {describe(path)}")
    return 0


def cmd_extract(args) -> int:
    from coarse2fine.data.tencrop import extract_tencrop

    res = extract_tencrop(args.tokenizer, args.data_root, args.out, split=args.split, image_size=args.image_size,
                          crop_ranges=tuple(args.crop_ranges), shard_size=args.shard_size, batch_size=args.batch_size,
                          num_workers=args.workers, dtype=args.dtype, limit_per_class=args.limit_per_class,
                          device=args.device, progress=not args.no_progress)
    from coarse2fine.distributed import rank

    if rank() != 0:  # one report per run, not one per process
        return 0
    state = "complete" if res["complete"] else "incomplete (rerun the same command to finish)"
    print(f"{args.out}: {res['images']} images x {res['variants']} variants, {res['shards']} shards, {state}; "
          f"{res['encoded_this_run']} images encoded by this process in {res['wall_s']:.1f} s")
    return 0


def cmd_sample_fid(args) -> int:
    from coarse2fine.cli.models import check_mode, given_sampling
    from coarse2fine.config import UserError
    from coarse2fine.apps.sample_fid import sample_fid

    check_mode(args)
    if args.pipeline:
        reject_unused(args, ["--fine", "--tokenizer"], "comes from the release folder with --pipeline; drop it")
    if args.cfg_interval_llamagen is not None:
        from coarse2fine.apps.llamagen import cfg_interval_from_llamagen

        if args.cfg_interval is not None:
            raise UserError("give --cfg-interval or --cfg-interval-llamagen, not both")
        args.cfg_interval = cfg_interval_from_llamagen(args.cfg_interval_llamagen)
    given1, given2 = given_sampling(args)  # over the pipeline's own defaults, once it is loaded
    summary = sample_fid(args.out, baseline=args.baseline, coarse=args.coarse, fine=args.fine,
                         pipeline=args.pipeline, tokenizer=args.tokenizer, num_samples=args.num_samples,
                         batch_size=args.batch_size, seed=args.seed, stage1=given1, stage2=given2, dtype=args.dtype,
                         image_size_eval=args.image_size_eval, device=args.device, progress=not args.no_progress,
                         compile_mode=args.compile or None)
    if summary:  # rank 0
        print(json.dumps({k: summary[k] for k in ("images", "height", "width", "per_class", "sampled_this_run",
                                                  "world_size", "wall_s", "images_per_s", "npz")}, indent=1))
    return 0

