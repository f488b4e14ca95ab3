"""Stage training end to end on a synthetic code store: resume is exact, the pipelines sample."""
import json

import numpy as np
import pytest
import torch

from coarse2fine.config import TrainConfig, UserError
from coarse2fine.stages import stage_config
from coarse2fine.tokenizer.clustering import cluster_codebook
from coarse2fine.checkpoint import load_run
from coarse2fine.training.gpt import train

from fakes import C, GRID, K, NCLS, make_store


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    store = make_store(root / "train")
    heldout = make_store(root / "test", n=16, seed=1)
    cw = torch.nn.functional.normalize(torch.randn(K, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    cmap = cluster_codebook(cw, C, "kmeans", 0, "fp")
    cmap.save(root / "coarse_map.safetensors")
    return root, store, heldout


def _cfg(steps, **kw):
    kw = {"lr": 1e-2, **kw}
    return TrainConfig(steps=steps, batch_size=8, warmup_steps=2, schedule="cosine", dtype="fp32",
                       log_every=1, ckpt_every=100, ema_decay=0.9, **kw)


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


@pytest.mark.parametrize("stage", ["coarse", "fine", "baseline"])
def test_resume_reproduces_losses(setup, tmp_path, stage):
    root, store, heldout = setup
    cm = root / "coarse_map.safetensors" if stage != "baseline" else None
    mcfg = stage_config("GPT-tiny", stage, K, C, NCLS, GRID)
    full = train(stage, mcfg, _cfg(8), store, tmp_path / "full", coarse_map=cm, heldout_dir=heldout, progress=False)
    # stopped after 3 of 8 steps, then resumed: same schedule, same data order, same dropout
    train(stage, mcfg, _cfg(8), store, tmp_path / "part", coarse_map=cm, progress=False, stop_at=3)
    resumed = train(stage, mcfg, _cfg(8), store, tmp_path / "part", coarse_map=cm, resume=True, progress=False)
    assert resumed["steps_this_run"] == 5
    assert _losses(tmp_path / "part") == pytest.approx(_losses(tmp_path / "full"), abs=0, rel=0)
    a, _ = load_run(tmp_path / "full", stage)
    b, _ = load_run(tmp_path / "part", stage)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert 0 <= full["heldout"]["acc"] <= 1 and full["heldout"]["count"] == 16


def test_training_learns(setup, tmp_path):
    root, store, heldout = setup
    mcfg = stage_config("GPT-tiny", "baseline", K, C, NCLS, GRID)
    s = train("baseline", mcfg, _cfg(40, lr=0.3), store, tmp_path / "b", heldout_dir=heldout, progress=False)
    losses = _losses(tmp_path / "b")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_grad_accumulation_matches_full_batch(setup, tmp_path):
    root, store, _ = setup
    mcfg = stage_config("GPT-tiny", "baseline", K, C, NCLS, GRID, token_dropout_p=0.0, resid_dropout_p=0.0,
                        ffn_dropout_p=0.0, class_dropout_prob=0.0)
    train("baseline", mcfg, _cfg(3), store, tmp_path / "a", progress=False)
    train("baseline", mcfg, _cfg(3, grad_accum=4), store, tmp_path / "b", progress=False)
    a, _ = load_run(tmp_path / "a")
    b, _ = load_run(tmp_path / "b")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(v, w, atol=1e-5, rtol=1e-4, msg=k)


def test_refuses_wrong_inputs(setup, tmp_path):
    root, store, _ = setup
    mcfg = stage_config("GPT-tiny", "fine", K, C, NCLS, GRID)
    with pytest.raises(UserError, match="needs a coarse map"):
        train("fine", mcfg, _cfg(1), store, tmp_path / "x", progress=False)
    other = make_store(tmp_path / "other", fingerprint="another")
    with pytest.raises(UserError, match="re-run `coarse2fine cluster`"):
        train("fine", mcfg, _cfg(1), other, tmp_path / "y", coarse_map=root / "coarse_map.safetensors", progress=False)
    train("baseline", stage_config("GPT-tiny", "baseline", K, C, NCLS, GRID), _cfg(1), store, tmp_path / "z",
          progress=False)
    with pytest.raises(UserError, match="already holds a run"):
        train("baseline", stage_config("GPT-tiny", "baseline", K, C, NCLS, GRID), _cfg(1), store, tmp_path / "z",
              progress=False)
    with pytest.raises(UserError, match="holds a baseline model"):
        load_run(tmp_path / "z", "coarse")
