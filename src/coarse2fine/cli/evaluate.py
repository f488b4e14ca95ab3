"""`coarse2fine eval` and `coarse2fine train-classifier`: offline image-quality evaluation."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from coarse2fine.cli._args import (DefaultsFormatter, add_data, add_device, add_threads, check_out_path,
                                   positive_float, positive_int, reject_unused, seed_int)
from coarse2fine.eval.classifier import BACKBONES
from coarse2fine.fileio import atomic_write_bytes


def _train_classifier(args: argparse.Namespace) -> int:
    from coarse2fine.eval.classifier import train_classifier

    train_classifier(args.data, args.image_size, args.out, epochs=args.epochs, batch_size=args.batch_size,
                     lr=args.lr, width=args.width, seed=args.seed, root=args.data_root,
                     limit_per_class=args.limit_per_class, val_fraction=args.val_fraction,
                     backbone=args.backbone, feature_resolution=args.feature_resolution,
                     tokenizer=args.tokenizer)
    return 0


def _json_safe(obj):
    """NaN/inf are not JSON; write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _eval(args: argparse.Namespace) -> int:
    from coarse2fine.eval.samples import evaluate_images, format_table
    from coarse2fine.data.sample_folder import read_samples

    if args.json:
        check_out_path(args.json, "--json", kind="file")
    if args.pipeline:
        images, labels, label_note = _sample_pipeline(args)
        source = args.pipeline
    else:
        reject_unused(args, ["--seed"], "applies to --pipeline only (a samples folder is already sampled); drop it")
        images, labels, label_note = read_samples(args.samples)
        source = args.samples
    print(f"samples: {len(images)} images {images.shape[1]}x{images.shape[2]} from {source}; {label_note}")
    result = evaluate_images(
        images, labels, args.data, split=args.split, classifier_dir=args.classifier, root=args.data_root,
        val_fraction=args.val_fraction,
        num_samples=args.num_samples, ref_count=args.ref_count, feature_resolution=args.feature_resolution,
        inception_weights=args.inception_weights, ref_batch=args.ref_batch, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, batch_size=args.batch_size, kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size, device=args.device)
    result["samples"] = str(source)
    result["labels"] = label_note
    print(format_table(result))
    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(_json_safe(result), indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


def _sample_pipeline(args: argparse.Namespace):
    """--pipeline: --num-samples class-balanced images from a release folder, with its own sampling defaults,
    in memory; the images `sample-fid --pipeline` writes for the same --seed (chunks of its default batch)."""
    from coarse2fine.apps.sample_fid import class_schedule, sample_balanced
    from coarse2fine.config import UserError
    from coarse2fine.eval.samples import check_inputs, check_sample_count, check_sample_labels
    from coarse2fine.pipeline import load_pretrained

    if args.num_samples is None:
        raise UserError("--pipeline needs --num-samples N: how many class-balanced images to sample and score")
    pipe = load_pretrained(args.pipeline, args.device)
    # every flag that evaluate_images checks, checked before the sampling it would otherwise come after
    asked = class_schedule(args.num_samples, pipe.num_classes)
    check_sample_count(args.num_samples, args.classifier, args.inception_weights)
    _, ds = check_inputs(args.data, args.split, pipe.vq.cfg.image_size, args.classifier, root=args.data_root,
                         val_fraction=args.val_fraction, ref_count=args.ref_count,
                         inception_weights=args.inception_weights, ref_batch=args.ref_batch,
                         cache_dir=args.cache_dir, use_cache=not args.no_cache)
    check_sample_labels(asked, len(ds.classes), args.data)
    images, labels = sample_balanced(pipe, args.num_samples, 0 if args.seed is None else args.seed)
    return images, labels, f"sampled now with the pipeline's defaults ({type(pipe).__name__}, seed {args.seed or 0})"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="score generated samples against a data set (offline FD/KID/P&R, classifier IS/accuracy)",
        description="Score generated images against a data set split. Always offline: Frechet distance, KID "
                    "and precision/recall (k=3) on EfficientNet-Lite0 features at a fixed resolution "
                    "(named e.g. FD-EffNetLite0@64; NOT FID, not comparable with published FIDs); with "
                    "--classifier, an Inception-Score-like score and the accuracy of the class asked for. "
                    "True FID/IS only with --inception-weights and --ref-batch. Every score is printed with "
                    "the sample count N and reference count M; compare runs only at equal N and M.",
        formatter_class=DefaultsFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples",
                     help="folder of PNGs (labels from names like 000012_c3.png) or .npz with arr_0 uint8 "
                          "NxHxWx3 and optional `labels` (or ADM's arr_1)")
    src.add_argument("--pipeline",
                     help="a release folder (`coarse2fine export`) or Hugging Face repo id: sample --num-samples "
                          "class-balanced images with its sampling defaults and score them (nothing is written)")
    p.add_argument("--seed", type=seed_int, default=None, help="with --pipeline: the sampling seed (default 0)")
    add_data(p)
    p.add_argument("--split", default="test", help="reference split")
    p.add_argument("--classifier", default=None, help="run dir from `coarse2fine train-classifier`")
    p.add_argument("--num-samples", type=positive_int, default=None,
                   help="use the first N samples (default: all); with --pipeline, how many to sample (required)")
    p.add_argument("--ref-count", type=positive_int, default=None,
                   help="reference images: a fixed seeded subset of this size (default: the whole split)")
    p.add_argument("--feature-resolution", type=positive_int, default=64,
                   help="EfficientNet-Lite0 input size in px; part of the score names")
    p.add_argument("--inception-weights", default=None,
                   help="torch-fidelity Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth) "
                        "for true FID/IS; never downloaded")
    p.add_argument("--ref-batch", default=None, help="ADM reference batch .npz (arr_0) for true FID")
    p.add_argument("--kid-subsets", type=positive_int, default=100, help="KID: number of random subsets")
    p.add_argument("--kid-subset-size", type=positive_int, default=1000, help="KID: subset size (capped at N and M)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="feature extraction batch size")
    p.add_argument("--cache-dir", default=None,
                   help="reference statistics cache (default $COARSE2FINE_CACHE or ~/.cache/coarse2fine)")
    p.add_argument("--no-cache", action="store_true", help="recompute reference features, write no cache")
    add_device(p)
    add_threads(p)
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.set_defaults(func=_eval)

    t = subparsers.add_parser(
        "train-classifier", help="train the small CNN classifier used by `eval` on a data set",
        description="Train a small CNN on the data set's train split and report its held-out accuracy on the "
                    "test split (printed and stored in OUT/config.json). `eval --classifier OUT` then scores "
                    "samples by class accuracy and an Inception-Score-like score on the data set's own classes.",
        formatter_class=DefaultsFormatter)
    add_data(t)
    t.add_argument("--image-size", type=positive_int, default=32, help="image size in px (samples are resized to it)")
    t.add_argument("--out", required=True, help="output run dir (model.safetensors + config.json)")
    t.add_argument("--epochs", type=positive_int, default=8, help="training epochs")
    t.add_argument("--batch-size", type=positive_int, default=128, help="batch size")
    t.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate (AdamW, one-cycle cosine)")
    t.add_argument("--width", type=positive_int, default=24, help="channels of the stem conv (the two stages use 2x and 4x)")
    t.add_argument("--limit-per-class", type=positive_int, default=None, help="train on at most this many images per class")
    t.add_argument("--seed", type=seed_int, default=0, help="random seed")
    t.add_argument("--backbone", choices=BACKBONES, default="cnn",
                   help="cnn: the small CNN trained from scratch; lite0-probe: a linear probe on frozen "
                        "EfficientNet-Lite0 features (stronger on small colour sets such as emoji64)")
    t.add_argument("--feature-resolution", type=positive_int, default=128,
                   help="lite0-probe: the size the images are resized to for the features")
    t.add_argument("--tokenizer", default=None,
                   help="a tokenizer run dir: also train on its reconstructions of the training images, and "
                        "report accuracy on the held-out images reconstructed (what scores this tokenizer's "
                        "samples fairly: a classifier of sharp originals can fail on decoded images)")
    add_threads(t)
    t.set_defaults(func=_train_classifier)

