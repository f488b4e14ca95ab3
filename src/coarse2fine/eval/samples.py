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
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from coarse2fine.config import UserError
from coarse2fine.eval import metrics as M
from coarse2fine.eval.classifier import load_classifier, predict_probs
from coarse2fine.eval.features import DEFAULT_FEATURE_RESOLUTION, EffNetLite0Features, extract_features
from coarse2fine.fileio import atomic_write_bytes, describe_os_error

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    # expanded: a value quoted where it was set (a .env file, a Dockerfile ENV) keeps its ~, made a ./~ folder
    return Path(os.environ.get("COARSE2FINE_CACHE") or Path.home() / ".cache" / "coarse2fine").expanduser()


def _cache_source(cache_dir: str | Path | None) -> str:
    """Where the cache folder came from, as the user spelled it: the flag, the variable or the default."""
    if cache_dir:
        return f"--cache-dir {cache_dir}"
    if os.environ.get("COARSE2FINE_CACHE"):
        return f"COARSE2FINE_CACHE={os.environ['COARSE2FINE_CACHE']}"
    return f"the cache folder {default_cache_dir()}"


def _write_cache(path: Path, data: bytes, what: str, cache_dir: str | Path | None,
                 log: Callable[[str], None]) -> bool:
    """Write a cache entry; a cache that cannot be written costs the next run time, not this run's scores,
    so a failure is a line in the log (naming where the folder came from), not an error."""
    try:
        atomic_write_bytes(path, data)
        return True
    except OSError as e:
        log(f"{what} not cached: {describe_os_error(e)} ({_cache_source(cache_dir)}; --no-cache skips the cache)")
        return False


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
                       log: Callable[[str], None] = print, val_fraction: float | None = None,
                       ds=None) -> dict:
    """Features of a data set split: {"features" float32 [M, D], "mu", "sigma", "count", "classes",
    "cache" (path or None), "cached" (bool)}. A cache entry is reused only when the split's labels
    (subset included) hash to the stored digest. ds: that split already built (check_inputs builds it;
    an image folder is probed file by file, so it is not built twice)."""
    from coarse2fine.data import build_dataset

    if ds is None:
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
        if _write_cache(path, buf.getvalue(), "reference features", cache_dir, log):
            out["cache"] = str(path)
            log(f"reference features: computed {count} and cached to {path}")
    return out


# ---- the evaluation ------------------------------------------------------------------------------

def _row(metric: str, value: float, n: int, m: int | None, std: float | None = None, note: str = "") -> dict:
    return {"metric": metric, "value": value, "std": std, "n": n, "m": m, "note": note}


def check_sample_count(n: int, classifier_dir=None, inception_weights=None, pr_k: int = 3,
                       is_splits: int = 10) -> None:
    """The fewest samples the scores asked for can be computed on."""
    # the Inception Score's splits bind only where an IS is computed (classifier or Inception weights)
    need = max(2, pr_k + 1, is_splits if classifier_dir is not None or inception_weights is not None else 0)
    if n < need:
        raise UserError(f"need at least {need} samples, got {n}")


def check_inputs(dataset_name: str, split: str, resolution: int, classifier_dir: str | Path | None = None, *,
                 root: str | None = None, val_fraction: float | None = None, ref_count: int | None = None,
                 inception_weights: str | Path | None = None, ref_batch: str | Path | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True):
    """The checks of an evaluation that need neither samples nor features: the reference split exists and
    holds `ref_count` images, the classifier loads and knows the split's classes, the Inception files and
    the cache folder are usable. Returns (load_classifier's (model, config) or None without a classifier,
    the reference split's data set).
    `eval --pipeline` runs it before it samples and evaluate_images before any feature: a mistyped flag
    costs a second, not the sampling and feature extraction it would otherwise come after."""
    from coarse2fine.data import build_dataset

    if (inception_weights is None) != (ref_batch is None):
        raise UserError("true FID/IS needs both --inception-weights (torch-fidelity .pth) and --ref-batch (.npz)")
    for flag, path in (("--inception-weights", inception_weights), ("--ref-batch", ref_batch)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} {path} not found; give the path of the file")
    if ref_batch is not None:
        from coarse2fine.eval.inception import check_ref_batch

        check_ref_batch(ref_batch)
    if use_cache:
        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{_cache_source(cache_dir)} is a file, not a folder; point it at a folder, "
                            "or pass --no-cache")
    ds = build_dataset(dataset_name, resolution, split=split, root=root, val_fraction=val_fraction)
    _subset(len(ds), ref_count)
    if classifier_dir is None:
        return None, ds
    clf, cfg = load_classifier(classifier_dir)
    classes = cfg["data"]["classes"]
    if len(classes) != len(ds.classes):
        raise UserError(f"classifier {classifier_dir} knows {len(classes)} classes but {dataset_name} has "
                        f"{len(ds.classes)}; train one on this data set")
    return (clf, cfg), ds


def check_sample_labels(labels: np.ndarray | None, num_classes: int, dataset_name: str) -> None:
    """The class ids the samples were asked for must be classes of the reference data set: ids past them are
    samples of another data set or model (was: a ValueError from class_accuracy after every feature)."""
    if labels is None or not len(labels):
        return
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= num_classes:
        raise UserError(f"the samples carry class ids {lo}..{hi}, but {dataset_name} has classes 0..{num_classes - 1}: "
                        "they were made for another data set; pass the --data (and --data-root) of the model "
                        "that made them")


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
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise UserError(f"images must be square uint8 [N, H, H, 3], got {images.dtype} {images.shape}")
    if num_samples is not None:
        if num_samples > len(images):
            raise UserError(f"--num-samples {num_samples} but only {len(images)} samples were given")
        images = images[:num_samples]
        labels = None if labels is None else np.asarray(labels)[:num_samples]
    n = len(images)
    check_sample_count(n, classifier_dir, inception_weights, pr_k, is_splits)
    resolution = images.shape[1]
    classifier, ref_ds = check_inputs(dataset_name, split, resolution, classifier_dir, root=root,
                                      val_fraction=val_fraction, ref_count=ref_count,
                                      inception_weights=inception_weights, ref_batch=ref_batch,
                                      cache_dir=cache_dir, use_cache=use_cache)
    check_sample_labels(labels, len(ref_ds.classes), dataset_name)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    notes: list[str] = []
    rows: list[dict] = []

    extractor = EffNetLite0Features(feature_resolution).to(dev)
    ref = reference_features(dataset_name, split, resolution, extractor, ref_count, root, cache_dir,
                             use_cache, batch_size, log, val_fraction, ds=ref_ds)
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
        clf, cfg = classifier
        classes = cfg["data"]["classes"]
        if cfg["data"]["name"] != dataset_name:
            notes.append(f"classifier was trained on {cfg['data']['name']!r}, evaluating on {dataset_name!r}")
        clf_info = {"dir": str(classifier_dir), "trained_on": cfg["data"]["name"],
                    "resolution": cfg["arch"]["resolution"], **{f"test_{k}": v for k, v in cfg["test"].items()
                                                                if k != "per_class"}}
        if "test_reconstructed" in cfg:  # trained with a tokenizer: its accuracy on reconstructed test images
            clf_info["test_reconstructed_accuracy"] = cfg["test_reconstructed"]["accuracy"]
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
            _write_cache(path, buf.getvalue(), "inception reference statistics", cache_dir, log)
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
