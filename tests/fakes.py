"""Small synthetic inputs shared by the integration tests (a code store, an image set, a tiny tokenizer).
Importable as `fakes` because pyproject.toml puts tests/ on pytest's pythonpath."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from coarse2fine.config import VQConfig

K, C, GRID, NCLS = 64, 8, 4, 3


def make_store(path, n=48, seed=0, fingerprint="fp"):
    """A code store in the extract-codes format, with class-dependent structure to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NCLS, n)
    codes = (labels[:, None] * 7 + np.arange(GRID * GRID)[None] + rng.integers(0, 3, (n, GRID * GRID))) % K
    path.mkdir(parents=True)
    np.save(path / "codes.npy", codes.astype(np.int16))
    np.save(path / "labels.npy", labels.astype(np.int64))
    meta = {"num_classes": NCLS, "classes": [f"c{i}" for i in range(NCLS)], "grid": GRID, "codebook_size": K,
            "tokenizer_fingerprint": fingerprint, "tokenizer_dir": "", "flip": False, "dataset": "synthetic",
            "split": "train", "count": n}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


class Interrupted(Exception):
    pass


class Blobs:
    """ImageDataset stand-in: n smooth random RGB images (uint8) with 4 classes. get_raw raises
    Interrupted at index `fail_at` (to simulate a crash mid-extraction)."""

    def __init__(self, n: int = 40, resolution: int = 16, fail_at: int | None = None):
        g = np.random.default_rng(0)
        low = g.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
        self.images = np.stack([np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.BICUBIC))
                                for im in low])
        self.labels = np.arange(n, dtype=np.int64) % 4
        self.classes, self.num_classes = ["a", "b", "c", "d"], 4
        self.name, self.split, self.resolution, self.fail_at = "blobs", "train", resolution, fail_at

    def __len__(self) -> int:
        return len(self.labels)

    def get_raw(self, i: int) -> np.ndarray:
        if i == self.fail_at:
            raise Interrupted
        return self.images[i]


CFG = VQConfig(codebook_size=64, codebook_embed_dim=4, ch=16, ch_mult=(1, 2), z_channels=16,
               num_res_blocks=1, image_size=16, use_attn=True)
TRAIN = dict(batch_size=8, lr=2e-3, warmup_steps=2, reseed_every=2, log_every=1, ckpt_every=2, ema_decay=0.999, flip=True)
