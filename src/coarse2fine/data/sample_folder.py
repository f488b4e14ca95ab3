"""The samples folder: its file names, its two writers, its reader and its ownership check, in one place.

    <folder>/000000_c3.png ...   one lossless PNG per sample: index, then the class asked for
    <folder>/grid.png            a preview grid (`sample` only)
    <folder>/samples.npz         arr_0 uint8 [N, H, W, 3] (the ADM evaluator's layout), labels int64 [N],
                                 png_sha256 uint8 [N, 32]: the SHA-256 of each PNG file beside it

`sample` writes a whole folder at once (write_folder: staged, moved in when every file is written).
`sample-fid` writes OUT/samples/*.png one by one (write_png, whole files only, resumable) and streams them
into OUT/samples.npz (write_adm_npz), because 50,000 images do not fit in memory. `eval` reads either
(read_samples) and refuses a folder whose npz does not hold exactly its PNGs: every PNG is checked, by
its file hash when the npz records them, else pixel for pixel. `owned_files` says which files of a folder
an earlier `sample` wrote, so that they may be replaced, and refuses a folder holding anything else.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coarse2fine.config import UserError
from coarse2fine.data.preprocess import to_uint8

NPZ, GRID = "samples.npz", "grid.png"
LABEL_IN_NAME = re.compile(r"_c(\d+)\.png$", re.IGNORECASE)
SAMPLE_NAME = re.compile(r"^\d+(_c\d+)?\.png$", re.IGNORECASE)  # 000123.png / 000123_c7.png


def png_name(i: int, label: int) -> str:
    """The file name of sample i, asked for as class `label`."""
    return f"{i:06d}_c{label}.png"


@torch.no_grad()
def decode_images(vq, codes: torch.Tensor, size: int | None = None, batch_size: int = 64) -> torch.Tensor:
    """codes [B, N] -> uint8 images [B, H, W, 3] on the CPU, decoded `batch_size` at a time. With `size`,
    the decoder's float output ([-1, 1]) is first resized bicubically to size x size, as LlamaGen's
    --image-size-eval does (its 384 px models are scored at 256)."""
    parts = []
    for i in range(0, len(codes), batch_size):
        x = vq.decode_codes(codes[i:i + batch_size])  # [b, 3, H, W]
        if size is not None and size != x.shape[-1]:
            x = F.interpolate(x.float(), size=(size, size), mode="bicubic")
        parts.append(to_uint8(x))
    return torch.cat(parts).permute(0, 2, 3, 1).cpu()  # [B, 3, H, W] -> [B, H, W, 3]


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _npz_bytes(images: np.ndarray, labels: np.ndarray, digests: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, arr_0=images, labels=labels, png_sha256=digests)
    return buf.getvalue()


# ---- the whole-folder writer (`sample`) -----------------------------------------------------------

def write_folder(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, out: str | Path,
                 nrow: int = 8, replace: list[Path] = ()) -> None:
    """PNGs named png_name(i, label), grid.png and samples.npz, from uint8 images [N, H, W, 3].

    Written whole or not at all: everything goes to a staging folder inside `out` first; only when
    every file is written are the files of `replace` (an earlier output, owned_files) removed and the
    new ones moved in, samples.npz last. A failure (a full disk: the OSError names `out`) leaves the
    earlier output as it was; a kill leaves a staging folder that the next write_folder removes."""
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.fileio import remove_stale_temp_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out, "sample")
    stage = Path(tempfile.mkdtemp(dir=out, prefix=f".sample.{os.getpid()}.", suffix=".tmp"))
    try:
        arr = np.asarray(images)
        labs = np.asarray(labels, dtype=np.int64)
        names = [png_name(i, lab) for i, lab in enumerate(labs.tolist())]
        try:
            digests = []
            for img, name in zip(arr, names):
                data = _png_bytes(img)
                (stage / name).write_bytes(data)
                digests.append(np.frombuffer(hashlib.sha256(data).digest(), np.uint8))
            save_grid(arr, stage / GRID, nrow=nrow)
            (stage / NPZ).write_bytes(_npz_bytes(arr, labs, np.stack(digests) if digests else
                                                 np.zeros((0, 32), np.uint8)))
        except OSError as e:  # PIL and numpy do not name the file; the user's path is `out`, not our staging
            if e.filename is None or str(stage) in str(e.filename):
                raise OSError(e.errno, e.strerror or str(e), str(out)) from e
            raise
        for f in sorted(replace, key=lambda f: f.name != NPZ):  # the npz first: it marks a whole output
            f.unlink(missing_ok=True)
        for name in names + [GRID, NPZ]:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def owned_files(out: str | Path) -> list[Path]:
    """The files of an earlier `sample` output in `out` (numbered PNGs, grid.png, samples.npz), which a new
    one replaces. Any other file is refused: it is not ours to delete, and leaving it would make the folder
    a mixture that read_samples cannot tell apart. Removes the staging folder of a killed write_folder."""
    from coarse2fine.fileio import LOCK_FILE, remove_stale_temp_files

    out = Path(out)
    if not out.is_dir():
        return []
    remove_stale_temp_files(out, "sample")
    ours, foreign = [], []
    for f in sorted(out.iterdir()):
        if f.name == LOCK_FILE:
            continue
        mine = f.is_file() and (f.name in (GRID, NPZ) or SAMPLE_NAME.match(f.name))
        (ours if mine else foreign).append(f)
    if foreign:
        raise UserError(f"--out {out} holds {len(foreign)} file(s) that `sample` did not write (e.g. "
                        f"{foreign[0].name}); give a new or empty directory")
    return ours


# ---- the streaming writer (`sample-fid`) ----------------------------------------------------------

def _temp_name(path: Path) -> Path:
    """The temp name of `path` while it is written: pid-named, so fileio.remove_stale_temp_files
    can tell a killed writer's leftovers from a live one's."""
    return path.with_name(f".{path.name}.{os.getpid()}.w.tmp")


def write_png(path: str | Path, img: np.ndarray) -> None:
    """One sample, whole file or nothing: a temporary name in the same folder, then a rename. A failed
    write (a full disk) removes its temp file and raises an OSError naming `path`."""
    path = Path(path)
    data = _png_bytes(img)
    tmp = _temp_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def write_adm_npz(png_paths: list[Path], labels: np.ndarray, path: str | Path) -> tuple[int, int, int]:
    """Stream PNGs into an ADM-evaluator .npz (arr_0 uint8 [N, H, W, 3], labels int64 [N], png_sha256
    [N, 32]) without holding all images in memory (50k x 256^2 x 3 bytes is 9.8 GB). Returns (N, H, W)."""
    from PIL import Image

    with Image.open(png_paths[0]) as im:
        h, w = np.asarray(im.convert("RGB")).shape[:2]
    n = len(png_paths)
    path = Path(path)
    tmp = _temp_name(path)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n, h, w, 3)}
    digests = np.zeros((n, 32), np.uint8)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                for i, p in enumerate(png_paths):
                    data = Path(p).read_bytes()
                    digests[i] = np.frombuffer(hashlib.sha256(data).digest(), np.uint8)
                    with Image.open(io.BytesIO(data)) as im:
                        if im.mode != "RGB":
                            raise UserError(f"{p} is a {im.mode} image, expected RGB; delete it and rerun to resample it")
                        arr = np.asarray(im)
                    if arr.shape != (h, w, 3):
                        raise UserError(f"{p} is {arr.shape[1]}x{arr.shape[0]}, the others {w}x{h}; delete it and rerun")
                    f.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
            with zf.open("labels.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
            with zf.open("png_sha256.npy", "w") as f:
                np.lib.format.write_array(f, digests)
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, a bad PNG, an interrupt: no half npz left behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    return n, h, w


# ---- the reader (`eval`) --------------------------------------------------------------------------

def read_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Generated samples -> (uint8 [N, H, W, 3], int64 labels [N] or None, a note on the labels).

    .npz: `arr_0` images (NHWC uint8, or NHW gray) and labels from `labels` (coarse2fine) or `arr_1`
    (ADM / guided-diffusion). Folder: *.png sorted by name (only the numbered ones, 000123.png /
    000123_c7.png, when there are any, so a grid.png beside them is skipped); 000123_c7.png carries
    label 7 -- labels are used only when every file has one. A folder holding samples.npz (`sample`;
    `sample-fid` keeps its PNGs in samples/ beside it) is read from that file after every numbered PNG
    is checked against it (check_npz_holds_pngs): a mixture of two runs is refused, never scored."""
    p = Path(path)
    if p.is_dir() and (p / NPZ).is_file():
        images, labels, digests, note = _read_npz(p / NPZ)
        pngs = sorted(f for f in p.iterdir() if SAMPLE_NAME.match(f.name))
        if not pngs and (p / "samples").is_dir():  # sample-fid: OUT/samples/*.png beside OUT/samples.npz
            pngs = sorted(f for f in (p / "samples").iterdir() if SAMPLE_NAME.match(f.name))
        if pngs and len(pngs) != len(images):
            raise UserError(f"{p} mixes samples: {len(pngs)} numbered PNGs but samples.npz holds {len(images)} "
                            f"images; pass {p / NPZ} itself, or resample into an empty --out")
        check_npz_holds_pngs(p, pngs, images, labels, digests)
        return images, labels, note + " (the folder's samples.npz)"
    if p.is_dir():
        return _read_pngs(p)
    if not p.is_file():
        raise UserError(f"samples {p} not found (give a folder of PNGs or an .npz with arr_0)")
    images, labels, _, note = _read_npz(p)
    return images, labels, note


def check_npz_holds_pngs(folder: Path, pngs: list[Path], images: np.ndarray, labels: np.ndarray | None,
                         digests: np.ndarray | None) -> None:
    """A folder's samples.npz must hold exactly its PNGs: every label in a file name equals the npz's
    label, and EVERY PNG is the npz's image: its file's SHA-256 equals the one the npz recorded when it
    was written, or (an npz without png_sha256: older versions, other tools) its pixels equal the npz's
    image. One PNG replaced, or an npz swapped in from another run of the same count, fails here."""
    if not pngs:
        return
    fix = f"pass {folder / NPZ} or the PNGs on their own, or resample into an empty --out"

    def refuse(why: str):
        raise UserError(f"{folder}/{NPZ} does not belong to the PNGs beside it ({why}); {fix}")

    if labels is not None:
        for f, lab in zip(pngs, labels):
            m = LABEL_IN_NAME.search(f.name)
            if m and int(m.group(1)) != int(lab):
                refuse(f"the labels differ, e.g. {f.name}")
    if digests is not None:
        for i, f in enumerate(pngs):
            if hashlib.sha256(f.read_bytes()).digest() != digests[i].tobytes():
                refuse(f"image {i} differs from {f.name}")
        return
    for i, f in enumerate(pngs):
        png = _png_pixels(f)
        if png.shape != images[i].shape or not np.array_equal(png, images[i]):
            refuse(f"image {i} differs from {f.name}")


def _png_pixels(f: Path) -> np.ndarray:
    """uint8 [H, W, 3] of one sample PNG; a damaged or cut-short file is one line naming it (PIL's "image file
    is truncated" named no file, in a folder of thousands)."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise UserError(f"cannot read the sample {f} ({e}): the file is damaged or was copied in part; sample it "
                        "again, or copy the folder again") from None


def _read_pngs(p: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".png")
    if not files:
        raise UserError(f"no .png files in {p}")
    numbered = [f for f in files if SAMPLE_NAME.match(f.name)]
    ignored = ""
    if numbered and len(numbered) < len(files):
        # a sample dir also holding grid.png & co: keep the numbered samples only
        other = next(f.name for f in files if f not in numbered)
        ignored = f"; ignored {len(files) - len(numbered)} other PNGs (e.g. {other})"
        files = numbered
    first: dict[int, str] = {}  # one file per sample number: two of one number are two runs' samples, mixed
    for f in numbered:
        n = int(re.match(r"\d+", f.name).group())
        if n in first:
            raise UserError(f"{p} holds two samples numbered {n} ({first[n]}, {f.name}): the samples of two runs "
                            "mixed in one folder; keep one run's PNGs, or sample again into an empty --out")
        first[n] = f.name
    imgs = [_png_pixels(f) for f in files]
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise UserError(f"PNG samples in {p} differ in size ({sorted(shapes)[:4]}); resize them first")
    images = np.stack(imgs)
    found = [LABEL_IN_NAME.search(f.name) for f in files]
    if all(found):
        return images, np.array([int(m.group(1)) for m in found], np.int64), "labels from file names" + ignored
    n_lab = sum(bool(m) for m in found)
    return images, None, f"labels missing ({n_lab}/{len(files)} file names carry _c<label>){ignored}"


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """arr_0 images, `labels` / `arr_1` labels and the png_sha256 digests (None when absent) of an .npz."""
    try:
        with np.load(p, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise UserError(f"{p} has no arr_0 (keys {z.files})")
            images = z["arr_0"]
            key = "labels" if "labels" in z.files else ("arr_1" if "arr_1" in z.files else None)
            labels = z[key] if key else None
            digests = z["png_sha256"] if "png_sha256" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, not an npz, a damaged member
        raise UserError(f"cannot read samples {p} ({type(e).__name__}: {e}); the file is damaged or not an .npz: "
                        "sample it again") from None
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"{p}: arr_0 must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if digests is not None and (digests.dtype != np.uint8 or digests.shape != (len(images), 32)):
        raise UserError(f"{p}: png_sha256 must be uint8 [N={len(images)}, 32], got {digests.dtype} {digests.shape}; "
                        "sample it again")
    if labels is None:
        return images, None, digests, "labels missing (no `labels` or `arr_1` in the npz)"
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{p}: {key} must be integer [N={len(images)}], got {labels.dtype} {labels.shape}")
    return images, labels.astype(np.int64), digests, f"labels from npz `{key}`"
