"""Checkpoints: release weights (safetensors + config.json), train state, foreign (LlamaGen) files.

- Release: `<dir>/model.safetensors` + `<dir>/config.json` (the resolved config travels with it).
- Train state: `<dir>/state.pt` (model, EMA, optimizer, scheduler, step, RNG, data position),
  written atomically, loaded with weights_only=True.
- Foreign: LlamaGen `.pt` dicts ("model" / "ema" / "state_dict" / "module" or bare), loaded with
  weights_only=True and checked key by key: every missing or unexpected key is named.
"""
from __future__ import annotations

import argparse
import pickle
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from coarse2fine.models import Transformer
from coarse2fine.tokenizer.vq import USAGE_WINDOW, VQModel

from coarse2fine.config import ConfigError, GPTConfig, UserError, VQConfig, from_dict, load_json, vq_config
from coarse2fine.fileio import atomic_save_safetensors, atomic_torch_save

WRAPPER_KEYS = ("model", "ema", "state_dict", "module")


def load_torch_file(path: str | Path) -> Any:
    """torch.load with weights_only=True and a one-line error for a missing or corrupt file.

    argparse.Namespace is allowed: LlamaGen's training checkpoints pickle their `args` beside the
    weights. Any other object is refused (weights_only), with the reason in one line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} not found; check the path")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{p} holds objects other than tensors and plain values, so it is not loaded "
                        f"(weights_only); first error: {str(e).splitlines()[0][:200]}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {p} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        "the file is corrupt or not a PyTorch checkpoint") from e


def unwrap_state_dict(obj: Any, prefer: Iterable[str] = WRAPPER_KEYS, source: str = "checkpoint"
                      ) -> dict[str, torch.Tensor]:
    """Find the weights inside a LlamaGen-style file: under "model"/"ema"/"state_dict"/"module",
    or the dict itself when it maps names to tensors (FSDP exports)."""
    if not isinstance(obj, dict):
        raise UserError(f"{source} holds a {type(obj).__name__}, not a dict of weights")
    for key in prefer:
        if key in obj and isinstance(obj[key], dict):
            sd = obj[key]
            break
    else:
        sd = obj
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise UserError(f"{source} has no tensors (looked under {list(prefer)} and at the top level)")
    # DDP / torch.compile prefixes, applied uniformly
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def check_keys(model: nn.Module, sd: dict[str, torch.Tensor], source: str,
               ignore: Iterable[str] = ()) -> None:
    """Raise a UserError naming every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    ignore = set(ignore)
    missing = sorted(k for k in own if k not in sd and k not in ignore)
    unexpected = sorted(k for k in sd if k not in own and k not in ignore)
    shapes = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches {shapes}")
    if problems:
        raise UserError(f"{source} does not match the model ({'; '.join(problems)}); "
                        "pick the preset/config the file was trained with")


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    check_keys(model, sd, source)
    model.load_state_dict(sd, strict=True)


def save_weights(model_or_sd: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    atomic_save_safetensors(sd, path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file {p} not found; is the run directory complete?")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {p} ({e}); the file is corrupt, re-export it") from e


# ---- RNG state (exact resume) ---------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain Python values, so weights_only loading accepts them."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, path)


def load_train_state(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no train state at {p}; nothing to resume (drop --resume to start fresh)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"cannot read train state {p} ({str(e).splitlines()[0][:200]}); "
                        "delete it to start fresh or restore the previous one") from e


# ---- trained runs ------------------------------------------------------------------------------

def load_run(run_dir: str | Path, expect_stage: str | None = None, device: str | torch.device = "cpu"):
    """Load a trained stage run directory -> (model in eval mode, run config dict)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {run} not found")
    meta = load_json(run / "config.json")
    if meta.get("kind") != "gpt":
        raise UserError(f"{run} is a {meta.get('kind')!r} run, not a transformer stage run")
    if expect_stage and meta["stage"] != expect_stage:
        raise UserError(f"{run} holds a {meta['stage']} model, but a {expect_stage} model is needed here")
    cfg = from_dict(GPTConfig, meta["gpt"])
    model = Transformer(cfg)
    load_strict(model, load_weights(run / "model.safetensors"), source=str(run / "model.safetensors"))
    return model.to(device).eval(), meta


def load_vq(run_dir: str | Path) -> VQModel:
    """VQModel (eval mode) from a tokenizer run dir: config.json {"kind": "vq", "vq": ...} +
    model.safetensors (EMA weights when training used EMA)."""
    run_dir = Path(run_dir)
    cfg = load_json(run_dir / "config.json")
    if cfg.get("kind") != "vq" or "vq" not in cfg:
        raise ConfigError(f"{run_dir} is not a tokenizer run (config.json kind={cfg.get('kind')!r}, "
                          "expected 'vq'); pass the directory written by train-tokenizer")
    return _from_state_dict(from_dict(VQConfig, cfg["vq"]), load_weights(run_dir / "model.safetensors"),
                            str(run_dir / "model.safetensors"))


def load_llamagen_vq(path: str | Path, preset: str | VQConfig = "VQ-16") -> VQModel:
    """VQModel (eval mode) from a LlamaGen torch.save file (weights under "model", "ema" or
    "state_dict"), loaded with weights_only=True; every missing/unexpected key is named."""
    cfg = preset if isinstance(preset, VQConfig) else vq_config(preset)
    sd = unwrap_state_dict(load_torch_file(path), prefer=("model", "ema", "state_dict"), source=str(path))
    return _from_state_dict(cfg, sd, str(path))


def _from_state_dict(cfg: VQConfig, sd: dict[str, torch.Tensor], source: str) -> VQModel:
    """Build on the meta device and adopt the file's tensors (as float32): no wasted random init."""
    with torch.device("meta"):
        model = VQModel(cfg)
    if "quantize.codebook_used" not in sd:
        # a usage statistic, not a weight (absent when LlamaGen ran with codebook_show_usage=False)
        sd = {**sd, "quantize.codebook_used": torch.full((USAGE_WINDOW,), -1.0)}
    check_keys(model, sd, source)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    return model.eval()
