"""Pre-extracted VQ codes: a memory-mapped [N, L] array the transformer trains on.

<dir>/codes.npy   int16 (K <= 32767) or int32 [N, L], L = h*w in raster order. With flip, image i of
                  the data set gives rows 2i (as is) and 2i+1 (horizontally flipped).
<dir>/labels.npy  int64 [N]
<dir>/meta.json   written last; its presence means the extraction is complete. Records the tokenizer
                  by codebook fingerprint and by "tokenizer_path", relative to <dir> (a copied tree
                  of tokenizer, codes and runs keeps working).
<dir>/progress.json  {"args": ..., "done": rows written}: extraction resumes from here.

Resuming: rerunning with the same tokenizer/data/flip continues into the preallocated memmap; any
other setting is an error rather than a silently mixed array.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from coarse2fine.config import ConfigError, UserError
from coarse2fine.fileio import atomic_write_bytes, dump_json, load_json, lock_dir, remove_stale_temp_files
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint
from coarse2fine.checkpoint import load_vq, tokenizer_ref

log = logging.getLogger("coarse2fine.data")


def code_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.int16) if codebook_size <= 32767 else np.dtype(np.int32)


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def extract_codes(vq: VQModel | str | Path, dataset, out_dir: str | Path, flip: bool = True,
                  batch_size: int = 64, tokenizer_dir: str | Path | None = None,
                  data_info: dict | None = None, progress: bool = True) -> Path:
    """Encode every image of `dataset` (and its mirror image when flip) into `<out_dir>`; resumable.

    vq: a VQModel or a tokenizer run dir. Returns out_dir. Raises UserError when out_dir holds an
    extraction with other settings.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; give a directory path")
    if not isinstance(vq, VQModel):
        tokenizer_dir = tokenizer_dir or vq
        vq = load_vq(vq)
    vq.eval()
    if dataset.resolution != vq.cfg.image_size:
        raise UserError(f"data resolution {dataset.resolution} != tokenizer image_size {vq.cfg.image_size}")
    n_img, per = len(dataset), 2 if flip else 1
    grid = vq.cfg.grid
    args: dict[str, Any] = {
        "tokenizer_fingerprint": codebook_fingerprint(vq), "codebook_size": vq.cfg.codebook_size,
        "grid": grid, "flip": flip, "dataset": getattr(dataset, "name", "?"),
        "split": getattr(dataset, "split", "?"), "resolution": dataset.resolution, "count": n_img * per,
        "data": data_info or {},
    }
    check_extract_out(out)
    with lock_dir(out, "another extract-codes process"):  # two writers of one memmap would interleave rows
        remove_stale_temp_files(out)
        return _extract(vq, dataset, out, args, flip, per, batch_size, tokenizer_dir, progress)


def check_extract_out(out: Path) -> None:
    """Before any work: `out` must be new, empty, an extraction to resume (progress.json), or what an
    extraction left when it failed before its first progress.json (codes.npy / labels.npy only, e.g.
    on a full disk), which a rerun starts over. Anything else is not ours to overwrite."""
    if not out.is_dir() or (out / "progress.json").exists():
        return
    if (out / "meta.json").exists():
        raise UserError(f"{out} already holds extracted codes; use another --out or delete it")
    other = sorted(f.name for f in out.iterdir() if not f.name.startswith(".") and f.name not in FRESH_FILES)
    if other:
        raise UserError(f"--out {out} holds other files and no code extraction (e.g. {other[0]}); give a new or "
                        "empty directory")


FRESH_FILES = ("codes.npy", "labels.npy")  # written before progress.json: an extraction that never started


def _extract(vq, dataset, out: Path, args: dict[str, Any], flip: bool, per: int, batch_size: int,
             tokenizer_dir, progress: bool) -> Path:
    """extract_codes under the lock of `out`."""
    n_img, grid = len(dataset), args["grid"]
    progress_path = out / "progress.json"
    shape = (n_img * per, grid * grid)
    done, codes = 0, None
    if progress_path.exists():
        saved = load_json(progress_path)
        diff = sorted(k for k in set(args) | set(saved.get("args") or {}) if saved["args"].get(k) != args.get(k))
        if diff:
            raise UserError(f"{out} holds codes extracted with different settings ({diff}); "
                            "use another --out or delete that directory")
        done = int(saved["done"])
        codes = _open_rows(out / "codes.npy", shape)
        if codes is None and done:
            raise UserError(f"{out / 'codes.npy'} is damaged ({done} rows had been written); delete {out} and "
                            "extract again")
    if codes is None:  # a fresh start, or one that failed before its first row
        out.mkdir(parents=True, exist_ok=True)
        codes = _create_rows(out / "codes.npy", code_dtype(vq.cfg.codebook_size), shape)
        labels = np.repeat(np.asarray(dataset.labels, dtype=np.int64), per)  # row 2i, 2i+1 <- image i
        _save_npy_atomic(out / "labels.npy", labels)
        dump_json({"args": args, "done": 0}, progress_path)
    device = next(vq.parameters()).device
    tty = progress and sys.stderr.isatty()
    first = done // per  # rows are written per whole image, so this is exact
    bar = tqdm(total=n_img, initial=first, disable=not tty, desc="extract-codes", unit="img")
    for lo in range(first, n_img, batch_size):
        hi = min(n_img, lo + batch_size)
        raw = torch.from_numpy(np.stack([dataset.get_raw(i) for i in range(lo, hi)]))
        x = raw.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)  # [b,3,R,R] in [-1,1]
        if flip:
            # [2b, 3, R, R] ordered (img lo, mirrored lo, img lo+1, ...)
            x = torch.stack([x, x.flip(-1)], dim=1).reshape(-1, *x.shape[1:])
        c = vq.encode(x).reshape(x.shape[0], grid * grid)  # [b*per, h, w] -> [b*per, L]
        codes[lo * per:hi * per] = c.cpu().numpy().astype(codes.dtype)
        codes.flush()
        dump_json({"args": args, "done": hi * per}, progress_path)
        bar.update(hi - lo)
        if progress and not tty and (lo // batch_size) % 50 == 0:
            print(f"extract-codes: {hi}/{n_img} images", file=sys.stderr, flush=True)
    bar.close()
    del codes
    meta = store_meta(
        num_classes=getattr(dataset, "num_classes", int(np.max(dataset.labels)) + 1),
        classes=list(getattr(dataset, "classes", [])), grid=grid, codebook_size=vq.cfg.codebook_size,
        count=n_img * per, tokenizer_fingerprint=args["tokenizer_fingerprint"],
        # relative to the store, so a copied tree of runs and codes keeps finding its tokenizer
        tokenizer_path=tokenizer_ref(None, tokenizer_dir, out)["path"] if tokenizer_dir else None, flip=flip,
        dataset=args["dataset"], split=args["split"], rows_per_image=per, data=args["data"])
    dump_json(meta, out / "meta.json")
    return out


def store_meta(*, num_classes: int, classes: list[str], grid: int, codebook_size: int, count: int,
               tokenizer_fingerprint: str = "", tokenizer_path: str | None = None, flip: bool = False,
               dataset: str = "?", split: str = "?", rows_per_image: int = 1, data: dict | None = None) -> dict:
    """The meta.json record of a code store (the one definition of the format's fields)."""
    return {"num_classes": num_classes, "classes": classes, "grid": grid, "codebook_size": codebook_size,
            "tokenizer_fingerprint": tokenizer_fingerprint, "tokenizer_path": tokenizer_path, "flip": flip,
            "dataset": dataset, "split": split, "count": count, "rows_per_image": rows_per_image,
            "dtype": str(code_dtype(codebook_size)), "data": data or {}}


def write_code_store(out: str | Path, codes: np.ndarray, labels: np.ndarray, **meta) -> Path:
    """A code store from arrays held in memory: codes [count, grid^2], labels [count]; codes.npy and
    labels.npy written atomically, meta.json (store_meta(**meta)) last, as extract_codes does."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codes = np.asarray(codes).astype(code_dtype(meta["codebook_size"]))
    _save_npy_atomic(out / "codes.npy", codes)
    _save_npy_atomic(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    dump_json(store_meta(count=len(codes), **meta), out / "meta.json")
    return out


def _open_rows(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The codes memmap of an extraction to resume, or None when it is missing, damaged or of
    another shape (e.g. cut short by a full disk before its first row)."""
    try:
        arr = np.load(path, mmap_mode="r+", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return arr if arr.shape == shape else None


def _create_rows(path: Path, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    """A new codes memmap with its blocks reserved on disk now: a full disk is an error naming the
    file here, not a SIGBUS halfway through the extraction (writes to a sparse memmap)."""
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # file systems without it
                    raise
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    return arr


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    """np.load with one-line errors: a missing, truncated or foreign .npy names the file and the fix."""
    if not path.is_file():
        raise ConfigError(f"{path} is missing; re-extract the codes")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # numpy: short header/data, bad magic, pickled object
        raise ConfigError(f"{path} is damaged or not a .npy array ({e}); re-extract the codes") from None


class CodeStore(torch.utils.data.Dataset):
    """Read side of a code dir: .codes memmap [N, L], .labels int64 [N], .meta dict.
    store[i] -> (codes LongTensor [L], label int)."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        if d.is_file():  # codes.npy or meta.json of a store: the folder is meant, and it may well hold one
            raise UserError(f"{d} is a file, not a code store; pass the folder that holds it ({d.parent})")
        if not d.exists():
            raise UserError(f"code store {d} not found; pass the --out folder of `coarse2fine extract-codes`")
        if not (d / "meta.json").exists():
            if (d / "progress.json").exists():
                raise UserError(f"code extraction in {d} is incomplete; rerun the same "
                                "extract-codes command to finish it")
            raise ConfigError(f"{d} holds no extracted codes (no meta.json); run extract-codes first")
        self.dir = d
        self.meta = load_json(d / "meta.json")
        missing = [k for k in ("count", "grid", "codebook_size", "num_classes") if k not in self.meta]
        if missing:
            raise ConfigError(f"{d / 'meta.json'} lacks {', '.join(missing)}; re-extract the codes")
        self.codes = _load_array(d / "codes.npy", mmap=True)
        self.labels = _load_array(d / "labels.npy", mmap=False)
        n = self.meta["count"]
        if self.codes.shape != (n, self.meta["grid"] ** 2) or self.labels.shape != (n,):
            raise ConfigError(f"{d}: codes {self.codes.shape} / labels {self.labels.shape} do not match "
                              f"meta.json (count {n}, grid {self.meta['grid']}); re-extract the codes")
        for name, arr in (("codes.npy", self.codes), ("labels.npy", self.labels)):  # float ids were floored
            if not np.issubdtype(arr.dtype, np.integer):
                raise ConfigError(f"{d / name} holds {arr.dtype} values, not integer ids; re-extract the codes")
        c = self.meta["num_classes"]  # an id past the classes was an IndexError at the step that drew its row
        bad = self.labels[(self.labels < 0) | (self.labels >= c)]
        if bad.size:
            raise ConfigError(f"{d / 'labels.npy'} holds class id {int(bad[0])}, outside 0..{c - 1} (num_classes {c} "
                              "in meta.json); re-extract the codes")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.codes[i].astype(np.int64)), int(self.labels[i])

    def __repr__(self) -> str:
        return (f"CodeStore({str(self.dir)!r}, n={len(self)}, grid={self.meta['grid']}, "
                f"K={self.meta['codebook_size']}, flip={self.meta['flip']})")


def open_code_store(path: str | Path):
    """CodeStore for an extract-codes directory, ShardedCodeStore for an extract-codes-imagenet one."""
    p = Path(path)
    if (p / "index.json").exists() or (p / "plan.json").exists():
        from coarse2fine.data.tencrop import ShardedCodeStore

        return ShardedCodeStore(p)
    return CodeStore(p)


# ---- which code store a run trains on ------------------------------------------------------------------

# what makes two code stores the same training data (paths excluded: a store may be moved)
IDENTITY_KEYS = ("tokenizer_fingerprint", "codebook_size", "grid", "count", "num_classes", "classes", "dataset",
                 "split", "flip", "data", "labels_sha256")


def labels_digest(store) -> str:
    """SHA-256 of a store's labels (per image for a ten-crop store): cheap, and it tells two data sets
    (or two subsets of one) apart even when their counts agree."""
    labels = getattr(store.labels, "image_labels", store.labels)
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels), dtype=np.int64).tobytes()).hexdigest()


def codes_record(store, codes_dir: str | Path) -> dict[str, Any]:
    """What a run's config.json records under "codes": where the store is, its meta.json and the
    digest of its labels; `check_same_codes` compares two of them."""
    return {"dir": str(Path(codes_dir).resolve()), **store.meta, "labels_sha256": labels_digest(store)}


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: record[k] for k in IDENTITY_KEYS if k in record}
    if isinstance(out.get("data"), dict):
        out["data"] = {k: v for k, v in out["data"].items() if k != "root"}
    return out


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same_codes(old: dict[str, Any] | None, new: dict[str, Any], run_dir: str | Path) -> None:
    """`train --resume`: refuse a code store other than the one the run trained on (other data, other
    classes, another tokenizer, another count). Fields the run did not record (older runs) are not
    compared; the store's path is not compared (a moved store is the same store)."""
    if not old:
        return
    a, b = _identity(old), _identity(new)
    diff = [f"{k}: the run's {_shown(a[k])}, this store's {_shown(b.get(k))}" for k in a if a[k] != b.get(k)]
    if diff:
        raise UserError(f"--codes {new.get('dir')} is not the code store {run_dir} trains on ({'; '.join(diff[:3])}"
                        f"{'; ...' if len(diff) > 3 else ''}); resume with the run's store ({old.get('dir')}, "
                        "leave --codes out) or start a new --out")


def check_heldout(train_store, heldout_store, heldout_dir: str | Path):
    """`train --heldout`: the held-out codes must come from the run's tokenizer and have its classes,
    or the held-out NLL measures nothing. Returns heldout_store."""
    a, b = train_store.meta, heldout_store.meta
    for key, what in (("tokenizer_fingerprint", "tokenizer (codebook fingerprint)"), ("codebook_size", "codebook size"),
                      ("grid", "code grid")):
        if a.get(key) is not None and b.get(key) is not None and a[key] != b[key]:
            raise UserError(f"--heldout {heldout_dir} holds codes of another {what}: {b[key]}, the training codes "
                            f"have {a[key]}; extract the held-out split with the run's tokenizer")
    ca, cb = list(a.get("classes") or []), list(b.get("classes") or [])
    if a.get("num_classes") != b.get("num_classes") or (ca and cb and ca != cb):
        raise UserError(f"--heldout {heldout_dir} has {b.get('num_classes')} classes ({_shown(cb)}), the training codes "
                        f"{a.get('num_classes')} ({_shown(ca)}); extract the held-out split of the same data set")
    labels = getattr(heldout_store, "labels", None)
    n = b.get("num_classes")
    if labels is not None and isinstance(n, int):
        missing = sorted(set(range(n)) - set(np.unique(np.asarray(labels)).tolist()))
        if missing:
            name = cb[missing[0]] if len(cb) == n else missing[0]
            log.warning("--heldout %s has no codes of %d of its %d classes (e.g. %r): the held-out metrics leave "
                        "them out; extract a held-out split with images of every class", heldout_dir, len(missing),
                        n, name)
    return heldout_store
