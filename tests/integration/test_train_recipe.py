"""`train` takes its defaults from the preset's recipe, prints them and stores them in config.json."""
import json

import pytest

from coarse2fine.cli import main
from coarse2fine.config import TrainConfig, train_recipe


def test_recipe_by_preset():
    cpu, big = train_recipe("GPT-small"), train_recipe("GPT-B", steps=2000)
    # the measured small-model recipe (demo, study), not LlamaGen's ImageNet one that left CPU models at chance
    assert (cpu["recipe"], cpu["lr"], cpu["schedule"], cpu["warmup_steps"]) == ("cpu", 4e-3, "cosine", 50)
    assert (big["recipe"], big["lr"], big["schedule"], big["batch_size"], big["warmup_steps"]) == \
        ("llamagen", 1e-4, "constant", 256, 0)
    assert train_recipe("GPT-tiny", steps=400)["warmup_steps"] == 20
    TrainConfig(**cpu).validate()
    with pytest.raises(ValueError, match="unknown model preset"):
        train_recipe("GPT-huge")


def test_train_defaults_come_from_the_preset_and_are_recorded(tiny_runs, tmp_path, capsys, one_thread):
    out = tmp_path / "base"
    assert main(["train", "--stage", "baseline", "--codes", str(tiny_runs["codes"]), "--preset", "GPT-tiny",
                 "--steps", "2", "--batch-size", "4", "--dtype", "fp32", "--device", "cpu", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "recipe 'cpu'" in said and "lr 0.004" in said and "schedule cosine" in said
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["recipe"], train["lr"], train["schedule"], train["batch_size"]) == ("cpu", 4e-3, "cosine", 4)
    # a flag given wins over the recipe, and resume keeps what the run was started with
    out2 = tmp_path / "const"
    assert main(["train", "--stage", "baseline", "--codes", str(tiny_runs["codes"]), "--preset", "GPT-tiny",
                 "--steps", "2", "--batch-size", "4", "--schedule", "constant", "--dtype", "fp32", "--device", "cpu",
                 "--no-progress", "--out", str(out2)]) == 0
    assert json.loads((out2 / "config.json").read_text())["train"]["schedule"] == "constant"
    assert main(["train", "--resume", "--steps", "3", "--no-progress", "--out", str(out2)]) == 0
    train2 = json.loads((out2 / "config.json").read_text())["train"]
    assert (train2["schedule"], train2["steps"], train2["recipe"]) == ("constant", 3, "cpu")


def test_tokenizer_defaults_come_from_the_preset(tmp_path, capsys, one_thread):
    from coarse2fine.training.tokenizer import TokenizerTrainConfig, tokenizer_recipe

    big = TokenizerTrainConfig(**tokenizer_recipe("VQ-16"))
    assert (big.recipe, big.lr, big.batch_size, big.min_lr_ratio) == ("llamagen", 1e-4, 128, 1.0)
    assert TokenizerTrainConfig(**tokenizer_recipe("VQ-tiny")).lr == 2e-3
    out = tmp_path / "tok"
    assert main(["train-tokenizer", "--data", "default", "--limit-per-class", "2", "--steps", "1", "--batch-size", "4",
                 "--dtype", "fp32", "--device", "cpu", "--out", str(out)]) == 0
    assert "recipe 'cpu'" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["train"]["recipe"] == "cpu"


def test_plan_stage_run_is_the_one_place_that_resolves_a_run(tmp_path):
    """The library resolves (recipe, given settings, saved run) without the CLI; the checks live there."""

    from coarse2fine.config import UserError
    from coarse2fine.training.plan import plan_stage_run

    from fakes import make_store

    codes = make_store(tmp_path / "codes")
    plan = plan_stage_run(tmp_path / "run", stage="baseline", preset="GPT-tiny", codes=codes, given={"steps": 40, "lr": None})
    cfg = plan.kwargs["cfg"]
    assert (cfg.recipe, cfg.steps, cfg.warmup_steps, cfg.lr) == ("cpu", 40, 2, 4e-3)  # 5% warm-up of the given steps
    assert plan.kwargs["model_cfg"].grid == 4 and plan.kwargs["restricted"] is False and "flags given: steps" in plan.summary
    with pytest.raises(UserError, match="^--head applies to --stage fine only"):
        plan_stage_run(tmp_path / "run", stage="coarse", codes=codes, head="full")
    with pytest.raises(UserError, match="^train needs --stage and --codes"):
        plan_stage_run(tmp_path / "run", stage="coarse")


def test_the_coarse_map_is_read_once_per_run(tiny_runs, tmp_path, monkeypatch, one_thread):
    """The plan loads the map and hands train() the object: one read for a fresh run and one for a resume
    (the run's own copy, which train keeps beside config.json); it used to be read 2-3 times."""
    from coarse2fine.tokenizer.clustering import CoarseMap

    reads = []
    real = CoarseMap.load.__func__
    monkeypatch.setattr(CoarseMap, "load", classmethod(lambda cls, p: reads.append(p) or real(cls, p)))
    out = tmp_path / "coarse"
    argv = ["train", "--stage", "coarse", "--codes", str(tiny_runs["codes"]), "--coarse-map", str(tiny_runs["cmap"]),
            "--preset", "GPT-tiny", "--steps", "2", "--batch-size", "4", "--dtype", "fp32", "--device", "cpu",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0 and len(reads) == 1
    copy = CoarseMap.load(out / "coarse_map.safetensors")
    assert (out / "coarse_map.safetensors").read_bytes() == (tiny_runs["cmap"] / "coarse_map.safetensors").read_bytes()
    reads.clear()
    assert main(["train", "--resume", "--steps", "3", "--no-progress", "--out", str(out)]) == 0
    assert len(reads) == 1 and copy.source == (out / "coarse_map.safetensors").resolve()
