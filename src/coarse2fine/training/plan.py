"""Run planning: (the preset's recipe, the settings given, the saved run) -> the resolved arguments of
`training.gpt.train`, with every applicability check in one place. `coarse2fine train` parses its flags
and calls `plan_stage_run`; a Python user can call it the same way.

Precedence: a fresh run takes the preset's recipe (config.train_recipe), then the settings given; a
resumed run takes the run's own settings, then the settings given (train() refuses one that differs,
except a larger `steps`, an extension).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coarse2fine.config import TrainConfig, UserError, train_recipe
from coarse2fine.data.codes import open_code_store
from coarse2fine.stages import stage_config, stage_spec
from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.training.gpt import saved_run

DEFAULT_PRESET = "GPT-small"


@dataclass
class StagePlan:
    kwargs: dict[str, Any]      # train(**kwargs, out_dir=..., resume=...)
    summary: str | None         # the resolved recipe in one line (fresh runs), for the user to read


def plan_stage_run(out: str | Path, *, resume: bool = False, stage: str | None = None, preset: str | None = None,
                   codes: str | Path | None = None, coarse_map: str | Path | None = None,
                   heldout: str | Path | None = None, head: str | None = None,
                   given: dict[str, Any] | None = None) -> StagePlan:
    """given: TrainConfig fields set explicitly (None values = not given). head: "restricted" | "full"."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    summary = None
    if resume:  # a setting left out takes the run's value
        kw = saved_run(out)
        kw["cfg"] = dataclasses.replace(kw["cfg"], **given)
    elif not (stage and codes):
        raise UserError("train needs --stage and --codes (only --resume reads them from the run)")
    else:  # the preset's recipe, then the settings given; fields not given keep the recipe's value
        name = preset or DEFAULT_PRESET
        cfg = TrainConfig(**{**train_recipe(name, given.get("steps")), **given})
        shown = ", ".join(f"{k} {getattr(cfg, k)}" for k in
                          ("steps", "batch_size", "lr", "schedule", "warmup_steps", "weight_decay", "ema_decay"))
        summary = (f"train {stage} ({name}, recipe '{cfg.recipe}'): {shown}; flags given: "
                   f"{', '.join(sorted(given)) or 'none'}")
        kw = {"cfg": cfg, "stage": stage, "restricted": True}
    spec = stage_spec(stage or kw["stage"])
    if coarse_map is not None and not spec.needs_coarse_map and not (spec.cluster_loss and kw["cfg"].cluster_loss_weight > 0):
        raise UserError(f"--coarse-map applies to the coarse and fine stages (and the baseline with "
                        f"--cluster-loss-weight) only; drop it with --stage {spec.name}")
    if head is not None and not spec.restricted_head:
        raise UserError(f"--head applies to --stage fine only; drop it with --stage {spec.name}")
    for key, value in (("stage", stage), ("codes_dir", codes), ("coarse_map", coarse_map), ("heldout_dir", heldout)):
        kw[key] = value if value is not None else kw.get(key)
    if head is not None:
        kw["restricted"] = head == "restricted"
    kw["restricted"] = kw["restricted"] and spec.restricted_head
    if preset is not None or "model_cfg" not in kw:
        meta = open_code_store(kw["codes_dir"]).meta  # extract-codes or extract-codes-imagenet output
        num_coarse = CoarseMap.load(kw["coarse_map"]).num_coarse if kw["coarse_map"] else 0
        kw["model_cfg"] = stage_config(preset or DEFAULT_PRESET, kw["stage"], meta["codebook_size"], num_coarse,
                                       meta["num_classes"], meta["grid"])
    return StagePlan(kw, summary)
