"""Training safety, both trainers: a diverging run stops and keeps its last good checkpoint, metrics.jsonl
is valid JSON that survives a kill, resume refuses changed settings (a larger --steps extends), one
process per run directory, and the IAR cluster-loss option trains end to end."""
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from coarse2fine.cli import main
from coarse2fine.config import TrainConfig, UserError
from coarse2fine.stages import stage_config
from coarse2fine.tokenizer.clustering import cluster_codebook
from coarse2fine.training.gpt import train
from coarse2fine.training.tokenizer import train_tokenizer
from fakes import CFG, GRID, TRAIN, Blobs, C, K, NCLS, make_store

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    store = make_store(root / "train")
    cw = torch.nn.functional.normalize(torch.randn(K, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    cluster_codebook(cw, C, "kmeans", 0, "fp").save(root / "cm.safetensors")
    return store, root / "cm.safetensors"


def _cfg(**kw):
    base = dict(steps=4, batch_size=8, lr=1e-2, warmup_steps=1, schedule="cosine", dtype="fp32", log_every=1,
                ckpt_every=2)
    return TrainConfig(**{**base, **kw})


def _mcfg(stage="baseline"):
    return stage_config("GPT-tiny", stage, K, C, NCLS, GRID)


def strict_lines(path):
    """Every line of a metrics.jsonl as strict JSON (bare NaN/Infinity rejected)."""
    def bad(c):
        raise ValueError(f"non-JSON constant {c}")
    return [json.loads(line, parse_constant=bad) for line in path.read_text().splitlines()]


def _bytes(run):
    return {f: (run / f).read_bytes() for f in ("state.pt", "model.safetensors")}


# ---- divergence ------------------------------------------------------------------------------------

def test_stage_divergence_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    store, _ = data
    cfg = _cfg(steps=30, lr=1e6, ckpt_every=1, warmup_steps=0)
    with pytest.raises(UserError) as e:
        train("baseline", _mcfg(), cfg, store, tmp_path / "bad", progress=False)
    msg = str(e.value)
    m = re.match(r"step (\d+): the (loss|gradient norm) is (nan|inf).*last good checkpoint \(step (\d+)\) is kept; "
                 r"lower --lr", msg)
    assert m and "\n" not in msg, msg
    bad, kept = int(m.group(1)), int(m.group(4))
    assert kept == bad - 1 and torch.load(tmp_path / "bad" / "state.pt", weights_only=True)["step"] == kept
    # the checkpoint on disk is exactly what a run stopped at the last good step writes
    train("baseline", _mcfg(), cfg, store, tmp_path / "ref", progress=False, stop_at=kept)
    assert _bytes(tmp_path / "bad") == _bytes(tmp_path / "ref")
    recs = strict_lines(tmp_path / "bad" / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, bad)) and all(math.isfinite(r["loss"]) for r in recs)
    # the CLI says it in one line and exits non-zero
    assert main(["train", "--stage", "baseline", "--codes", str(store), "--out", str(tmp_path / "cli"),
                 "--preset", "GPT-tiny", "--steps", "30", "--batch-size", "8", "--lr", "1e6", "--ckpt-every", "1",
                 "--dtype", "fp32", "--no-progress"]) == 2


def test_tokenizer_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train_cfg = {**TRAIN, "lr": 1e6, "warmup_steps": 0, "ckpt_every": 1}
    with pytest.raises(UserError, match=r"^step (\d+): the loss is nan.*last good checkpoint \(step (\d+)\)") as e:
        train_tokenizer(CFG, tmp_path / "bad", Blobs(), train_cfg, steps=12, progress=False)
    bad = int(re.match(r"step (\d+)", str(e.value)).group(1))
    train_tokenizer(CFG, tmp_path / "ref", Blobs(), train_cfg, steps=12, stop_at_step=bad - 1, progress=False)
    assert _bytes(tmp_path / "bad") == _bytes(tmp_path / "ref")
    assert [r["step"] for r in strict_lines(tmp_path / "bad" / "metrics.jsonl")] == list(range(1, bad))


# ---- resume ----------------------------------------------------------------------------------------

def test_stage_resume_refuses_changed_settings_and_extends_steps(data, tmp_path):
    store, _ = data
    run = tmp_path / "run"
    train("baseline", _mcfg(), _cfg(), store, run, progress=False, stop_at=2)
    for change, flag in (({"lr": 0.5}, "--lr: the run has 0.01, this command asks 0.5"),
                         ({"batch_size": 16}, "--batch-size: the run has 8"), ({"seed": 3}, "--seed: the run has 0")):
        with pytest.raises(UserError, match=re.escape(flag)):
            train("baseline", _mcfg(), _cfg(**change), store, run, resume=True, progress=False)
    with pytest.raises(UserError, match="--steps 2: the run is already at step 2"):
        train("baseline", _mcfg(), _cfg(steps=2), store, run, resume=True, progress=False)
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01  # nothing rewritten
    s = train("baseline", _mcfg(), _cfg(), store, run, resume=True, progress=False)  # unchanged settings
    assert s["step"] == 4 and s["steps_this_run"] == 2
    s = train("baseline", _mcfg(), _cfg(steps=6), store, run, resume=True, progress=False)
    meta = json.loads((run / "config.json").read_text())
    assert s["step"] == 6 and meta["train"]["steps"] == 6
    assert meta["history"] == [{"at_step": 4, "steps_from": 4, "steps_to": 6}]
    assert [r["step"] for r in strict_lines(run / "metrics.jsonl")] == list(range(1, 7))


def test_cli_resume_takes_the_runs_settings(data, tmp_path, capsys):
    store, cm = data
    run = tmp_path / "run"
    flags = ["--out", str(run), "--no-progress"]
    assert main(["train", "--stage", "fine", "--codes", str(store), "--coarse-map", str(cm), "--preset", "GPT-tiny",
                 "--steps", "2", "--batch-size", "8", "--lr", "0.02", "--seed", "1", "--dtype", "fp32", *flags]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--lr", "0.01", *flags]) == 2
    assert "--lr: the run has 0.02, this command asks 0.01" in capsys.readouterr().err
    assert main(["train", "--resume", "--head", "full", *flags]) == 2
    cw = torch.nn.functional.normalize(torch.randn(K, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    cluster_codebook(cw, C, "random", 1, "fp").save(tmp_path / "other.safetensors")  # same sizes, other codes
    assert main(["train", "--resume", "--coarse-map", str(tmp_path / "other.safetensors"), *flags]) == 2
    assert "--coarse-map: not the map the run was trained with" in capsys.readouterr().err
    assert main(["train", "--resume", "--steps", "3", *flags]) == 0  # stage, codes, map, preset, lr from the run
    meta = json.loads((run / "config.json").read_text())
    assert meta["train"]["lr"] == 0.02 and meta["train"]["seed"] == 1 and meta["restricted"] is True
    assert meta["history"] == [{"at_step": 2, "steps_from": 2, "steps_to": 3}]
    assert "extending" in capsys.readouterr().out
    assert main(["train", "--resume", *flags]) == 0  # a finished run: nothing to do, still fine


def test_tokenizer_resume_unchanged_preset_and_steps(tmp_path, capsys):
    tok = tmp_path / "tok"
    common = ["--out", str(tok), "--data", "default", "--limit-per-class", "2", "--batch-size", "8", "--no-progress"]
    assert main(["train-tokenizer", "--vq-preset", "VQ-tiny", "--steps", "2", *common]) == 0
    # an unchanged --preset resumes (config.json stores ch_mult as a list, the preset as a tuple)
    assert main(["train-tokenizer", "--resume", "--vq-preset", "VQ-tiny", "--steps", "3", *common]) == 0
    cfg = json.loads((tok / "config.json").read_text())
    assert cfg["train"]["steps"] == 3 and cfg["history"] == [{"at_step": 2, "steps_from": 2, "steps_to": 3}]
    capsys.readouterr()
    assert main(["train-tokenizer", "--resume", "--steps", "1", *common]) == 2
    assert "already at step 3" in capsys.readouterr().err
    assert main(["train-tokenizer", "--resume", "--seed", "4", *common]) == 2
    assert "--seed: the run has 0, this command asks 4" in capsys.readouterr().err
    assert [r["step"] for r in strict_lines(tok / "metrics.jsonl")] == [1, 2, 3]  # every step, once


# ---- kill, partial log line, lock -------------------------------------------------------------------

KILL_AFTER_CHECKPOINT = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from fakes import C, GRID, K, NCLS
from coarse2fine.config import TrainConfig
from coarse2fine.stages import stage_config
from coarse2fine.training import gpt, loop
torch.set_num_threads(1)
save = loop._save
def save_then_die(task, out, step, info):
    save(task, out, step, info)
    if step == 4:  # die like a SIGKILL, no finally blocks, no buffered writes flushed
        os._exit(9)
loop._save = save_then_die
cfg = TrainConfig(**{cfg!r})
gpt.train("baseline", stage_config("GPT-tiny", "baseline", K, C, NCLS, GRID), cfg, {store!r}, {out!r}, progress=False)
"""


def test_kill_after_checkpoint_keeps_log_and_partial_line_does_not_block_resume(data, tmp_path):
    store, _ = data
    cfg = dict(steps=6, batch_size=8, lr=1e-2, dtype="fp32", log_every=100, ckpt_every=2)
    script = KILL_AFTER_CHECKPOINT.format(tests=os.path.dirname(os.path.dirname(__file__)), cfg=cfg, store=str(store),
                                          out=str(tmp_path / "run"))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 9, r.stderr[-2000:]
    log = tmp_path / "run" / "metrics.jsonl"
    assert [x["step"] for x in strict_lines(log)] == [1, 2, 3, 4]  # every line the checkpoint covers
    with log.open("a") as f:
        f.write('{"step": 5, "loss": 4.1')  # a write cut by the kill
    train("baseline", _mcfg(), TrainConfig(**cfg), store, tmp_path / "run", resume=True, progress=False)
    train("baseline", _mcfg(), TrainConfig(**cfg), store, tmp_path / "full", progress=False)
    assert strict_lines(log) == strict_lines(tmp_path / "full" / "metrics.jsonl")


def test_a_second_process_on_the_same_run_is_refused(data, tmp_path):
    store, _ = data
    run = tmp_path / "run"
    run.mkdir()
    # another process holding the run's lock as a trainer does: flock on <run>/.lock, its pid inside
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, os, sys; f = open({str(run / '.lock')!r}, 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}\\n'); f.flush(); "
                               "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by another training process \(pid {holder.pid}\).*--out"):
            train("baseline", _mcfg(), _cfg(steps=1), store, run, progress=False)
        with pytest.raises(UserError, match=rf"pid {holder.pid}"):
            train_tokenizer(CFG, run, Blobs(), TRAIN, steps=1, progress=False)
    finally:
        holder.communicate("")
    assert not (run / "metrics.jsonl").exists()
    train("baseline", _mcfg(), _cfg(steps=1), store, run, progress=False)  # released with its holder


# ---- IAR cluster loss -------------------------------------------------------------------------------

def test_cluster_loss_weight_zero_is_the_plain_baseline_and_trains(data, tmp_path, capsys):
    store, cm = data
    plain = train("baseline", _mcfg(), _cfg(), store, tmp_path / "plain", progress=False)
    zero = train("baseline", _mcfg(), _cfg(cluster_loss_weight=0.0), store, tmp_path / "zero", coarse_map=cm,
                 progress=False)
    assert strict_lines(tmp_path / "plain" / "metrics.jsonl") == strict_lines(tmp_path / "zero" / "metrics.jsonl")
    assert plain["loss"] == zero["loss"]
    out = tmp_path / "iar"
    flags = ["train", "--stage", "baseline", "--codes", str(store), "--out", str(out), "--preset", "GPT-tiny",
             "--steps", "4", "--batch-size", "8", "--lr", "0.01", "--warmup-steps", "1", "--schedule", "cosine",
             "--ckpt-every", "2", "--dtype", "fp32", "--no-progress"]
    assert main([*flags, "--cluster-loss-weight", "0.5"]) == 2  # needs the clusters
    assert "needs --coarse-map" in capsys.readouterr().err
    assert main([*flags, "--cluster-loss-weight", "0.5", "--coarse-map", str(cm)]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["train"]["cluster_loss_weight"] == 0.5 and meta["coarse_map"]["fingerprint"] == "fp"
    assert (out / "coarse_map.safetensors").exists()
    iar = [r["loss"] for r in strict_lines(out / "metrics.jsonl")]
    base = [r["loss"] for r in strict_lines(tmp_path / "plain" / "metrics.jsonl")]
    assert len(iar) == 4 and all(a > b for a, b in zip(iar, base))  # the extra (positive) term is in the loss
    with pytest.raises(UserError, match="baseline stage only"):
        train("coarse", _mcfg("coarse"), _cfg(cluster_loss_weight=0.5), store, tmp_path / "c", coarse_map=cm,
              progress=False)
    assert np.isfinite(iar).all()
