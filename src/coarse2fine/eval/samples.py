"""Image-quality evaluation of generated samples against a data set split, fully offline.

    evaluate_images(images uint8 [N, H, W, 3], labels int [N] | None, "default", split="test",
                    classifier_dir="runs/clf") -> dict

Scores (every one reported with the sample count N and the reference count M):
- FD / KID / precision / recall (k=3) on EfficientNet-Lite0 features at a fixed resolution, named
  e.g. "FD-EffNetLite0@64" -- these are NOT FID and are not comparable with published FIDs;
- IS-clf and class accuracy from a classifier trained on the data set itself (`train-classifier`);
- true FID / IS (Inception-v3) only with a user-supplied weights file and reference batch.
Reference features are cached per (data set, root, split, resolution, extractor, count) under
$COARSE2FINE_CACHE or ~/.cache/coarse2fine, written atomically and checked against the split's labels.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from coarse2fine.config import UserError
from coarse2fine.eval import metrics as M
from coarse2fine.eval.classifier import dataset_arrays, load_classifier, predict_probs
from coarse2fine.eval.features import DEFAULT_FEATURE_RESOLUTION, EffNetLite0Features, extract_features
from coarse2fine.fileio import atomic_write_bytes

CACHE_VERSION = 1
LABEL_IN_NAME = re.compile(r"_c(\d+)\.png$", re.IGNORECASE)
SAMPLE_NAME = re.compile(r"^\d+(_c\d+)?\.png$", re.IGNORECASE)  # 000123.png / 000123_c7.png


def default_cache_dir() -> Path:
    return Path(os.environ.get("COARSE2FINE_CACHE") or Path.home() / ".cache" / "coarse2fine")


# ---- samples -------------------------------------------------------------------------------------

def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Read generated samples -> (uint8 [N, H, W, 3], int64 labels [N] or None, note on labels).

    .npz: `arr_0` images (NHWC uint8, or NHW gray) and labels from `labels` (coarse2fine sampler) or
    `arr_1` (ADM / guided-diffusion). Folder: *.png sorted by name (only the numbered ones, 000123.png /
    000123_c7.png, when there are any, so a grid.png beside them is skipped); 000123_c7.png carries
    label 7 -- labels are used only when every file has one. A folder holding samples.npz (what
    `coarse2fine sample` writes) is read from that file, and refused when its numbered PNGs are not
    the same count: the folder then mixes two runs and no score of it would mean anything.
    """
    p = Path(path)
    if p.is_dir() and (p / "samples.npz").is_file():
        images, labels, note = _load_npz(p / "samples.npz")
        pngs = sorted(f for f in p.iterdir() if SAMPLE_NAME.match(f.name))
        if not pngs and (p / "samples").is_dir():  # sample-fid: OUT/samples/*.png beside OUT/samples.npz
            pngs = sorted(f for f in (p / "samples").iterdir() if SAMPLE_NAME.match(f.name))
        if pngs and len(pngs) != len(images):
            raise UserError(f"{p} mixes samples: {len(pngs)} numbered PNGs but samples.npz holds {len(images)} "
                            f"images; pass {p / 'samples.npz'} itself, or resample into an empty --out")
        _check_npz_matches_pngs(p, pngs, images, labels)
        return images, labels, note + " (the folder's samples.npz)"
    if p.is_dir():
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
        from PIL import Image

        imgs = []
        for f in files:
            with Image.open(f) as im:
                imgs.append(np.asarray(im.convert("RGB")))
        shapes = {im.shape for im in imgs}
        if len(shapes) != 1:
            raise UserError(f"PNG samples in {p} differ in size ({sorted(shapes)[:4]}); resize them first")
        images = np.stack(imgs)
        found = [LABEL_IN_NAME.search(f.name) for f in files]
        if all(found):
            return images, np.array([int(m.group(1)) for m in found], np.int64), "labels from file names" + ignored
        n_lab = sum(bool(m) for m in found)
        return images, None, f"labels missing ({n_lab}/{len(files)} file names carry _c<label>){ignored}"
    if not p.is_file():
        raise UserError(f"samples {p} not found (give a folder of PNGs or an .npz with arr_0)")
    return _load_npz(p)


NPZ_PNG_CHECKS = 8  # PNGs compared pixel for pixel with the npz: spread over the set, first and last included


def _check_npz_matches_pngs(folder: Path, pngs: list[Path], images: np.ndarray, labels: np.ndarray | None) -> None:
    """A folder's samples.npz must hold its PNGs: every label in a file name must equal the npz's
    label, and NPZ_PNG_CHECKS PNGs (lossless) must equal their npz image exactly. An npz swapped in
    from another run of the same count fails here instead of being scored as this folder."""
    if not pngs:
        return
    fix = f"pass {folder / 'samples.npz'} or the PNGs on their own, or resample into an empty --out"
    if labels is not None:
        named = [LABEL_IN_NAME.search(f.name) for f in pngs]
        bad = next((f for f, m, lab in zip(pngs, named, labels) if m and int(m.group(1)) != int(lab)), None)
        if bad is not None:
            raise UserError(f"{folder}/samples.npz does not belong to the PNGs beside it (the labels differ, e.g. "
                            f"{bad.name}); {fix}")
    from PIL import Image

    for i in sorted(set(np.linspace(0, len(pngs) - 1, min(NPZ_PNG_CHECKS, len(pngs))).round().astype(int))):
        with Image.open(pngs[i]) as im:
            png = np.asarray(im.convert("RGB"))
        if png.shape != images[i].shape or not np.array_equal(png, images[i]):
            raise UserError(f"{folder}/samples.npz does not belong to the PNGs beside it (image {i} differs from "
                            f"{pngs[i].name}); {fix}")


def _load_npz(p: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """arr_0 images and `labels` / `arr_1` labels of an .npz (see load_samples)."""
    try:
        with np.load(p, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise UserError(f"{p} has no arr_0 (keys {z.files})")
            images = z["arr_0"]
            key = "labels" if "labels" in z.files else ("arr_1" if "arr_1" in z.files else None)
            labels = z[key] if key else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, not an npz, a damaged member
        raise UserError(f"cannot read samples {p} ({type(e).__name__}: {e}); the file is damaged or not an .npz: "
                        "sample it again") from None
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"{p}: arr_0 must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if labels is None:
        return images, None, "labels missing (no `labels` or `arr_1` in the npz)"
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{p}: {key} must be integer [N={len(images)}], got {labels.dtype} {labels.shape}")
    return images, labels.astype(np.int64), f"labels from npz `{key}`"


# ---- reference statistics (cached) ---------------------------------------------------------------

def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def _cache_file(cache_dir: Path, dataset: str, root: str | None, split: str, resolution: int,
                extractor: str, count: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-")
    if len(safe) > 40:  # "folder:/long/absolute/path" -> short readable prefix + digest
        safe = safe[:24] + "-" + hashlib.sha256(dataset.encode()).hexdigest()[:12]
    root_tag = "" if root is None else "_" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return cache_dir / f"ref_{safe}{root_tag}_{split}_{resolution}px_{extractor}_n{count}.npz"


def _subset(n: int, count: int | None, seed: int = 0) -> np.ndarray:
    """Indices of the reference subset: all, or a fixed seeded sample of `count` (ascending)."""
    if count is None or count == n:
        return np.arange(n)
    if count > n:
        raise UserError(f"--ref-count {count} exceeds the {n} images of the reference split")
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


def reference_features(dataset: str, split: str, resolution: int, extractor: EffNetLite0Features,
                       count: int | None = None, root: str | None = None, cache_dir: str | Path | None = None,
                       use_cache: bool = True, batch_size: int = 32,
                       log: Callable[[str], None] = print, val_fraction: float | None = None) -> dict:
    """Features of a data set split: {"features" float32 [M, D], "mu", "sigma", "count", "classes",
    "cache" (path or None), "cached" (bool)}. A cache entry is reused only when the split's labels
    (subset included) hash to the stored digest."""
    from coarse2fine.data import build_dataset

    ds = build_dataset(dataset, resolution, split=split, root=root, val_fraction=val_fraction)
    idx = _subset(len(ds), count)
    count = len(idx)
    digest = _labels_digest(ds.labels[idx])
    path = _cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), dataset, root, split,
                       resolution, extractor.name, count)
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") == CACHE_VERSION and meta.get("labels_digest") == digest:
                    log(f"reference features: cached {path}")
                    return {"features": z["features"], "mu": z["mu"], "sigma": z["sigma"], "count": count,
                            "classes": list(ds.classes), "cache": str(path), "cached": True}
                log(f"reference cache {path} is stale (data set changed); recomputing")
        except (OSError, ValueError, KeyError) as e:
            log(f"reference cache {path} unreadable ({e}); recomputing")
    images = np.stack([ds.get_raw(int(i)) for i in idx])
    feats = extract_features(extractor, images, batch_size=batch_size, desc=f"ref {dataset}/{split}")
    mu, sigma = M.feature_stats(feats)
    out = {"features": feats, "mu": mu, "sigma": sigma, "count": count, "classes": list(ds.classes),
           "cache": None, "cached": False}
    if use_cache:
        meta = {"version": CACHE_VERSION, "dataset": dataset, "root": root, "split": split,
                "resolution": resolution, "extractor": extractor.name, "count": count, "labels_digest": digest}
        buf = io.BytesIO()
        np.savez(buf, features=feats, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta)))
        atomic_write_bytes(path, buf.getvalue())
        out["cache"] = str(path)
        log(f"reference features: computed {count} and cached to {path}")
    return out


# ---- the evaluation ------------------------------------------------------------------------------

def _row(metric: str, value: float, n: int, m: int | None, std: float | None = None, note: str = "") -> dict:
    return {"metric": metric, "value": value, "std": std, "n": n, "m": m, "note": note}


def evaluate_images(images: np.ndarray, labels: np.ndarray | None, dataset_name: str, split: str = "test",
                    classifier_dir: str | Path | None = None, *, root: str | None = None,
                    val_fraction: float | None = None,
                    num_samples: int | None = None, ref_count: int | None = None,
                    feature_resolution: int = DEFAULT_FEATURE_RESOLUTION,
                    inception_weights: str | Path | None = None, ref_batch: str | Path | None = None,
                    cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 32,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3, is_splits: int = 10,
                    device: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Score generated images against `dataset_name`/`split` at the images' own resolution.

    images: uint8 [N, H, W, 3] (H == W); labels: int [N] (class asked for) or None.
    Returns {"num_samples", "reference", "rows": [{"metric", "value", "std", "n", "m", "note"}],
    "per_class_accuracy", "classifier", "notes"}; `rows` is what the CLI prints.
    """
    if (inception_weights is None) != (ref_batch is None):
        raise UserError("true FID/IS needs both --inception-weights (torch-fidelity .pth) and --ref-batch (.npz)")
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise UserError(f"images must be square uint8 [N, H, H, 3], got {images.dtype} {images.shape}")
    if num_samples is not None:
        if num_samples > len(images):
            raise UserError(f"--num-samples {num_samples} but only {len(images)} samples were given")
        images = images[:num_samples]
        labels = None if labels is None else np.asarray(labels)[:num_samples]
    n = len(images)
    # the Inception Score's splits bind only where an IS is computed (classifier or Inception weights)
    need = max(2, pr_k + 1, is_splits if classifier_dir is not None or inception_weights is not None else 0)
    if n < need:
        raise UserError(f"need at least {need} samples, got {n}")
    resolution = images.shape[1]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    notes: list[str] = []
    rows: list[dict] = []

    extractor = EffNetLite0Features(feature_resolution).to(dev)
    ref = reference_features(dataset_name, split, resolution, extractor, ref_count, root, cache_dir,
                             use_cache, batch_size, log, val_fraction)
    m = ref["count"]
    if m < pr_k + 1:  # precision/recall take each reference's k-th nearest neighbour among the others
        raise UserError(f"need at least {pr_k + 1} reference images, got {m} (--ref-count, or the split's size)")
    fake = extract_features(extractor, images, batch_size=batch_size, desc="samples")
    tag = extractor.name
    if max(n, m) <= fake.shape[1]:  # small sets: exact low-rank route from the features
        fd = M.frechet_distance_from_features(fake, ref["features"])
    else:
        fd = M.frechet_distance(*M.feature_stats(fake), ref["mu"], ref["sigma"])
    rows.append(_row(f"FD-{tag}", fd, n, m,
                     note="Frechet distance on EfficientNet-Lite0 features (not FID)"))
    kid, kid_std = M.kernel_distance(ref["features"], fake, subsets=kid_subsets, subset_size=kid_subset_size)
    rows.append(_row(f"KID-{tag}", kid, n, m, kid_std,
                     note=("whole sets (N = M <= subset size)" if min(kid_subset_size, n, m) == n == m
                           else f"{kid_subsets} subsets of {min(kid_subset_size, n, m)}")))
    prec, rec = M.precision_recall(ref["features"], fake, k=pr_k)
    rows.append(_row(f"Precision-{tag}", prec, n, m, note=f"k={pr_k}"))
    rows.append(_row(f"Recall-{tag}", rec, n, m, note=f"k={pr_k}"))

    if min(n, m) < 1000:
        notes.append(f"N={n}, M={m}: FD and precision/recall are strongly biased below ~1000 images per side; "
                     "compare runs only at equal N and M")
    per_class, clf_info = None, None
    if classifier_dir is None:
        notes.append("classifier scores skipped: no --classifier (make one with `coarse2fine train-classifier`)")
    else:
        clf, cfg = load_classifier(classifier_dir)
        classes = cfg["data"]["classes"]
        if len(classes) != len(ref["classes"]):
            raise UserError(f"classifier {classifier_dir} knows {len(classes)} classes but {dataset_name} has "
                            f"{len(ref['classes'])}; train one on this data set")
        if cfg["data"]["name"] != dataset_name:
            notes.append(f"classifier was trained on {cfg['data']['name']!r}, evaluating on {dataset_name!r}")
        clf_info = {"dir": str(classifier_dir), "trained_on": cfg["data"]["name"],
                    "resolution": cfg["arch"]["resolution"], **{f"test_{k}": v for k, v in cfg["test"].items()
                                                                if k != "per_class"}}
        probs = predict_probs(clf.to(dev), images)
        is_mean, is_std = M.inception_score(probs, splits=is_splits)
        real_is = cfg["test"].get("inception_score")
        is_note = f"{is_splits} splits"
        if real_is is not None:
            is_note += f"; real {cfg['test']['split']} data scores {real_is:.3f}"
        rows.append(_row("IS-clf", is_mean, n, None, is_std, note=is_note))
        if labels is None:
            notes.append("class accuracy skipped: samples carry no labels")
        else:
            acc = M.class_accuracy(probs, labels, len(classes))
            rows.append(_row("ClassAcc-clf", acc["accuracy"], n, None,
                             note=f"classifier's own held-out accuracy {cfg['test']['accuracy']:.4f}"))
            per_class = {classes[c]: {"accuracy": a, "count": acc["counts"][c]} for c, a in acc["per_class"].items()}
    if inception_weights is None:
        notes.append("true FID/IS skipped: give --inception-weights and --ref-batch to compute them")
    else:
        rows.extend(_inception_rows(images, inception_weights, ref_batch, dev, is_splits, cache_dir, use_cache, log))
    return {"num_samples": n, "resolution": resolution, "extractor": tag,
            "reference": {"dataset": dataset_name, "root": root, "split": split, "count": m,
                          "cache": ref["cache"]},
            "rows": rows, "per_class_accuracy": per_class, "classifier": clf_info, "notes": notes}


def _inception_rows(images: np.ndarray, weights: str | Path, ref_batch: str | Path, dev: torch.device,
                    is_splits: int, cache_dir, use_cache: bool, log) -> list[dict]:
    from coarse2fine.eval.inception import InceptionV3FID, inception_outputs, load_ref_batch

    model = InceptionV3FID(weights).to(dev)
    rb = Path(ref_batch).resolve()
    if not rb.is_file():
        raise UserError(f"reference batch {rb} not found")
    st = rb.stat()
    key = hashlib.sha256(f"{rb}|{st.st_size}|{st.st_mtime_ns}|{Path(weights).stat().st_size}".encode()).hexdigest()[:16]
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"inception_ref_{key}.npz"
    if use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            mu_r, sigma_r, m = z["mu"], z["sigma"], int(z["count"])
        log(f"inception reference statistics: cached {path}")
    else:
        ref_images = load_ref_batch(rb)
        feats_r, _ = inception_outputs(model, ref_images, desc="inception ref")
        mu_r, sigma_r = M.feature_stats(feats_r)
        m = len(ref_images)
        if use_cache:
            buf = io.BytesIO()
            np.savez(buf, mu=mu_r, sigma=sigma_r, count=np.array(m))
            atomic_write_bytes(path, buf.getvalue())
    feats, probs = inception_outputs(model, images, desc="inception samples")
    fid = M.frechet_distance(*M.feature_stats(feats), mu_r, sigma_r)
    is_mean, is_std = M.inception_score(probs, splits=is_splits)
    return [_row("FID (Inception-v3)", fid, len(images), m, note=f"vs {rb.name}"),
            _row("IS (Inception-v3)", is_mean, len(images), None, is_std, note=f"{is_splits} splits")]


def format_table(result: dict) -> str:
    """Human-readable table of `evaluate_images` output."""
    ref = result["reference"]
    lines = [f"samples: N={result['num_samples']} at {result['resolution']}px; reference: "
             f"{ref['dataset']}/{ref['split']} M={ref['count']} (features {result['extractor']})",
             f"{'metric':<28} {'value':>10} {'std':>9} {'N':>7} {'M':>7}  note"]
    for r in result["rows"]:
        std = "" if r["std"] is None else f"{r['std']:.4f}"
        m = "" if r["m"] is None else str(r["m"])
        lines.append(f"{r['metric']:<28} {r['value']:>10.4f} {std:>9} {r['n']:>7} {m:>7}  {r['note']}")
    if result.get("per_class_accuracy"):
        lines.append("per-class accuracy (class asked for): " + ", ".join(
            f"{c} {v['accuracy']:.2f}" for c, v in result["per_class_accuracy"].items()))
    lines.extend(f"note: {s}" for s in result["notes"])
    return "\n".join(lines)
