"""ImageNet-style folder data set: ROOT/<class name>/**/<image file>.

Layout rules (also in `coarse2fine data show --help`):
- Class ids are the sorted sub-folder names (0, 1, ...); images are found recursively inside each
  class folder (hidden files and folders, names starting with ".", are ignored). Symlinked folders
  (class folders or folders inside them) are followed; a link that points at the class root or an
  ancestor of itself is a cycle and an error. Broken links, non-regular files and a file reached a
  second time through links are skipped and counted.
- Splits: if every sub-folder of ROOT is named train/val/test, ROOT/<split> is the class root
  ("val" and "test" stand in for each other when only one exists). Otherwise ROOT itself is the
  class root (a plain class folder) and a seeded held-out split is set aside: `val_fraction` of each
  class's usable images (default DEFAULT_VAL_FRACTION, at least one image per class of two or more),
  chosen by a permutation seeded with 0 of the sorted file list, form split "val" (alias "test"); the
  rest form "train". The rule depends only on the files and the fraction, so every command that reads
  the folder with the same --val-fraction sees the same split.
- Every other file inside a class folder is probed at scan time (header read, PIL verify, size
  limits); files that fail are skipped and counted in `skipped` with one warning line. Images
  smaller than MIN_SIDE or larger than MAX_PIXELS (preprocess.py) count as skipped too.
- A class folder left with no usable image is an error (dropping it silently would shift every
  later class id); so is a ROOT with no usable image at all.
  A JPEG without its end-of-image marker (a truncated file, which PIL's verify cannot see) is
  skipped and counted too. A folder this user cannot read is an error naming it (permissions), not
  an empty class.
- Pixels are decoded lazily in __getitem__. A file that passed the scan but fails to decode later
  (damage inside the data the probe cannot see) is replaced by the next readable image of the
  same class, with a warning, so a long training run does not die on one bad file.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from coarse2fine.config import UserError
from coarse2fine.data.datasets import ImageDataset, warn_skipped
from coarse2fine.data.preprocess import UnreadableImage, center_crop_arr, check_dimensions, load_image_file

log = logging.getLogger("coarse2fine.data")

SPLIT_DIRS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.05
_SPLIT_ALIASES = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _split_folders(root: Path) -> set[str]:
    """The visible sub-folders of ROOT when they are all split names (train/ val/ test/), else empty."""
    subdirs = {d.name for d in root.iterdir() if d.is_dir() and _visible(d.name)} if root.is_dir() else set()
    return subdirs if subdirs and subdirs <= set(SPLIT_DIRS) else set()


def is_plain_folder(root: str | Path) -> bool:
    """True when ROOT holds class folders directly (no train/ val/ test/ split folders)."""
    return not _split_folders(Path(root).expanduser())


def held_out_mask(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """bool [N]: the held-out images, `fraction` of each class (rounded, >= 1 for classes of >= 2
    images when fraction > 0), picked by a seeded permutation of the class's indices."""
    mask = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        mask[idx[rng.permutation(len(idx))[:k]]] = True
    return mask


def resolve_class_root(root: str | Path, split: str) -> Path:
    """The directory whose sub-folders are the classes, for `split` (see module docstring)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"image folder {root} is not a directory (expected ROOT/<class>/<images>)")
    if split not in _SPLIT_ALIASES:
        raise UserError(f"folder data sets have splits train, val, test; got split {split!r}")
    subdirs = _split_folders(root)
    if subdirs:
        for cand in _SPLIT_ALIASES[split]:
            if cand in subdirs:
                return root / cand
        raise UserError(f"{root} has split folders {', '.join(sorted(subdirs))} but none for split {split!r}")
    if split != "train":
        raise UserError(f"{root} is a plain class folder (no train/ val/ test/ sub-folders), so it "
                        f"only has split 'train'; got split {split!r}")
    return root


def _check_link(link: Path, inside: Path, class_root: Path) -> None:
    """A symlinked folder is followed unless it points at the class root, an ancestor of it, or an
    ancestor of where the link sits (`inside`): each of those makes the walk a cycle, and a class
    linked to the root would silently become a class of every image."""
    target = link.resolve()
    if class_root.resolve().is_relative_to(target) or inside.resolve().is_relative_to(target):
        raise UserError(f"{link} links to {target}, which contains {link.parent} (a cycle: the folder "
                        f"would include itself); remove or replace that link")


def _walk_files(directory: Path, class_root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Visible files under directory, recursively, following symlinked folders, in sorted order
    -> (files, skipped [(path, reason)]). Broken links and non-regular files are skipped; a file
    reached twice (through links) is kept once and the repeat counted as skipped."""
    if directory.is_symlink():
        _check_link(directory, directory.parent, class_root)
    out: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def unreadable(e: OSError) -> None:  # os.walk would skip the folder silently
        if isinstance(e, PermissionError):
            raise UserError(f"cannot read the folder {e.filename}: permission denied; give this user read access "
                            f"(e.g. chmod -R u+rX {e.filename}) or remove it")
        raise UserError(f"cannot read the folder {e.filename} ({e.strerror or e})")

    for dirpath, dirnames, filenames in os.walk(directory, onerror=unreadable, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for d in dirnames:
            if (here / d).is_symlink():
                _check_link(here / d, here, class_root)
        for f in sorted(x for x in filenames if _visible(x)):
            path = here / f
            if not path.is_file():
                skipped.append((path, "broken link or not a regular file"))
                continue
            real = path.resolve()
            if real in seen:
                skipped.append((path, f"the same file as {real}, reached twice through links"))
                continue
            seen.add(real)
            out.append(path)
    return out, skipped


JPEG_TAIL = 4096  # bytes searched for the end-of-image marker (files may carry padding after it)


def _has_jpeg_end(path: Path) -> bool:
    """Does a JPEG file hold its end-of-image marker (FF D9) near its end? A truncated one does not."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - JPEG_TAIL))
        return b"\xff\xd9" in f.read()


def probe_image(path: Path) -> str | None:
    """Cheap usability check without decoding pixels; returns None if usable, else a reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_dimensions(img.size)
                fmt = img.format
                img.verify()  # PNG: chunk CRCs over the whole file; other formats: structure
        if fmt == "JPEG" and not _has_jpeg_end(path):
            # verify() reads JPEG headers only: a cut-off file would pass here and fail at decode time
            return "truncated JPEG (no end-of-image marker)"
    except UnreadableImage as e:
        return str(e)
    except Image.DecompressionBombError:
        return "too large (decompression bomb)"
    except PermissionError:
        return "permission denied"
    except Image.UnidentifiedImageError:
        return "not an image file"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return f"corrupt image ({type(e).__name__}: {e})"
    return None


def scan_folder(class_root: Path, limit_per_class: int | None = None
                ) -> tuple[list[Path], np.ndarray, list[str], int]:
    """Probe every file under class_root/<class>/ -> (paths, labels int64 [N], classes, skipped).

    With limit_per_class, probing stops at the first that many usable files of each class.
    """
    class_dirs = sorted((d for d in class_root.iterdir() if d.is_dir() and _visible(d.name)),
                        key=lambda d: d.name)
    loose = [p for p in class_root.iterdir() if p.is_file() and _visible(p.name)]
    if not class_dirs:
        hint = f" (found {len(loose)} files directly inside; move them into {class_root}/<class>/)" if loose else ""
        raise UserError(f"image folder {class_root} has no class sub-folders{hint}; expected ROOT/<class>/<images>")
    if loose:
        log.warning("ignored %d files directly in %s: images must be inside a class sub-folder",
                    len(loose), class_root)
    seen: dict[Path, str] = {}
    for d in class_dirs:  # a class folder linked to another: the same files under two labels
        real = d.resolve()
        if real in seen:
            log.warning("class folders %s and %s are the same folder (%s links to it): its images are taken twice, "
                        "under two labels; remove the link or copy the images it should hold", seen[real], d.name,
                        d.name if d.is_symlink() else seen[real])
        seen.setdefault(real, d.name)
    walked = [(d.name, _walk_files(d, class_root)) for d in class_dirs]
    per_class = [(name, files) for name, (files, _) in walked]
    left_out = [s for _, (_, sk) in walked for s in sk]
    left_out += [(p, "broken link or not a regular file") for p in class_root.iterdir()
                 if _visible(p.name) and not p.is_dir() and not p.is_file()]
    total = sum(len(f) for _, f in per_class)
    paths: list[Path] = []
    labels: list[int] = []
    skipped, example, empty = len(left_out), (left_out[0] if left_out else None), []
    with tqdm(total=total, desc=f"scanning {class_root.name or class_root}", unit="file",
              disable=None if total > 2000 else True, leave=False) as bar:
        for label, (name, files) in enumerate(per_class):
            found = 0
            for path in files:
                bar.update(1)
                if limit_per_class is not None and found >= limit_per_class:
                    continue
                reason = probe_image(path)
                if reason is not None:
                    skipped += 1
                    example = example or (path, reason)
                    continue
                paths.append(path)
                labels.append(label)
                found += 1
            if found == 0:
                empty.append(name)
    warn_skipped(skipped, example)
    if not paths:
        raise UserError(f"image folder {class_root} has no usable images "
                        f"({total} files looked at, {skipped} unreadable)")
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise UserError(f"class folder(s) with no usable images in {class_root}: {shown}; "
                        f"add images or remove those folders")
    return paths, np.asarray(labels, dtype=np.int64), [name for name, _ in per_class], skipped


class FolderDataset(ImageDataset):
    """Images under ROOT/<class>/ decoded lazily; see the module docstring for the rules.

    Extra attributes: root (Path, the class root used), paths (list[Path], aligned with labels).
    """

    def __init__(self, root: str | Path, resolution: int, split: str = "train", flip: bool = False,
                 limit_per_class: int | None = None, val_fraction: float | None = None):
        plain = is_plain_folder(root)
        if val_fraction is not None and not plain:
            raise UserError(f"{root} has its own train/ val/ folders, so --val-fraction does not apply; drop it")
        if val_fraction is not None and not 0 <= val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        class_root = resolve_class_root(root, "train" if plain and split in _SPLIT_ALIASES else split)
        paths, labels, classes, skipped = scan_folder(class_root, limit_per_class)
        self.val_fraction = (DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction) if plain else None
        if plain:
            held = held_out_mask(labels, self.val_fraction)
            keep = held if split != "train" else ~held
            if not keep.any():
                fix = ("use a fraction > 0 (e.g. 0.05)" if self.val_fraction <= 0 else
                       "every class has a single image, and a class gives held-out images only from 2 images on: add "
                       "images, or use --split train")
                raise UserError(f"{root} is a plain class folder and --val-fraction {self.val_fraction} sets no image "
                                f"aside for split {split!r}; {fix}")
            if split != "train":
                missing = sorted(set(range(len(classes))) - set(labels[keep].tolist()))
                if missing:
                    log.warning("the %r split of %s has no image of %d class(es) (e.g. %r): a class gives held-out "
                                "images only from 2 images on; add images to those classes for a held-out split "
                                "that covers every class", split, root, len(missing), classes[missing[0]])
            paths = [p for p, k in zip(paths, keep) if k]
            labels = labels[keep]
        super().__init__(f"folder:{Path(root).expanduser().resolve()}", classes, labels, resolution, split,
                         flip, skipped)
        self.root = class_root
        self.paths = paths
        self._bad: set[int] = set()

    def _load(self, i: int) -> np.ndarray:
        img = load_image_file(self.paths[i], size=self.resolution)
        return np.asarray(center_crop_arr(img, self.resolution), dtype=np.uint8)

    def get_raw(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        if i not in self._bad:
            try:
                return self._load(i)
            except UnreadableImage as e:
                self._mark_bad(i, e)
        # Fallback (rare): the following images of the same class, wrapping around.
        same = self.indices_of_class(int(self.labels[i]))
        for j in np.roll(same, -int(np.searchsorted(same, i))):
            j = int(j)
            if j in self._bad:
                continue
            try:
                return self._load(j)
            except UnreadableImage as e:
                self._mark_bad(j, e)
        raise UserError(f"no image of class {self.classes[self.labels[i]]!r} in {self.root} can be decoded")

    def _mark_bad(self, j: int, err: UnreadableImage) -> None:
        self._bad.add(j)
        log.warning("image %s passed the scan but cannot be decoded (%s); using another image of "
                    "class %r in its place", self.paths[j], err, self.classes[self.labels[j]])
