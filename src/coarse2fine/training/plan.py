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

from coarse2fine.config import TrainConfig, UserError, check_codebook_size, train_recipe
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
                   codes: str | Path | None = None, coarse_map: str | Path | CoarseMap | None = None,
                   heldout: str | Path | None = None, head: str | None = None,
                   given: dict[str, Any] | None = None) -> StagePlan:
    """given: TrainConfig fields set explicitly (None values = not given). head: "restricted" | "full".
    coarse_map: a path or a loaded CoarseMap; the plan carries it loaded, so a run reads it once."""
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
    if given.get("eval_every") and not kw.get("heldout_dir"):  # the loop evaluates only held-out codes
        raise UserError(f"--eval-every {given['eval_every']} evaluates the held-out codes, and this run has none: "
                        "pass --heldout S (codes extracted with --split test) or drop --eval-every")
    if head is not None:
        kw["restricted"] = head == "restricted"
    kw["restricted"] = kw["restricted"] and spec.restricted_head
    if kw["coarse_map"] is not None and not isinstance(kw["coarse_map"], CoarseMap):
        kw["coarse_map"] = CoarseMap.load(kw["coarse_map"])  # read once; train() takes the object
    if preset is not None or "model_cfg" not in kw:
        meta = open_code_store(kw["codes_dir"]).meta  # extract-codes or extract-codes-imagenet output
        num_coarse = kw["coarse_map"].num_coarse if kw["coarse_map"] else 0
        kw["model_cfg"] = stage_config(preset or DEFAULT_PRESET, kw["stage"], meta["codebook_size"], num_coarse,
                                       meta["num_classes"], meta["grid"])
    return StagePlan(kw, summary)


# ---- the tokenizer ----------------------------------------------------------------------------------

DATA_KEYS = ("name", "root", "limit_per_class", "val_fraction")  # how a tokenizer run records its data


@dataclass
class TokenizerPlan:
    vq: Any                      # VQConfig (fresh run) or the run's saved architecture (dict, resume)
    recipe: dict | None          # the preset's recipe (fresh run; None on resume: the run's own settings)
    data: dict[str, Any]         # build_dataset arguments: name, root, limit_per_class, val_fraction
    summary: str | None          # the resolved recipe in one line (fresh runs)


def plan_tokenizer_run(out: str | Path, *, resume: bool = False, preset: str | None = None,
                       arch: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                       given: dict[str, Any] | None = None) -> TokenizerPlan:
    """(the preset and its recipe, the settings given, the saved run) -> what train_tokenizer needs.
    arch: VQConfig fields given (codebook_size, commit_beta, entropy_loss_ratio); data: the data set
    given (DATA_KEYS; None = not given); given: TokenizerTrainConfig fields given, for the summary.
    On resume the run's architecture and data are used, and a given one that differs is refused."""
    from coarse2fine.checkpoint import read_run_config
    from coarse2fine.config import TokenizerTrainConfig, VQConfig, from_dict, to_dict, tokenizer_recipe, vq_config

    arch = {k: v for k, v in (arch or {}).items() if v is not None}
    data = dict(data or {})
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if arch.get("codebook_size") is not None:  # VQConfig checks it too; here the error names the flag
        check_codebook_size(arch["codebook_size"], "--codebook-size")
    vq_cfg = vq_config(preset or "VQ-tiny", **arch)
    if resume:
        saved = read_run_config(out, "vq")
        recorded = saved.get("data", {})
        for key in DATA_KEYS:
            if data.get(key) is not None and data[key] != recorded.get(key):
                flag = {"name": "data", "root": "data_root"}.get(key, key)
                raise UserError(f"--resume uses the run's data ({key}={recorded.get(key)!r}); drop "
                                f"--{flag.replace('_', '-')}")
        if (preset or arch) and to_dict(vq_cfg) != to_dict(from_dict(VQConfig, saved["vq"])):
            raise UserError("--resume uses the run's saved architecture, which differs from --vq-preset / "
                            "--codebook-size / --commit-beta / --entropy-loss-ratio; drop them")
        return TokenizerPlan(saved["vq"], None, {key: recorded.get(key) for key in DATA_KEYS}, None)
    recipe = tokenizer_recipe(preset or "VQ-tiny")
    tc = TokenizerTrainConfig(**{**recipe, **given})
    summary = (f"train-tokenizer ({preset or 'VQ-tiny'}, recipe '{recipe['recipe']}'): steps {tc.steps}, batch "
               f"{tc.batch_size}, lr {tc.lr}, warmup {tc.warmup_steps}, min lr ratio {tc.min_lr_ratio}")
    return TokenizerPlan(vq_cfg, recipe, {key: data.get(key) for key in DATA_KEYS}, summary)
