"""ImageNet-scale code extraction with LlamaGen's ten-crop augmentation: sharded, resumable.

Per image and crop range r (LlamaGen extracts r = 1.1 and r = 1.05): ADM centre crop to int(S * r)
px, then TenCrop(S): top-left, top-right, bottom-left, bottom-right, centre, and the same five of the
mirrored image. V = 10 * len(crop_ranges) code sequences per image.

Output directory (one memory-mapped file per shard plus an index):
    plan.json                 settings + image count; written first, checked on every rerun
    files.json                image paths (relative to the class root) in sorted class / file order
    labels.npy                int64 [N_images]; class ids are the sorted class-folder names
    shards/00000.npy ...      int16/int32 [n_s, V, L] (np.lib.format, memory-mapped): images
                              [s * shard_size, s * shard_size + n_s) in files.json order
    shards/00000.partial.npy  a shard being written, with 00000.progress.json (images done)
    index.json + meta.json    written last; index.json present = extraction complete

Shards are a function of the image list only, not of the world size: rank r takes every world-th
shard of those still missing, continues a partial shard from its progress file, and a rerun with
any number of processes finishes the job. `ShardedCodeStore` reads the result with the CodeStore
interface; row k is (image k // V, variant k % V), so one pass over the rows sees every variant of
every image once.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coarse2fine import distributed
from coarse2fine.config import UserError
from coarse2fine.fileio import dump_json, load_json
from coarse2fine.precision import resolve_dtype
from coarse2fine.data.preprocess import UnreadableImage, center_crop_arr, load_image_file

log = logging.getLogger("coarse2fine.data")
LLAMAGEN_CROP_RANGES = (1.1, 1.05)
VARIANT_NAMES = ("top_left", "top_right", "bottom_left", "bottom_right", "center")


def ten_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [10, size, size, 3]: corners and centre (torchvision's five_crop
    order and rounding), then the same five crops of the horizontally mirrored image."""
    h, w = arr.shape[:2]
    if size > h or size > w:
        raise ValueError(f"crop {size} larger than the image {w}x{h}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
    out = []
    for img in (arr, arr[:, ::-1]):
        out += [img[y:y + size, x:x + size] for y, x in corners]
    return np.ascontiguousarray(np.stack(out))


def image_variants(path: str | Path, size: int, crop_ranges: tuple[float, ...]) -> np.ndarray:
    """uint8 [10 * len(crop_ranges), size, size, 3] for one image file (full decode, no JPEG draft,
    as LlamaGen's loader)."""
    img = load_image_file(path)
    return np.concatenate([ten_crop(np.asarray(center_crop_arr(img, int(size * r)), dtype=np.uint8), size)
                           for r in crop_ranges])


class _CropSet(torch.utils.data.Dataset):
    """Items k -> (uint8 [V, S, S, 3], k) for a slice of the image list. An image that passed the
    scan but cannot be decoded is replaced by the next decodable image of its class (warned)."""

    def __init__(self, root: Path, files: list[str], labels: np.ndarray, lo: int, hi: int, size: int,
                 crop_ranges: tuple[float, ...]):
        self.root, self.files, self.labels = root, files, labels
        self.lo, self.hi, self.size, self.ranges = lo, hi, size, crop_ranges

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, k: int):
        i = self.lo + k
        try:
            return image_variants(self.root / self.files[i], self.size, self.ranges), i
        except UnreadableImage as e:
            log.warning("cannot decode %s (%s); using the next decodable image of its class", self.files[i], e)
        same = np.flatnonzero(self.labels == self.labels[i])
        for j in np.roll(same, -int(np.searchsorted(same, i)))[1:]:
            try:
                return image_variants(self.root / self.files[j], self.size, self.ranges), i
            except UnreadableImage:
                continue
        raise UserError(f"no image of class {self.labels[i]} under {self.root} can be decoded")


def _plan(out: Path, tokenizer_dir: Path, vq, image_root: str | Path, split: str, image_size: int,
          crop_ranges: tuple[float, ...], shard_size: int, limit_per_class: int | None) -> dict[str, Any]:
    """Rank 0: scan the folder once and fix the image list, or check a rerun's settings."""
    from coarse2fine.data.folder import resolve_class_root, scan_folder
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    k = vq.cfg.codebook_size
    settings = {"tokenizer_fingerprint": codebook_fingerprint(vq), "image_size": image_size,
                "grid": image_size // vq.cfg.downsample, "codebook_size": k, "crop_ranges": list(crop_ranges),
                "variants": 10 * len(crop_ranges), "shard_size": shard_size, "split": split,
                "image_root": str(Path(image_root).expanduser().resolve()), "limit_per_class": limit_per_class,
                "dtype": "int16" if k <= 2 ** 15 else "int32"}
    if (out / "plan.json").exists():
        plan = load_json(out / "plan.json")
        diff = sorted(key for key, v in settings.items() if plan.get(key) != v)
        if diff:
            raise UserError(f"{out} holds an extraction with other settings ({', '.join(diff)} differ); rerun with "
                            "the same flags to resume it, or choose another --out")
        return plan
    class_root = resolve_class_root(image_root, split)
    paths, labels, classes, skipped = scan_folder(class_root, limit_per_class)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    np.save(out / "labels.npy", labels.astype(np.int64))
    dump_json({"class_root": str(class_root.resolve()), "classes": classes,
               "files": [str(p.relative_to(class_root)) for p in paths]}, out / "files.json")
    plan = {**settings, "images": len(paths), "num_classes": len(classes), "skipped": skipped,
            "tokenizer_dir": str(tokenizer_dir.resolve()),
            "shards": (len(paths) + shard_size - 1) // shard_size}
    dump_json(plan, out / "plan.json")  # last: its presence means the plan is complete
    return plan


PLAN_FILES = ("shards", "labels.npy", "files.json")  # written before plan.json: a scan that never finished


def check_tencrop_out(out: Path) -> None:
    """Before any work: `out` must be new, empty, an extraction to resume (plan.json), or what a scan left
    when it was killed before plan.json; a code store of extract-codes, a run or an export is not ours to
    write into (their meta.json and labels.npy were replaced, our shards put among their files)."""
    if not out.is_dir() or (out / "plan.json").exists():
        return
    other = sorted(f.name for f in out.iterdir() if not f.name.startswith(".") and f.name not in PLAN_FILES)
    if other:
        raise UserError(f"--out {out} holds other files and no ten-crop extraction (e.g. {other[0]}); give a new or "
                        "empty directory")


def extract_tencrop(tokenizer_dir: str | Path, image_root: str | Path, out_dir: str | Path, split: str = "train",
                    image_size: int | None = None, crop_ranges: tuple[float, ...] = LLAMAGEN_CROP_RANGES,
                    shard_size: int = 10_000, batch_size: int = 16, num_workers: int = 4,
                    dtype: str | torch.dtype = "fp32", limit_per_class: int | None = None, device: str | None = None,
                    progress: bool = True, stop_after_images: int | None = None) -> dict[str, Any]:
    """Encode every image of ROOT/<class>/ (or ROOT/<split>/<class>/) into V code sequences.

    batch_size: images per encoder batch (x V crops). dtype: the encoder's autocast ("auto" | "fp32" | "bf16",
    or a torch dtype; precision.resolve_dtype). stop_after_images: end this call early once
    this rank has encoded that many images (progress kept, as after a kill). Returns the plan (all
    ranks) plus "complete": whether index.json was written."""
    from coarse2fine.checkpoint import load_vq

    if not crop_ranges or any(r < 1.0 for r in crop_ranges):
        raise UserError(f"crop ranges must be >= 1.0 (1.0 = no margin), got {list(crop_ranges)}")
    if shard_size < 1 or batch_size < 1:
        raise UserError("--shard-size and --batch-size must be >= 1")
    info = distributed.setup(device)
    if info.is_main:
        check_tencrop_out(Path(out_dir))
    tok = Path(tokenizer_dir)
    vq = load_vq(tok).to(info.device)
    bf16 = resolve_dtype(dtype, info.device) == torch.bfloat16
    size = image_size or vq.cfg.image_size
    if size % vq.cfg.downsample:
        raise UserError(f"--image-size {size} is not a multiple of the tokenizer's downsampling {vq.cfg.downsample}")
    out = Path(out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _plan(out, tok, vq, image_root, split, size, tuple(crop_ranges), shard_size, limit_per_class)
    else:  # rank 0's first scan of a 1.28M-file folder can outlast a collective's timeout: poll instead
        _wait_for(lambda: (out / "plan.json").exists(), "rank 0 to scan the image folder")
    plan = load_json(out / "plan.json")
    files = load_json(out / "files.json")
    labels = np.load(out / "labels.npy")
    shard_dir = out / "shards"
    pending = [s for s in range(plan["shards"]) if not (shard_dir / f"{s:05d}.npy").exists()]
    distributed.barrier()  # all ranks agree on the pending list before any shard is finished
    budget = stop_after_images
    t0, encoded = time.time(), 0
    for s in pending[info.rank::info.world_size]:
        n = _extract_shard(vq, plan, files, labels, shard_dir, s, batch_size, num_workers, bf16, info.device,
                           progress and info.is_main, budget)
        encoded += n
        if budget is not None:
            budget -= n
            if budget <= 0:
                break
    def all_done() -> bool:
        return all((shard_dir / f"{s:05d}.npy").exists() for s in range(plan["shards"]))

    # Ranks may finish a whole shard apart (minutes at ImageNet scale, past a collective's timeout):
    # rank 0 polls for the others' shard files, then writes the index; the others just return.
    if info.is_main and budget is None:
        _wait_for(all_done, "the other ranks' shards")
    complete = all_done()
    if complete and info.is_main:
        _write_index(out, plan, files["classes"])
    return {**plan, "complete": complete, "encoded_this_run": encoded, "wall_s": time.time() - t0}


def _wait_for(ready, what: str, poll_s: float = 2.0) -> None:
    """Sleep until ready() is true. A failing rank ends the whole torchrun job, so this cannot hang
    on a crash; it only waits on slower ranks."""
    t0 = next_note = time.time()
    while not ready():
        if time.time() >= next_note + 300:
            next_note = time.time()
            log.warning("still waiting for %s (%.0f s)", what, next_note - t0)
        time.sleep(poll_s)


def _extract_shard(vq, plan, files, labels, shard_dir: Path, s: int, batch_size: int, num_workers: int,
                   bf16: bool, device: torch.device, progress: bool, budget: int | None) -> int:
    """Encode shard s (continuing its partial file); returns the images encoded in this call."""
    lo = s * plan["shard_size"]
    hi = min(plan["images"], lo + plan["shard_size"])
    v, length = plan["variants"], plan["grid"] ** 2
    part, prog = shard_dir / f"{s:05d}.partial.npy", shard_dir / f"{s:05d}.progress.json"
    done = json.loads(prog.read_text())["done"] if (part.exists() and prog.exists()) else 0
    mode = "r+" if done else "w+"
    mm = np.lib.format.open_memmap(part, mode=mode, dtype=np.dtype(plan["dtype"]), shape=(hi - lo, v, length))
    hi_run = hi if budget is None else min(hi, lo + done + budget)
    ds = _CropSet(Path(files["class_root"]), files["files"], labels, lo + done, hi_run, plan["image_size"],
                  tuple(plan["crop_ranges"]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    from tqdm.auto import tqdm

    bar = tqdm(total=hi - lo, initial=done, disable=not progress, desc=f"shard {s}", unit="img", dynamic_ncols=True)
    last_flush, start = time.time(), done
    for crops, idx in loader:  # crops uint8 [b, V, S, S, 3], idx [b] global image ids
        b = crops.shape[0]
        x = crops.to(device).flatten(0, 1).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # [b*V, 3, S, S]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            codes = vq.encode(x)  # [b*V, h, w]
        first = int(idx[0]) - lo
        mm[first:first + b] = codes.reshape(b, v, length).cpu().numpy()  # [b*V, h, w] -> [b, V, L]
        done = first + b
        bar.update(b)
        if time.time() - last_flush > 30:  # bounded loss after a kill: at most ~30 s of work
            _flush(mm, prog, done)
            last_flush = time.time()
    bar.close()
    _flush(mm, prog, done)
    del mm
    if done == hi - lo:
        os.replace(part, shard_dir / f"{s:05d}.npy")
        prog.unlink()
    return done - start


def _flush(mm: np.memmap, prog: Path, done: int) -> None:
    """Data first, then the counter: a kill between the two only repeats work, never skips it."""
    mm.flush()
    tmp = prog.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done}))
    os.replace(tmp, prog)


def _write_index(out: Path, plan: dict[str, Any], classes: list[str]) -> None:
    shards = []
    for s in range(plan["shards"]):
        arr = np.load(out / "shards" / f"{s:05d}.npy", mmap_mode="r")
        shards.append({"file": f"shards/{s:05d}.npy", "first": s * plan["shard_size"], "count": int(arr.shape[0])})
    if sum(sh["count"] for sh in shards) != plan["images"]:
        raise UserError(f"{out}: the shards hold {sum(sh['count'] for sh in shards)} images, the plan "
                        f"{plan['images']}; delete the shards folder and extract again")
    v = plan["variants"]
    meta = {"num_classes": plan["num_classes"], "classes": classes, "grid": plan["grid"],
            "codebook_size": plan["codebook_size"], "tokenizer_fingerprint": plan["tokenizer_fingerprint"],
            "tokenizer_dir": plan["tokenizer_dir"], "flip": True, "dataset": f"folder:{plan['image_root']}",
            "split": plan["split"], "count": plan["images"] * v, "images": plan["images"], "variants": v,
            "variant_names": [f"{n}{'_flip' if f else ''}@{r}" for r in plan["crop_ranges"]
                              for f in (0, 1) for n in VARIANT_NAMES],
            "crop_ranges": plan["crop_ranges"], "image_size": plan["image_size"], "augment": "tencrop"}
    dump_json(meta, out / "meta.json")
    dump_json({"format": "coarse2fine.ShardedCodes/1", "images": plan["images"], "variants": v,
               "length": plan["grid"] ** 2, "dtype": plan["dtype"], "shards": shards}, out / "index.json")


# ---- reading -----------------------------------------------------------------------------------

class _Rows:
    """Read-only view of all shards as one [N_images * V, L] array (row = image * V + variant)."""

    def __init__(self, shards: list[np.ndarray], firsts: np.ndarray, v: int, length: int, dtype: np.dtype):
        self.shards, self.firsts, self.v = shards, firsts, v
        self.shape = (int(firsts[-1]) * v, length)
        self.dtype = dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[np.array([idx])][0]
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row out of range for {len(self)} rows")
        rows = rows % len(self) if rows.size else rows
        img, var = np.divmod(rows, self.v)
        shard = np.searchsorted(self.firsts, img, side="right") - 1
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.shards[s][img[sel] - self.firsts[s], var[sel]]  # [n_sel, L]
        return out

    def __array__(self, dtype=None, copy=None):
        arr = self[np.arange(len(self))]
        return arr if dtype is None else arr.astype(dtype)


class _RowLabels:
    """labels of the rows: label of image row // V (no N*V copy in memory)."""

    def __init__(self, labels: np.ndarray, v: int):
        self.image_labels, self.v = labels, v
        self.shape = (len(labels) * v,)
        self.dtype = labels.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        return self.image_labels[rows // self.v]

    def __array__(self, dtype=None, copy=None):
        arr = np.repeat(self.image_labels, self.v)
        return arr if dtype is None else arr.astype(dtype)


class ShardedCodeStore:
    """A finished ten-crop extraction with the CodeStore interface: `.codes` [N*V, L] (a lazy view
    over the memory-mapped shards), `.labels` [N*V], `.meta`, `len()`, `store[i] -> (codes
    LongTensor [L], label int)`. Extra: `.variants` (V), `.images` (N)."""

    def __init__(self, root: str | Path):
        self.root = self.dir = Path(root)
        if not (self.root / "index.json").exists():
            if (self.root / "plan.json").exists():
                plan = load_json(self.root / "plan.json")
                done = len(list((self.root / "shards").glob("[0-9][0-9][0-9][0-9][0-9].npy")))
                raise UserError(f"{self.root}: extraction incomplete ({done} of {plan['shards']} shards); rerun the "
                                "same extract-codes-imagenet command to finish it")
            raise UserError(f"{self.root} is not a ten-crop code store (no index.json)")
        index = load_json(self.root / "index.json")
        self.meta = load_json(self.root / "meta.json")
        self.variants, self.images = int(index["variants"]), int(index["images"])
        shards = [np.load(self.root / sh["file"], mmap_mode="r") for sh in index["shards"]]
        firsts = np.array([sh["first"] for sh in index["shards"]] + [self.images], dtype=np.int64)
        self.codes = _Rows(shards, firsts, self.variants, int(index["length"]), np.dtype(index["dtype"]))
        self.labels = _RowLabels(np.load(self.root / "labels.npy"), self.variants)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.codes[int(i)].astype(np.int64)), int(self.labels[np.array([i])][0])
