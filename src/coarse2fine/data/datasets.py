"""Image data set classes: one `ImageDataset` interface, two storage strategies.

- `ArrayDataset`: source pixels are in memory (built-in sets: Fashion-MNIST, MNIST-5k, Twemoji).
  The preprocessed uint8 images are cached at construction when they fit in CACHE_BYTES, so
  __getitem__ is an index + flip + float conversion (the tokenizer reads them for many epochs).
- `FolderDataset` (folder.py): source is a list of files, decoded lazily per item.

Items: ds[i] -> (image FloatTensor [3, R, R] in [-1, 1], label int). `get_raw(i)` gives the same
image as uint8 [R, R, 3] before normalisation and before the random flip.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from coarse2fine.data.preprocess import center_crop_arr, preprocess, to_tensor

log = logging.getLogger("coarse2fine.data")

# Upper bound on the in-memory cache of preprocessed images (all built-in sets at 32-64 px fit;
# Fashion-MNIST 60k at 256 px would need 11.8 GB and is preprocessed per item instead).
CACHE_BYTES = 1 << 30


class ImageDataset(Dataset):
    """A labelled image set preprocessed to resolution x resolution RGB.

    Attributes: name (str), classes (list[str], label id = position), num_classes (int),
    labels (np.ndarray int64 [N]), resolution (int), flip (bool), skipped (int: source files that
    could not be read and were left out), split (str).
    """

    def __init__(self, name: str, classes: Sequence[str], labels: np.ndarray, resolution: int,
                 split: str, flip: bool = False, skipped: int = 0):
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.name = name
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.resolution = int(resolution)
        self.split = split
        self.flip = bool(flip)
        self.skipped = int(skipped)

    source_size: int | None = None  # side of the source images before resizing, when they share one

    def __len__(self) -> int:
        return len(self.labels)

    def get_raw(self, i: int) -> np.ndarray:
        """Preprocessed image i as uint8 [R, R, 3] (centre-cropped, not flipped, not normalised)."""
        raise NotImplementedError

    def _raw_view(self, i: int) -> np.ndarray:
        """Like get_raw but may return a read-only view (for __getitem__, which copies anyway)."""
        return self.get_raw(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raw = self._raw_view(i)
        # torch's global RNG: seeded by torch.manual_seed in the main process and re-seeded per
        # DataLoader worker (base_seed + worker_id), so flips are reproducible under a seed.
        if self.flip and torch.rand(()) < 0.5:
            raw = raw[:, ::-1]
        return to_tensor(raw), int(self.labels[i])

    def class_counts(self) -> np.ndarray:
        """Images per class, int64 [num_classes]."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def indices_of_class(self, c: int) -> np.ndarray:
        """Dataset indices (int64, ascending) whose label is c."""
        return np.flatnonzero(self.labels == c)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, resolution={self.resolution}, flip={self.flip}, "
                f"skipped={self.skipped})")


class ArrayDataset(ImageDataset):
    """Images held in memory as uint8 source arrays: grey [N, H, W] or RGB [N, H, W, 3].

    Every source image must already be RGB-composited (no alpha). With cache=None the preprocessed
    set is cached when N*R*R*3 bytes <= CACHE_BYTES; cache=True/False forces it.
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 resolution: int, split: str, flip: bool = False, skipped: int = 0,
                 cache: bool | None = None):
        super().__init__(name, classes, labels, resolution, split, flip, skipped)
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(self.labels):
            raise ValueError(f"images must be uint8 [N,H,W] or [N,H,W,3] with N={len(self.labels)}, "
                             f"got {images.dtype} {images.shape}")
        if images.ndim == 4 and images.shape[3] != 3:
            raise ValueError(f"RGB source images must have 3 channels, got {images.shape}")
        self._source = images
        self.source_size = int(images.shape[1])
        self._cache: np.ndarray | None = None
        nbytes = len(images) * self.resolution * self.resolution * 3
        if cache or (cache is None and nbytes <= CACHE_BYTES):
            self._cache = self._preprocess_all()
            # get_raw returns copies; read-only guards against writes through any other path.
            self._cache.flags.writeable = False

    def _preprocess_one(self, i: int) -> np.ndarray:
        src = self._source[i]
        if src.ndim == 2:
            # Resize the single grey channel, then replicate: identical to resizing the RGB image
            # (the filters act per channel) at a third of the cost.
            grey = np.asarray(center_crop_arr(Image.fromarray(src, "L"), self.resolution))
            return np.repeat(grey[:, :, None], 3, axis=2)
        return preprocess(Image.fromarray(src, "RGB"), self.resolution)

    def _preprocess_all(self) -> np.ndarray:
        out = np.empty((len(self), self.resolution, self.resolution, 3), dtype=np.uint8)
        for i in range(len(self)):
            out[i] = self._preprocess_one(i)
        return out

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def _raw_view(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else self._preprocess_one(i)

    def get_raw(self, i: int) -> np.ndarray:
        if self._cache is not None:
            return self._cache[i].copy()  # a copy: callers may modify it or wrap it with torch
        return self._preprocess_one(i)


def take_per_class(labels: np.ndarray, limit_per_class: int | None) -> np.ndarray:
    """Indices (ascending) keeping the first `limit_per_class` items of each class, in order."""
    labels = np.asarray(labels)
    if limit_per_class is None:
        return np.arange(len(labels))
    if limit_per_class < 1:
        raise ValueError(f"limit_per_class must be >= 1, got {limit_per_class}")
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:limit_per_class]] = True
    return np.flatnonzero(keep)


RESAMPLE_WARN = 1.5  # a tokenizer this many times larger or smaller than the images is worth a word


def warn_resampled(ds: ImageDataset, what: str = "tokenizer") -> bool:
    """One warning line when the data set's images (all of one size) are resized by a large factor to
    the model's resolution: upsampled, the model spends its codes on blur; downsampled, it never sees the
    detail. Returns whether it warned."""
    from coarse2fine.config import VQ_PRESETS

    src, res = ds.source_size, ds.resolution
    if not src or max(src / res, res / src) < RESAMPLE_WARN:
        return False
    near = min({c["image_size"] for c in VQ_PRESETS.values()}, key=lambda s: abs(s - src))
    fits = ", ".join(n for n, c in VQ_PRESETS.items() if c["image_size"] == near)
    log.warning("the %s works at %d px but %s's images are %d px: they are %s %.1fx; a %d px tokenizer (%s) fits "
                "this data", what, res, ds.name, src, "upsampled" if res > src else "downsampled",
                max(src / res, res / src), near, fits)
    return True


def warn_skipped(count: int, example: tuple[Path, str] | None) -> None:
    """One warning line for files left out: 'skipped N unreadable files (e.g. PATH: REASON)'."""
    if count:
        eg = f" (e.g. {example[0]}: {example[1]})" if example else ""
        log.warning("skipped %d unreadable file%s%s", count, "" if count == 1 else "s", eg)
