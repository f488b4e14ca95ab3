"""A tokenizer trained with the green images repeated (issue 29): does seeing greens more often keep them green?

Greens are 2.2% of emoji64's pixels, and the shipped L2 tokenizer keeps 9% of green test pixels green
(benchmarks/results/tokenizer_hues). This writes emoji64's training split as an image folder in which every
image with more than `--min-share` green pixels is repeated `--repeat` times, then trains the shipped
tokenizer's exact recipe on it (VQ-64-f8, K = 4096, plain L2, 1200 steps of batch 32, seed 0, fp32). The test
split is untouched; score it with tokenizer_hues.py. Resumable (the tokenizer run resumes from its state.pt).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/quality/green_oversample.py --folder /tmp/green_folder \\
        --out /tmp/green_tok
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/quality/tokenizer_hues.py --name emoji64_green_oversampled \\
        --tokenizer "shipped=src/coarse2fine/data/assets/demo_emoji64/tokenizer" --tokenizer "greens 4x=/tmp/green_tok"
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tokenizer_hues import hue_masks


def green_share(x: np.ndarray) -> float:
    """Share of an image's pixels that are clearly green (tokenizer_hues.py's definition), x uint8 [H, W, 3]."""
    return float(hue_masks(x.astype(np.float32) / 255)["green"].mean())


def write_folder(root: Path, repeat: int, min_share: float) -> tuple[int, int, int]:
    """emoji64 train as root/<class>/<index>_<copy>.png; returns (images, green images, files written)."""
    from PIL import Image

    from coarse2fine.data.registry import build_dataset

    ds = build_dataset("emoji64", 64, "train")
    n_green = written = 0
    for i in range(len(ds)):
        x = ds.get_raw(i)
        green = green_share(x) > min_share
        n_green += green
        d = root / ds.classes[ds.labels[i]].replace(" & ", "_and_").replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for c in range(repeat if green else 1):
            p = d / f"{i:05d}_{c}.png"
            if not p.exists():
                Image.fromarray(x).save(p)
            written += 1
    return len(ds), n_green, written


def main(argv=None) -> int:
    import torch

    from coarse2fine.data.registry import build_dataset
    from coarse2fine.training.tokenizer import TokenizerTrainConfig, train_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, required=True, help="where the oversampled training folder is written")
    ap.add_argument("--out", type=Path, required=True, help="the tokenizer run directory")
    ap.add_argument("--repeat", type=int, default=4, help="copies of each green image (default 4)")
    ap.add_argument("--min-share", type=float, default=0.05, help="green pixel share that makes an image green")
    ap.add_argument("--steps", type=int, default=1200)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n, g, w = write_folder(args.folder, args.repeat, args.min_share)
    print(f"{n} training images, {g} with more than {args.min_share:.0%} green pixels, {w} files", flush=True)
    ds = build_dataset("folder", 64, "train", root=str(args.folder))
    t = time.process_time()
    tc = TokenizerTrainConfig(steps=args.steps, batch_size=32, seed=0, dtype="fp32")
    run = train_tokenizer("VQ-64-f8", args.out, ds, tc, progress=False, resume=(args.out / "state.pt").exists())
    print(f"done: {run}, {(time.process_time() - t) / 60:.1f} CPU-min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
