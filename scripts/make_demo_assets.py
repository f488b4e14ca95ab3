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


def build(out: Path, vq_steps: int = 1200, clf_epochs: int = 8, limit_per_class: int | None = None,
          log=print) -> dict:
    """Train both networks into out/{tokenizer,classifier}/ and return the manifest."""
    from coarse2fine.data import build_dataset
    from coarse2fine.eval.classifier import train_classifier
    from coarse2fine.training.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        ds = build_dataset("default", 32, "train", limit_per_class=limit_per_class)
        log(f"tokenizer: VQ-tiny, {vq_steps} steps, fp32, 1 thread")
        run = train_tokenizer("VQ-tiny", Path(tmp) / "tokenizer", ds, steps=vq_steps, batch_size=32, seed=0,
                              dtype="fp32", progress=False)
        _keep(run, out / "tokenizer")
        log(f"tokenizer done in {time.time() - t:.0f} s")
        t = time.time()
        run = Path(tmp) / "classifier"
        train_classifier("default", 32, run, epochs=clf_epochs, seed=0, limit_per_class=limit_per_class, log=log)
        _keep(run, out / "classifier")
        log(f"classifier done in {time.time() - t:.0f} s")
    manifest = {"torch": torch.__version__, "vq_steps": vq_steps, "classifier_epochs": clf_epochs,
                "sha256": {f"{d}/model.safetensors": _sha(out / d / "model.safetensors")
                           for d in ("tokenizer", "classifier")}}
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
    ap.add_argument("--out", type=Path, default=ASSETS, help=f"asset folder (default {ASSETS})")
    ap.add_argument("--check", action="store_true", help="retrain into a temp folder and compare with --out")
    ap.add_argument("--vq-steps", type=int, default=1200)
    ap.add_argument("--classifier-epochs", type=int, default=8)
    args = ap.parse_args()
    if not args.check:
        m = build(args.out, args.vq_steps, args.classifier_epochs)
        print(json.dumps(m, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), args.vq_steps, args.classifier_epochs)
        diff = same_assets(args.out, Path(tmp))
    print("identical" if not diff else f"differ: {diff}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
