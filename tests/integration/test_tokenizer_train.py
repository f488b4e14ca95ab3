"""Tokenizer training, exact resume, reconstruction and code extraction, end to end (small sizes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from coarse2fine.checkpoint import load_weights
from coarse2fine.cli import main
from coarse2fine.config import UserError
from coarse2fine.data.codes import CodeStore, extract_codes
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint
from coarse2fine.checkpoint import load_vq
from coarse2fine.training.tokenizer import evaluate_reconstruction, train_tokenizer


from fakes import CFG, TRAIN, Blobs, Interrupted


def metrics(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    ds = Blobs()
    full = train_tokenizer(CFG, tmp_path / "full", ds, TRAIN, steps=7, progress=False)
    part = train_tokenizer(CFG, tmp_path / "part", ds, TRAIN, steps=7, stop_at_step=3, progress=False)
    assert [m["step"] for m in metrics(part)] == [1, 2, 3]
    with pytest.raises(UserError, match="--resume"):
        train_tokenizer(CFG, tmp_path / "part", ds, TRAIN, steps=7, progress=False)
    train_tokenizer(CFG, tmp_path / "part", ds, TRAIN, steps=7, resume=True, progress=False)
    a, b = metrics(full), metrics(part)
    assert len(a) == 7 and a == b  # identical losses, PSNR, usage, re-seed counts, step by step
    assert any(m["reseeded"] > 0 for m in a)  # the re-seeding path ran and stayed reproducible
    wa, wb = load_weights(full / "model.safetensors"), load_weights(part / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["kind"] == "vq" and cfg["vq"]["codebook_size"] == 64 and cfg["train"]["steps"] == 7
    assert cfg["data"]["name"] == "blobs"
    # the exported weights are the EMA ones and load_vq gives them back bit-exactly
    vq = load_vq(full)
    ema = torch.load(full / "state.pt", weights_only=True)["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in vq.state_dict().items())
    with pytest.raises(UserError, match="lr"):
        train_tokenizer(CFG, full, ds, {**TRAIN, "lr": 0.5}, steps=9, resume=True, progress=False)


def test_training_improves_reconstruction(tmp_path):
    torch.set_num_threads(1)
    ds = Blobs(n=64)
    run = train_tokenizer(CFG, tmp_path / "run", ds, {**TRAIN, "batch_size": 16}, steps=30, progress=False)
    m = metrics(run)
    assert m[-1]["rec"] < 0.5 * m[0]["rec"]
    res = evaluate_reconstruction(load_vq(run), ds, keep=5)
    assert res["n"] == 64 and res["psnr"] > 14 and res["originals"].shape == (5, 16, 16, 3)
    assert 0 < res["codes_used"] <= 64 and res["usage"] == res["codes_used"] / 64


def test_extract_codes_resume_matches_uninterrupted_and_decodes(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vq = VQModel(CFG).eval()
    full = extract_codes(vq, Blobs(), tmp_path / "full", batch_size=6, progress=False)
    with pytest.raises(Interrupted):
        extract_codes(vq, Blobs(fail_at=20), tmp_path / "part", batch_size=6, progress=False)
    with pytest.raises(UserError, match="incomplete"):
        CodeStore(tmp_path / "part")
    with pytest.raises(UserError, match="flip"):
        extract_codes(vq, Blobs(), tmp_path / "part", flip=False, progress=False)
    extract_codes(vq, Blobs(), tmp_path / "part", batch_size=6, progress=False)
    a, b = CodeStore(full), CodeStore(tmp_path / "part")
    assert a.codes.dtype == np.int16 and a.codes.shape == (80, 64)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.labels, b.labels)
    assert a.meta == b.meta and a.meta["tokenizer_fingerprint"] == codebook_fingerprint(vq)
    assert a.meta["count"] == 80 and a.meta["num_classes"] == 4 and a.meta["flip"] is True
    ds = Blobs()
    x = torch.from_numpy(ds.images[:3]).permute(0, 3, 1, 2).float() / 127.5 - 1
    codes, label = a[2 * 2 + 1]  # row 2i+1 = image i mirrored
    assert label == 2 and torch.equal(codes, vq.encode(x[2:3].flip(-1)).flatten())
    stored = torch.stack([a[2 * i][0] for i in range(3)])  # [3, L]
    torch.testing.assert_close(vq.decode_codes(stored), vq.decode_codes(vq.encode(x)))
    other = VQModel(CFG)
    with pytest.raises(UserError, match="tokenizer_fingerprint"):
        extract_codes(other, Blobs(), full, progress=False)


def test_cli_train_reconstruct_extract(tmp_path, capsys):
    torch.set_num_threads(1)
    tok = tmp_path / "tok"
    common = ["--data", "default", "--limit-per-class", "2"]
    assert main(["train-tokenizer", "--out", str(tok), "--vq-preset", "VQ-tiny", "--steps", "3", "--batch-size", "8",
                 "--ema-decay", "0", "--no-progress", *common]) == 0
    assert json.loads((tok / "config.json").read_text())["train"]["ema_decay"] == 0
    png = tmp_path / "recon.png"
    assert main(["reconstruct", "--tokenizer", str(tok), "--num-shown", "4", "--out", str(png), *common]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "over 20 test images" in out and "codebook usage" in out
    assert Image.open(png).size[0] > 8 * 32
    assert main(["extract-codes", "--tokenizer", str(tok), "--out", str(tmp_path / "codes"), "--no-progress",
                 *common]) == 0
    store = CodeStore(tmp_path / "codes")
    assert len(store) == 40 and store.meta["grid"] == 8 and store.meta["classes"][0] == "T-shirt/top"
    assert main(["train-tokenizer", "--out", str(tok), "--resume", "--lr", "0.5", *common]) == 2
    assert "differ" in capsys.readouterr().err


def test_tokenizer_run_planning_is_a_library_call(tiny_runs):
    """train-tokenizer's flags are resolved by training.plan.plan_tokenizer_run, which a Python user calls too."""
    from coarse2fine.config import UserError
    from coarse2fine.training.plan import plan_tokenizer_run

    fresh = plan_tokenizer_run(tiny_runs["tok"].parent / "new", preset="VQ-64-f8", arch={"codebook_size": 1024},
                               data={"name": "emoji64"}, given={"steps": 7, "lr": None})
    assert fresh.vq.codebook_size == 1024 and fresh.vq.image_size == 64 and fresh.recipe["recipe"] == "cpu64"
    assert "steps 7" in fresh.summary and fresh.data["name"] == "emoji64"
    with pytest.raises(UserError, match="--codebook-size 20000: choose 2 to 16384"):
        plan_tokenizer_run("x", arch={"codebook_size": 20000})
    resumed = plan_tokenizer_run(tiny_runs["tok"], resume=True)  # the run's own data and architecture
    assert resumed.data["name"] == "default" and resumed.data["limit_per_class"] == 2 and resumed.recipe is None
    with pytest.raises(UserError, match=r"--resume uses the run's data \(name='default'\); drop --data"):
        plan_tokenizer_run(tiny_runs["tok"], resume=True, data={"name": "emoji64"})
    with pytest.raises(UserError, match="differs from --vq-preset"):
        plan_tokenizer_run(tiny_runs["tok"], resume=True, arch={"codebook_size": 64})


def test_a_preset_name_brings_its_recipe_in_python_as_on_the_command_line(tmp_path):
    """train_tokenizer("VQ-64-f8", ...) trains with that preset's recipe ("cpu64": the perceptual and
    colour terms), as `train-tokenizer --vq-preset VQ-64-f8` does; keywords override single fields and a
    whole TokenizerTrainConfig is taken as given. (It used to train plain L2 at batch 32 from Python.)"""
    from coarse2fine.config import TokenizerTrainConfig, tokenizer_recipe

    torch.set_num_threads(1)
    ds = Blobs(n=8, resolution=64)
    cpu64 = tokenizer_recipe("VQ-64-f8")
    run = train_tokenizer("VQ-64-f8", tmp_path / "named", ds, steps=1, batch_size=4, progress=False)
    tc = json.loads((run / "config.json").read_text())["train"]
    assert tc["recipe"] == "cpu64" and tc["batch_size"] == 4  # the keyword wins over the recipe's 16
    for key in ("perceptual_weight", "perceptual_depth", "colour_weight", "disc_weight"):
        assert tc[key] == cpu64[key], key
    whole = TokenizerTrainConfig(steps=1, batch_size=4)
    run = train_tokenizer("VQ-64-f8", tmp_path / "whole", ds, whole, progress=False)
    tc = json.loads((run / "config.json").read_text())["train"]
    assert tc["recipe"] == "custom" and tc["perceptual_weight"] == 0.0 and tc["colour_weight"] == 0.0
