"""torchrun on CPU (gloo, 2 processes) against one process with the same global batch.

Equality contract (fp32, dropout ON): 2 ranks x 1 micro-batch == 1 rank x 2 accumulation micro-batches,
because each micro-batch's data and dropout seed depend on its slice of the global batch only. What
differs is the float summation order of the gradient average, hence atol 1e-5 on the parameters.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from coarse2fine.config import TrainConfig, train_recipe
from coarse2fine.stages import stage_config
from coarse2fine.training.gpt import global_batch_indices, train

K, GRID, NCLS = 64, 4, 3
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_store(path, n=64, seed=0):
    """A code store in the extract-codes format (codes.npy int16 [N, L], labels.npy, meta.json)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NCLS, n)
    codes = (labels[:, None] * 5 + np.arange(GRID * GRID)[None] + rng.integers(0, 4, (n, GRID * GRID))) % K
    path.mkdir(parents=True)
    np.save(path / "codes.npy", codes.astype(np.int16))
    np.save(path / "labels.npy", labels.astype(np.int64))
    meta = {"num_classes": NCLS, "classes": [f"c{i}" for i in range(NCLS)], "grid": GRID, "codebook_size": K,
            "tokenizer_fingerprint": "fp", "tokenizer_dir": "", "flip": False, "dataset": "synthetic",
            "split": "train", "count": n}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def torchrun_cmd(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "coarse2fine.cli", *map(str, args)]


def run_env():
    # one thread per process: two ranks share two cores; no CUDA even where present (gloo test)
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def train_flags(codes, out, steps, batch, **extra):
    flags = ["train", "--stage", "baseline", "--codes", codes, "--out", out, "--preset", "GPT-tiny",
             "--steps", steps, "--batch-size", batch, "--lr", "3e-3", "--dtype", "fp32", "--device", "cpu",
             "--log-every", 1, "--no-progress"]
    for k, v in extra.items():
        flags += [f"--{k.replace('_', '-')}"] + ([] if v is True else [v])
    return flags


def descendants(pid):
    """Pids of every process below `pid` (torchrun starts its workers in their own sessions, so
    killing its process group would leave them running)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, p in parent.items() if p == cur]
        out += kids
        todo += kids
    return out


def kill_tree(proc):
    """SIGKILL the launcher and all its workers at once, like a preempted job."""
    pids = [proc.pid] + descendants(proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tcfg(steps, batch, **kw):
    """What the CLI's train_flags resolve to: the GPT-tiny recipe, then the flags given."""
    base = {**train_recipe("GPT-tiny", steps), "steps": steps, "batch_size": batch, "lr": 3e-3, "dtype": "fp32",
            "log_every": 1}
    return TrainConfig(**{**base, **kw})


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_state_close(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=0, msg=f"{what}: {k}")


def test_rank_slices_partition_the_global_batch():
    """The distributed sampler: for every world size the ranks' slices are the global batch, once."""
    for world, accum in [(1, 1), (2, 1), (4, 2), (8, 1)]:
        gidx = global_batch_indices(step=13, n=200, batch=16, seed=3)
        per = 16 // world
        got = np.concatenate([gidx[r * per:(r + 1) * per] for r in range(world)])
        assert np.array_equal(got, gidx) and len(set(got)) == 16
    # epochs are permutations: one epoch visits every sequence once (drop-last aside)
    seen = np.concatenate([global_batch_indices(s, 64, 8, 0) for s in range(8)])
    assert sorted(seen) == list(range(64))


def test_ddp_run_killed_mid_epoch_resumes_at_other_world_size(tmp_path):
    codes = make_store(tmp_path / "codes")
    total, every, batch = 400, 3, 8  # 8 steps per epoch: checkpoints fall mid-epoch
    run2 = tmp_path / "ddp"
    proc = subprocess.Popen(torchrun_cmd(*train_flags(codes, run2, total, batch, ckpt_every=every)),
                            env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (run2 / "state.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    finally:
        kill_tree(proc)  # the kill: torchrun and both ranks, mid-run
        out = proc.communicate()[0].decode()
    assert (run2 / "state.pt").exists(), out[-3000:]
    killed = torch.load(run2 / "state.pt", weights_only=True)
    s = killed["step"]
    assert 0 < s < total and s % every == 0

    # 1) the 2-process state equals a 1-process run with the same global batch
    mcfg = stage_config("GPT-tiny", "baseline", K, 0, NCLS, GRID)
    ref = tmp_path / "ref"
    train("baseline", mcfg, tcfg(total, batch, grad_accum=2, ckpt_every=every), codes, ref, progress=False,
          stop_at=s)
    ref_state = torch.load(ref / "state.pt", weights_only=True)
    assert_state_close(killed["model"], ref_state["model"], "2 ranks vs 1 rank")

    # 2) resume the killed 2-process run in ONE process: same steps, same loss curve
    end = s + 6
    res = train("baseline", mcfg, tcfg(total, batch, grad_accum=2, ckpt_every=every), codes, run2, resume=True,
                progress=False, stop_at=end)
    train("baseline", mcfg, tcfg(total, batch, grad_accum=2, ckpt_every=every), codes, ref, resume=True,
          progress=False, stop_at=end)
    assert res["steps_this_run"] == end - s and res["step"] == end
    a, b = losses(run2), losses(ref)
    assert sorted(a) == list(range(1, end + 1)) == sorted(b)  # lines past the checkpoint were dropped
    np.testing.assert_allclose([a[i] for i in sorted(a)], [b[i] for i in sorted(b)], atol=1e-5, rtol=0)
    assert_state_close(torch.load(run2 / "state.pt", weights_only=True)["model"],
                       torch.load(ref / "state.pt", weights_only=True)["model"], "resumed vs uninterrupted")


@pytest.mark.slow  # ~15 s idle, a minute on a busy 2-core box
def test_fsdp_two_processes_equal_one_and_resume_unsharded(tmp_path):
    codes = make_store(tmp_path / "codes")
    steps, batch = 3, 8
    run2 = tmp_path / "fsdp"
    # held-out evaluation mid-run: every rank joins the sharded forward, shards are restored after it
    r = subprocess.run(torchrun_cmd(*train_flags(codes, run2, steps, batch, fsdp=True, ema_decay=0.9,
                                                 grad_clip=0.5, heldout=codes, eval_every=2)),
                       env=run_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    mcfg = stage_config("GPT-tiny", "baseline", K, 0, NCLS, GRID)
    ref = tmp_path / "ref"
    train("baseline", mcfg, tcfg(steps, batch, grad_accum=2, ema_decay=0.9, grad_clip=0.5, eval_every=2), codes, ref,
          heldout_dir=codes, progress=False)
    ev = [[json.loads(x)["heldout"]["nll"] for x in (run / "metrics.jsonl").read_text().splitlines() if "heldout" in x]
          for run in (run2, ref)]
    assert len(ev[0]) == 1 and ev[0] == pytest.approx(ev[1], abs=1e-5)
    a = torch.load(run2 / "state.pt", weights_only=True)
    b = torch.load(ref / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    assert_state_close(a["model"], b["model"], "FSDP model")
    assert_state_close(a["ema"], b["ema"], "FSDP EMA")
    # the sharded run's checkpoint (full tensors, optimizer keyed by name) resumes without FSDP
    more = tcfg(steps + 2, batch, grad_accum=2, ema_decay=0.9, grad_clip=0.5)
    train("baseline", mcfg, more, codes, run2, resume=True, progress=False)
    train("baseline", mcfg, more, codes, ref, resume=True, progress=False)
    assert_state_close(torch.load(run2 / "state.pt", weights_only=True)["model"],
                       torch.load(ref / "state.pt", weights_only=True)["model"], "FSDP resumed unsharded")
    gl = [json.loads(x)["grad_norm"] for x in (run2 / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert all(isinstance(g, float) for g in gl)


@pytest.mark.slow  # ~15 s idle
def test_tokenizer_two_processes_equal_one(tmp_path):
    """train-tokenizer under torchrun (fp32): same global batch -> same model. VQ training amplifies float
    noise (Adam turns the ~0 gradients of biases that a GroupNorm cancels into +-lr steps, and code
    assignments can flip), so the check is on what the tokenizer computes: reconstructions of a fixed
    batch agree within 5e-3 while 2 steps move them by > 0.5. Two single-process runs that differ
    only in their thread count differ by as much as 1 vs 2 processes."""
    from coarse2fine.config import vq_config
    from coarse2fine.data import build_dataset
    from coarse2fine.tokenizer.vq import VQModel
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.training.tokenizer import train_tokenizer

    flags = ["--vq-preset", "VQ-tiny", "--steps", 2, "--batch-size", 4, "--lr", 0.5, "--no-reseed-dead", "--ema-decay", 0,
             "--dtype", "fp32", "--limit-per-class", 2, "--device", "cpu", "--no-progress"]
    r = subprocess.run(torchrun_cmd("train-tokenizer", "--out", tmp_path / "two", *flags), env=run_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ds = build_dataset("default", 32, limit_per_class=2)
    train_tokenizer("VQ-tiny", tmp_path / "one", ds, steps=2, batch_size=4, lr=0.5, reseed_dead=False, ema_decay=0.0,
                    dtype="fp32", progress=False, device="cpu")
    x = torch.stack([torch.from_numpy(ds.get_raw(i)) for i in range(8)]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.manual_seed(0)
    init = VQModel(vq_config("VQ-tiny")).eval()
    with torch.no_grad():
        r0, r1, r2 = init(x)[0], load_vq(tmp_path / "one")(x)[0], load_vq(tmp_path / "two")(x)[0]
    assert (r1 - r0).abs().max() > 0.5
    torch.testing.assert_close(r2, r1, atol=5e-3, rtol=0)


def test_fsdp_shards_under_one_torchrun_process_and_is_refused_without_torchrun(tmp_path, capsys):
    from coarse2fine.cli import main

    codes = make_store(tmp_path / "codes")
    r = subprocess.run(torchrun_cmd(*train_flags(codes, tmp_path / "one", 2, 8, fsdp=True), nproc=1), env=run_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["parallel"] == "fsdp"
    assert main([str(a) for a in train_flags(codes, tmp_path / "plain", 2, 8, fsdp=True)]) == 2
    err = capsys.readouterr().err
    assert "--fsdp" in err and "torchrun" in err and len(err.strip().splitlines()) == 1
