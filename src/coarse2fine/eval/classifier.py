"""A small CNN classifier trained on the data set itself.

It scores generated samples two ways: top-1 agreement with the class that was asked for, and an
Inception-Score-like exp(E KL(p(y|x) || p(y))) over the data set's own classes. Its held-out test
accuracy is stored with it, so a reader can tell how far its judgement can be trusted.

Run dir: `config.json` {"kind": "classifier", "arch": {...}, "data": {...}, "train": {...},
"test": {"accuracy", "balanced", "per_class", "count", "split"}} + `model.safetensors`.
"""
from __future__ import annotations

import math
import numbers
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coarse2fine.config import UserError
from coarse2fine.eval.features import resize_square, to_pixel_float
from coarse2fine.eval.metrics import class_accuracy, inception_score


BACKBONES = ("cnn", "lite0-probe")
# The training set is held in memory as float32; beyond this, ask for --limit-per-class.
MAX_TRAIN_BYTES = 4 << 30


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ClassifierNet(nn.Module):
    """[B, 3, R, R] in [-1, 1] -> logits [B, num_classes].

    A 3x3 conv-BN-ReLU stem (width w) at full resolution, then two stages of two 3x3 conv-BN-ReLU
    blocks (2w, 4w) at R/2 and R/4 (2x2 max-pool before each), global average pool, dropout, linear.
    The heavy convolutions run at R/2 and below, which keeps CPU training to about a minute.
    Any R >= 8 works (the global pool makes it size-agnostic).
    """

    def __init__(self, num_classes: int, resolution: int, width: int = 24, dropout: float = 0.0):
        super().__init__()
        self.num_classes, self.resolution, self.width, self.dropout = num_classes, resolution, width, dropout
        w = width
        self.features = nn.Sequential(
            *_block(3, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 4 * w), *_block(4 * w, 4 * w),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, num_classes))

    def arch(self) -> dict:
        return {"num_classes": self.num_classes, "resolution": self.resolution, "width": self.width,
                "dropout": self.dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def images_to_input(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 NHWC / float [-1, 1] NCHW images -> float [B, 3, resolution, resolution] in [-1, 1]."""
    return resize_square(to_pixel_float(images), resolution) / 127.5 - 1.0


def dataset_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """All images of an ImageDataset as uint8 [N, R, R, 3] and labels int64 [N]."""
    if len(ds) == 0:
        raise UserError(f"data set {getattr(ds, 'name', '?')!r} is empty")
    images = np.stack([ds.get_raw(i) for i in range(len(ds))])
    return images, np.asarray(ds.labels, dtype=np.int64)


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to `pad` px (reflect padding); x [B,3,R,R]."""
    b, _, r, _ = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad == 0:
        return x
    xp = F.pad(x, (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()  # one shift per batch: cheap
    return xp[:, :, dy:dy + r, dx:dx + r]


@torch.inference_mode()
def predict_probs(model: ClassifierNet, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities float64 [N, num_classes] for uint8 NHWC or [-1, 1] NCHW images."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = images_to_input(torch.as_tensor(images[start:start + batch_size]).to(device), model.resolution)
        out.append(model(x).double().softmax(-1).cpu().numpy())
    return np.concatenate(out)


def _load_splits(dataset: str, resolution: int, root: str | None, limit_per_class: int | None,
                 test_limit_per_class: int | None, log: Callable[[str], None], val_fraction: float | None = None):
    from coarse2fine.data import build_dataset

    train = build_dataset(dataset, resolution, split="train", root=root, limit_per_class=limit_per_class,
                          val_fraction=val_fraction)
    need = len(train) * 3 * resolution * resolution * 4  # float32 copy held in memory for training
    if need > MAX_TRAIN_BYTES:
        raise UserError(f"{len(train)} images at {resolution}px need {need / 2**30:.1f} GiB in memory; "
                        f"pass --limit-per-class to train on a subset")
    x_tr, y_tr = dataset_arrays(train)
    try:
        test = build_dataset(dataset, resolution, split="test", root=root, limit_per_class=test_limit_per_class,
                             val_fraction=val_fraction)
        x_te, y_te = dataset_arrays(test)
        split = "test"
    except UserError as e:
        # Folder data sets have no test split: hold out every 10th training image instead.
        log(f"no test split ({e}); holding out every 10th training image")
        hold = np.arange(len(y_tr)) % 10 == 0
        x_te, y_te, x_tr, y_tr = x_tr[hold], y_tr[hold], x_tr[~hold], y_tr[~hold]
        split = "train[::10]"
    return train, x_tr, y_tr, x_te, y_te, split


def round_trip(tokenizer_dir: str | Path, images: np.ndarray, resolution: int, batch_size: int = 64) -> np.ndarray:
    """uint8 [N, R, R, 3] images -> the same images encoded and decoded by a tokenizer, uint8 [N, R, R, 3]:
    what a generator that samples this tokenizer's codes can at best produce."""
    from coarse2fine.checkpoint import load_vq

    vq = load_vq(tokenizer_dir)
    down = vq.cfg.downsample
    if resolution % down:
        raise UserError(f"the tokenizer in {tokenizer_dir} downsamples by {down}; --image-size {resolution} is not "
                        f"a multiple of it (use the size the tokenizer was trained at)")
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(images[s:s + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            y = vq(x)[0].clamp(-1, 1)
            out.append(((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def check_tokenizer_for(tokenizer_dir: str | Path, dataset: str, resolution: int,
                        log: Callable[[str], None] = print) -> None:
    """A tokenizer whose reconstructions a classifier of `dataset` at `resolution` is to learn from: it must
    make images of that size (its samples are what the classifier will score), and one trained on another
    data set is said in a warning (its reconstructions are not what this data's samples look like)."""
    from coarse2fine.checkpoint import read_tokenizer_config

    cfg = read_tokenizer_config(tokenizer_dir)
    size = int(cfg["vq"].get("image_size") or 0)
    if size and size != resolution:
        raise UserError(f"the tokenizer in {tokenizer_dir} makes {size}-px images, the classifier is for "
                        f"{resolution} px; pass --image-size {size} (the size its samples have) or that data's "
                        "own tokenizer")
    trained_on = (cfg.get("data") or {}).get("name")
    same = trained_on == dataset or {trained_on, dataset} <= {"default", "fashion-mnist"}  # the subset of it
    if trained_on and not same and "folder" not in (trained_on, dataset):
        log(f"warning: the tokenizer in {tokenizer_dir} was trained on {trained_on!r}, the classifier is for "
            f"{dataset!r}: its reconstructions are not what samples of {dataset!r} look like")


def _setting_errors(*, epochs, batch_size, width, shift, lr, weight_decay, dropout) -> list[str]:
    """train_classifier's settings checked from Python as the CLI's flags check theirs (width=0 and shift=-2 ended in
    torch's RuntimeErrors, batch_size=2.5 in a slice's TypeError, lr=-1 in AdamW's ValueError after the data was
    read; dropout=1 trained a head that sees only zeros)."""
    counts = {"epochs": (epochs, 1), "batch_size": (batch_size, 1), "width": (width, 1), "shift": (shift, 0)}
    bad = [f"{k} must be an integer >= {least}, got {v!r}" for k, (v, least) in counts.items()
           if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < least]
    reals = {"lr": (lr, lambda x: x > 0, "a finite number > 0"),
             "weight_decay": (weight_decay, lambda x: x >= 0, "a finite number >= 0"),
             "dropout": (dropout, lambda x: 0 <= x < 1, "in [0, 1)")}
    return bad + [f"{k} must be {want}, got {v!r}" for k, (v, ok, want) in reals.items()
                  if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not ok(v)]


def train_classifier(dataset: str, resolution: int, out_dir: str | Path, epochs: int = 8,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 5e-4, width: int = 24,
                     seed: int = 0, root: str | None = None, limit_per_class: int | None = None,
                     test_limit_per_class: int | None = None, shift: int = 0, dropout: float = 0.0,
                     log: Callable[[str], None] = print, val_fraction: float | None = None,
                     backbone: str = "cnn", feature_resolution: int = 128,
                     tokenizer: str | Path | None = None) -> dict:
    """Train ClassifierNet on `dataset`'s train split, evaluate on its test split, save to out_dir.

    AdamW + one-cycle cosine schedule, random horizontal flips (`shift` > 0 adds random translation,
    `dropout` > 0 dropout before the head: both cost accuracy in short runs -- on the embedded default
    at 32 px, 6 epochs, width 24: 88.5% held-out without them, 86.5% with shift 2 + dropout 0.2).
    Defaults measured there: 8 epochs, 1 thread, 103 CPU-seconds, 88.8% held-out (6 epochs: 87.8%).
    backbone "lite0-probe": a linear probe on frozen EfficientNet-Lite0 features instead (eval/probe.py;
    epochs, batch size, lr, width, shift and dropout do not apply).
    tokenizer: a tokenizer run dir. The classifier then also trains on that tokenizer's reconstructions of
    the training images, and is scored on the held-out images both as they are and reconstructed
    ("test_reconstructed": the accuracy a perfect generator of this tokenizer's codes would get). Samples
    are decoded by the tokenizer; a classifier that has only seen sharp originals can fail on its output
    (emoji64's Lite0 probe: 0.789 on the test images, 0.457 on their reconstructions).
    Returns the saved config dict (held-out accuracy under "test").
    """
    if backbone not in BACKBONES:
        raise UserError(f"unknown classifier backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    bad = _setting_errors(epochs=epochs, batch_size=batch_size, width=width, shift=shift, lr=lr,
                          weight_decay=weight_decay, dropout=dropout)
    if bad:
        raise UserError("train_classifier " + "; ".join(bad))
    if backbone == "cnn" and resolution < 4:  # its two 2x2 max-pools leave no pixel: a pooling RuntimeError
        raise UserError(f"--image-size {resolution} is too small for the classifier CNN (two 2x2 max-pools: it needs "
                        "4 px or more); use --image-size 8 or more")
    from coarse2fine.checkpoint import check_run_out

    check_run_out(out_dir, "classifier")  # another run's weights are not this classifier's to replace
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if tokenizer is not None:  # before any data is read: a wrong tokenizer is one line, not minutes later
        check_tokenizer_for(tokenizer, dataset, resolution, log)
    train_ds, x_tr, y_tr, x_te, y_te, test_split = _load_splits(
        dataset, resolution, root, limit_per_class, test_limit_per_class, log, val_fraction)
    num_classes = train_ds.num_classes
    recon = None
    if tokenizer is not None:
        from coarse2fine.checkpoint import load_vq
        from coarse2fine.tokenizer.vq import codebook_fingerprint

        t0 = time.process_time()
        recon = {"fingerprint": codebook_fingerprint(load_vq(tokenizer)),
                 "train": round_trip(tokenizer, x_tr, resolution), "test": round_trip(tokenizer, x_te, resolution)}
        log(f"tokenizer reconstructions of {len(y_tr)} train and {len(y_te)} {test_split} images: "
            f"{time.process_time() - t0:.0f} CPU-s")
    if backbone == "lite0-probe":
        from coarse2fine.eval.probe import train_probe

        t0 = time.time()
        probe, fit = train_probe(x_tr, y_tr, num_classes, resolution, feature_resolution, seed, log,
                                 views=[recon["train"]] if recon else None)
        return _finish(probe, {"backbone": backbone, "seed": seed, **fit, "seconds": round(time.time() - t0, 1),
                               "threads": torch.get_num_threads(), **_recon_note(recon)},
                       dataset, resolution, root, limit_per_class, train_ds, len(y_tr), x_te, y_te, test_split,
                       out_dir, log, time.time() - t0, recon)
    if recon is not None:  # the reconstructions as more training images, each with its original's label
        x_tr, y_tr = np.concatenate([x_tr, recon["train"]]), np.concatenate([y_tr, y_tr])
    # channels_last: ~2x faster convolution backward on CPU (oneDNN) at these small widths
    model = ClassifierNet(num_classes, resolution, width=width, dropout=dropout).to(
        memory_format=torch.channels_last)
    xt = images_to_input(torch.from_numpy(x_tr), resolution)  # N, 3, R, R: whole set in memory
    yt = torch.from_numpy(y_tr)
    n = len(yt)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    log(f"train-classifier: {dataset} @{resolution}px, {n} train / {len(y_te)} {test_split} images, "
        f"{num_classes} classes, {sum(p.numel() for p in model.parameters()) / 1e3:.0f}k params, "
        f"{epochs} epochs x {steps_per_epoch} steps")
    t0, c0 = time.time(), time.process_time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, hits = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            x, y = _augment(xt[idx], gen, shift).contiguous(memory_format=torch.channels_last), yt[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            hits += int((logits.argmax(1) == y).sum())
        log(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / n:.4f}, train acc {hits / n:.4f}, "
            f"{time.time() - t0:.0f}s wall, {time.process_time() - c0:.0f} CPU-s")
    train_seconds = time.time() - t0
    return _finish(model, {"backbone": backbone, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                           "weight_decay": weight_decay, "seed": seed, "shift": shift,
                           "seconds": round(train_seconds, 1), "threads": torch.get_num_threads(),
                           **_recon_note(recon)},
                   dataset, resolution, root, limit_per_class, train_ds, n, x_te, y_te, test_split, out_dir, log,
                   train_seconds, recon)


def _recon_note(recon: dict | None) -> dict:
    # the tokenizer by fingerprint only: its path may be a temporary folder (the shipped demo assets)
    return {} if recon is None else {"reconstructions_of": {"fingerprint": recon["fingerprint"]}}


def _finish(model: nn.Module, train: dict, dataset: str, resolution: int, root: str | None,
            limit_per_class: int | None, train_ds, n_train: int, x_te: np.ndarray, y_te: np.ndarray, test_split: str,
            out_dir: str | Path, log: Callable[[str], None], train_seconds: float, recon: dict | None = None) -> dict:
    """Score a trained classifier on the held-out images (and their reconstructions) and save it."""
    from coarse2fine.checkpoint import save_run

    num_classes = train_ds.num_classes
    probs = predict_probs(model, x_te)
    acc = class_accuracy(probs, y_te, num_classes)
    # the ceiling for IS-clf of generated samples: the same score on real held-out images
    is_mean, _ = inception_score(probs, splits=10) if len(y_te) >= 10 else (None, None)
    config = {
        "kind": "classifier",
        "arch": model.arch(),
        "data": {"name": dataset, "resolution": resolution, "root": root, "classes": train_ds.classes,
                 "num_classes": num_classes, "train_count": int(n_train), "limit_per_class": limit_per_class},
        "train": train,
        "test": {"split": test_split, "count": int(len(y_te)), "accuracy": acc["accuracy"],
                 "balanced": acc["balanced"], "inception_score": is_mean,
                 "per_class": {train_ds.classes[c]: v for c, v in acc["per_class"].items()}},
    }
    if recon is not None:
        r = class_accuracy(predict_probs(model, recon["test"]), y_te, num_classes)
        config["test_reconstructed"] = {"split": test_split, "count": int(len(y_te)), "accuracy": r["accuracy"],
                                        "balanced": r["balanced"], "fingerprint": recon["fingerprint"],
                                        "per_class": {train_ds.classes[c]: v for c, v in r["per_class"].items()}}
    out = Path(out_dir)
    config = save_run(out, "classifier", config, model)
    log(f"held-out accuracy on {dataset}/{test_split} ({len(y_te)} images): {acc['accuracy']:.4f} "
        f"(balanced {acc['balanced']:.4f})"
        + (f"; on their reconstructions {config['test_reconstructed']['accuracy']:.4f}" if recon is not None else "")
        + f"; trained in {train_seconds:.0f}s; saved to {out}")
    return config


def load_classifier(run_dir: str | Path) -> tuple[ClassifierNet, dict]:
    """Load a `train-classifier` run dir -> (model in eval mode, config dict)."""
    from coarse2fine.checkpoint import load_run_weights, read_run_config

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.get("kind") != "classifier":
        raise UserError(f"{run_dir} holds a {config.get('kind')!r} run, not a classifier "
                        "(make one with `coarse2fine train-classifier`)")
    arch = dict(config["arch"])
    if arch.pop("type", "cnn") == "lite0-probe":
        from coarse2fine.eval.probe import FeatureProbe

        return load_run_weights(run_dir, FeatureProbe(**arch)).eval(), config
    model = load_run_weights(run_dir, ClassifierNet(**arch))
    return model.eval(), config
