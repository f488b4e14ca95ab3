"""Checkpoints: one release format for every run kind, train state, foreign (LlamaGen) files.

- Release (format_version 1): `<dir>/model.safetensors` + `<dir>/config.json` holding
  {"format": "coarse2fine", "format_version": 1, "kind": "vq" | "gpt" | "classifier" | "coarse_map",
  ...}; the resolved config travels with the weights. Runs written before the version field read as
  version 0. A run that depends on a tokenizer records it under "tokenizer": {"fingerprint", "path"},
  the path relative to the run dir, so a copied runs/ tree keeps working (`load_run_tokenizer`).
- Train state: `<dir>/state.pt` (model, EMA, optimizer, scheduler, step, RNG, data position),
  written atomically, loaded with weights_only=True and checked against the run's config.json.
- Foreign: LlamaGen `.pt` dicts ("model" / "ema" / "state_dict" / "module" or bare), loaded with
  weights_only=True and checked key by key: every missing or unexpected key is named.
"""
from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from coarse2fine.models import Transformer
from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.tokenizer.vq import USAGE_WINDOW, VQModel, codebook_fingerprint

from coarse2fine.config import (ConfigError, GPTConfig, TokenizerTrainConfig, TrainConfig, UserError, VQConfig,
                                from_dict, run_settings, vq_config)
from coarse2fine.fileio import (atomic_save_safetensors, atomic_torch_save, check_tensor_digest, dump_json, load_json,
                               text_in_place_of)

FORMAT, FORMAT_VERSION = "coarse2fine", 1
MODEL_INDEX = "model_index.json"  # the top of a release folder (release.py reads and writes it)
RUN_KINDS = ("vq", "gpt", "classifier", "coarse_map")
WRAPPER_KEYS = ("model", "ema", "state_dict", "module")


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's text (EOFError from a 0-byte file has none)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__


def _safe_torch_load(p: Path, what: str, fix: str) -> Any:
    """torch.load(weights_only=True) with every failure as one line. torch's own refusal text
    suggests weights_only=False (arbitrary code execution); that hint is never passed on."""
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; pass the checkpoint file itself (e.g. {p}/vq_ds16_c2i.pt)")
    if not p.is_file():
        raise UserError(f"{what} {p} not found; check the path")
    if p.stat().st_size == 0:
        raise UserError(f"{what} {p} is empty (0 bytes), e.g. from an interrupted copy; {fix}")
    try:
        # torch warns about pickle protocols before refusing a plain pickle; the one line below says it all
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, KeyError, RuntimeError, EOFError, OSError, ValueError) as e:
        text = text_in_place_of(p)
        if text:
            raise UserError(text) from None
        if not isinstance(e, pickle.UnpicklingError):
            raise UserError(f"cannot read {what} {p} ({type(e).__name__}: {_first_line(e)}); the file is corrupt or "
                            f"not a PyTorch checkpoint; {fix}") from None
        found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(e))))
        if not found and not zipfile.is_zipfile(p):
            raise UserError(f"{p} is a plain pickle, not a torch.save checkpoint, so it is not loaded (unpickling "
                            f"runs code); {fix}") from None
        names = f" ({', '.join(found)})" if found else ""
        raise UserError(f"{p} holds objects other than tensors and plain values{names}, so it is refused for "
                        f"safety and not loaded (weights_only); {fix}") from None


def load_torch_file(path: str | Path) -> Any:
    """torch.load with weights_only=True and a one-line error for a missing, empty or corrupt file.

    argparse.Namespace is allowed: LlamaGen's training checkpoints pickle their `args` beside the
    weights. Any other object is refused (weights_only), with the reason in one line."""
    return _safe_torch_load(Path(path), "checkpoint", "use the original release file")


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
    def some(items: list[str]) -> str:
        # the first few and a count: a file of another model misses every key, a 5 kB "one line" before
        return str(items) if len(items) <= 4 else f"{str(items[:4])[:-1]}, ...] ({len(items)} in all)"

    problems = []
    if missing:
        problems.append(f"missing keys {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {some(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {some(shapes)}")
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
    """A safetensors file -> {name: tensor}, its checksum verified (fileio.check_tensor_digest; set
    COARSE2FINE_SKIP_CHECKSUM=1 to skip that)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file {p} not found; is the run directory complete?")
    if p.stat().st_size == 0:
        raise UserError(f"weights file {p} is empty (0 bytes), e.g. from an interrupted copy; copy the run again")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(text_in_place_of(p) or f"cannot read {p} ({e}); the file is corrupt, re-export it") from e
    try:
        check_tensor_digest(p, sd, meta, "copy the file again from its source (or restore a backup)")
    except ValueError as e:
        raise UserError(str(e)) from None
    return sd


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
    """state.pt -> dict, refused in one line when it is missing, empty, corrupt, holds objects other
    than tensors, or holds the weights of another model than the run's config.json describes."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no train state at {p}; nothing to resume (drop --resume to start fresh)")
    fix = "delete it to start fresh or restore the previous one"
    st = _safe_torch_load(p, "train state", fix)
    if not isinstance(st, dict) or not isinstance(st.get("model"), dict) or "step" not in st:
        raise UserError(f"{p} is not a coarse2fine train state (no model weights and step); {fix}")
    if (p.parent / "config.json").is_file():
        skeleton = _skeleton(read_run_config(p.parent))
        if skeleton is not None:
            _check_same_shapes(skeleton, st["model"], p, fix)
    return st


def _skeleton(meta: dict) -> nn.Module | None:
    """The run's model on the meta device (shapes only, no memory), or None for other kinds."""
    with torch.device("meta"):
        if meta.get("kind") == "gpt":
            return Transformer(from_dict(GPTConfig, meta["gpt"]))
        if meta.get("kind") == "vq":
            return VQModel(from_dict(VQConfig, meta["vq"]))
    return None


def _check_same_shapes(model: nn.Module, sd: dict, p: Path, fix: str) -> None:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    bad = sorted(k for k in own.keys() | got.keys() if own.get(k) != got.get(k))
    if bad:
        raise UserError(f"{p} holds another model than {p.parent / 'config.json'} describes ({len(bad)} keys differ, "
                        f"e.g. {bad[:3]}): it is another preset's or run's state; {fix}")


# ---- release runs: config.json + model.safetensors ---------------------------------------------

def save_run(run_dir: str | Path, kind: str, meta: dict[str, Any],
             weights: nn.Module | dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write a release run: model.safetensors first, then config.json (its presence means complete).
    Returns the config as written."""
    save_run_weights(run_dir, weights)
    return write_run_config(run_dir, kind, meta)


def write_run_config(run_dir: str | Path, kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """config.json = {"format", "format_version", "kind"} + meta (atomic)."""
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {RUN_KINDS}")
    skip = ("format", "format_version", "kind")
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
           **{k: v for k, v in meta.items() if k not in skip}}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    dump_json(cfg, Path(run_dir) / "config.json")
    return cfg


def save_run_weights(run_dir: str | Path, weights: nn.Module | dict[str, torch.Tensor]) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    save_weights(weights, Path(run_dir) / "model.safetensors")


_KIND_NAMES = {"vq": "tokenizer", "gpt": "transformer stage", "classifier": "classifier", "coarse_map": "coarse map"}


def check_run_out(out: str | Path, kind: str) -> None:
    """Refuse to write a fresh `kind` run into a folder that holds another kind of run, an export or a
    config.json of something else: its config.json and weights would be replaced (`train-classifier --out`
    of a stage run replaced that run's model.safetensors; `train --out` of a classifier, the classifier's).
    A run of the same kind is the caller's to judge (a rerun, or --resume)."""
    out = Path(out)
    what = kind if kind not in _KIND_NAMES else _KIND_NAMES[kind]
    if (out / MODEL_INDEX).is_file():
        raise UserError(f"--out {out} is an exported pipeline folder; write the {what} run into another --out")
    if not (out / "config.json").is_file():
        if (out / "meta.json").is_file():  # a code store: the run's files would land among its codes
            raise UserError(f"--out {out} is a code store (it holds meta.json and extracted codes), not a run "
                            f"directory; write the {what} run into another --out")
        return
    try:
        other = load_json(out / "config.json").get("kind")
    except UserError:
        other = None
    if other != kind:
        held = f"a {_KIND_NAMES[other]} run" if other in _KIND_NAMES else "a config.json of something else"
        raise UserError(f"--out {out} holds {held}, whose config.json and weights a {what} run would replace; "
                        "choose another --out")


# the files at the top of a run (config.json, state.pt, model.safetensors), an export (model_index.json) or a
# code store (meta.json)
FOLDER_MARKS = ("config.json", MODEL_INDEX, "state.pt", "meta.json", "model.safetensors")


def check_not_run_out(out: str | Path, folder: str, writes: str) -> None:
    """Refuse the --out of a command that writes its files into a folder of its own (`demo`, `sample-fid`)
    when that folder holds a run, an export or a code store at its top: `writes` (what the command would
    write) would land among its files (the demo replaced a stage run's own coarse_map.safetensors with its
    k-means; sample-fid wrote samples/ and samples.npz beside a run's weights)."""
    out = Path(out)
    held = next((f for f in FOLDER_MARKS if (out / f).exists()), None)
    if held:
        raise UserError(f"--out {out} holds {held}: a run, an export or a code store, not {folder}; {writes} "
                        "among its files: choose another --out")


def read_run_config(run_dir: str | Path, kind: str | None = None) -> dict[str, Any]:
    """config.json of a run dir, checked: a coarse2fine run, a version this code reads (runs without
    format_version are version 0), and of `kind` when given."""
    run = Path(run_dir)
    if run.is_file():  # a file of the run (its model.safetensors) given for the run: "not found" sent users looking
        raise UserError(f"{run} is a file, not a run directory; pass the folder that holds it ({run.parent})")
    if not run.is_dir():
        raise UserError(f"run directory {run} not found")
    if (run / MODEL_INDEX).is_file():
        raise UserError(f"{run} is an exported pipeline folder, not a run; sample from it whole with `--pipeline "
                        f"{run}` (sample, sample-fid, eval, app) or CTFPipeline / ARPipeline.from_pretrained")
    meta = load_json(run / "config.json")
    if meta.get("format", FORMAT) != FORMAT:
        raise UserError(f"{run}/config.json is not a coarse2fine run (format {meta.get('format')!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{run} was written in format_version {version!r}; this coarse2fine reads versions up to "
                        f"{FORMAT_VERSION}: upgrade coarse2fine")
    if kind is not None and meta.get("kind") != kind:
        raise UserError(f"{run} is a {meta.get('kind')!r} run, not a {kind!r} run")
    check_run_schema(meta, run / "config.json")
    return {**meta, "format_version": version}


# what each run kind's config.json must hold (section: type) and may hold (checked when present): one
# check at load, so a hand-edited or damaged file is one line here and never a KeyError or TypeError later
_REQUIRED = {"gpt": {"stage": str, "gpt": dict}, "vq": {"vq": dict}}
_OPTIONAL = {"train": (dict, type(None)), "codes": dict, "tokenizer": (dict, type(None)),
             "coarse_map": (dict, type(None)), "history": list, "heldout": (str, type(None)), "restricted": bool}
_SECTION_CONFIGS = {"gpt": GPTConfig, "vq": VQConfig}


def _json_kind(want) -> str:
    names = {dict: "a JSON object", list: "a JSON list", str: "a string", bool: "true or false", type(None): "null"}
    return " or ".join(names[t] for t in (want if isinstance(want, tuple) else (want,)))


def check_run_schema(meta: dict[str, Any], source: Path) -> None:
    """Refuse a run config.json whose sections are missing or of the wrong type, or whose model and
    training settings name unknown fields or hold values of the wrong type (ConfigError, one line)."""
    kind = meta.get("kind")
    if kind not in RUN_KINDS:
        raise ConfigError(f"{source}: kind is {kind!r}, not one of {list(RUN_KINDS)}; re-create the run or restore "
                          "config.json from a backup")
    fix = "re-create the run or restore config.json from a backup"
    required = _REQUIRED.get(kind, {})
    missing = [key for key in required if key not in meta]
    if missing:
        raise ConfigError(f"{source} has no {missing[0]!r} section (a {kind} run needs it); {fix}")
    for key, want in {**_OPTIONAL, **required}.items():
        if key in meta and not isinstance(meta[key], want):
            raise ConfigError(f"{source}: {key!r} must be {_json_kind(want)}, got {type(meta[key]).__name__} "
                              f"{meta[key]!r:.60}; {fix}")
    if kind in _SECTION_CONFIGS:
        from_dict(_SECTION_CONFIGS[kind], meta[kind], f"{source} {kind!r}")
        if meta.get("train"):
            run_settings(TrainConfig if kind == "gpt" else TokenizerTrainConfig, meta["train"], f"{source} 'train'")


def load_run_weights(run_dir: str | Path, model: nn.Module) -> nn.Module:
    """Strictly load <run_dir>/model.safetensors into `model` (every key mismatch named)."""
    p = Path(run_dir) / "model.safetensors"
    load_strict(model, load_weights(p), source=str(p))
    return model


def load_run(run_dir: str | Path, expect_stage: str | None = None, device: str | torch.device = "cpu"):
    """Load a trained stage run directory -> (model in eval mode, run config dict)."""
    run = Path(run_dir)
    meta = read_run_config(run)
    if meta.get("kind") != "gpt":
        raise UserError(f"{run} is a {meta.get('kind')!r} run, not a transformer stage run")
    if expect_stage and meta["stage"] != expect_stage:
        raise UserError(f"{run} holds a {meta['stage']} model, but a {expect_stage} model is needed here")
    model = load_run_weights(run, Transformer(from_dict(GPTConfig, meta["gpt"])))
    return model.to(device).eval(), meta


def load_run_map(run_dir: str | Path, meta: dict, path: str | Path | None = None) -> CoarseMap:
    """The coarse map a stage run was trained on: `path` (an export's shared map), else the run's own
    copy, checked against what the run's config.json records of it (CoarseMap.check_recorded)."""
    run = Path(run_dir)
    p = Path(path) if path is not None else run / "coarse_map.safetensors"
    if not p.is_file():
        if (run.parent / MODEL_INDEX).is_file():  # a component of an exported folder: its map is shared
            raise UserError(f"{run} is a component of the exported folder {run.parent}, not a run directory; load "
                            f"the folder whole: CTFPipeline.from_pretrained({str(run.parent)!r}) or "
                            f"`coarse2fine app --pipeline {run.parent}`")
        if path is not None:
            raise UserError(f"coarse map {p} is missing from the exported folder; copy the whole folder again or "
                            "export it again")
        raise UserError(f"{run} has no coarse_map.safetensors (a stage run keeps a copy of the map it was trained "
                        "on); copy the run directory whole again, or retrain it with --coarse-map")
    cmap = CoarseMap.load(p)
    cmap.check_recorded(meta.get("coarse_map"), p, run)
    return cmap


def read_tokenizer_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json of a tokenizer run dir, checked to be one. An exported folder, where a tokenizer is
    asked for, names its tokenizer component as the fix (it was "load it with from_pretrained")."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_INDEX).is_file():
        try:
            part = load_json(run_dir / MODEL_INDEX)["components"]["tokenizer"]
        except (UserError, KeyError, TypeError):
            part = "tokenizer"
        raise UserError(f"{run_dir} is an exported pipeline folder, not a tokenizer run; pass its tokenizer, "
                        f"{run_dir / str(part)}")
    cfg = read_run_config(run_dir)
    if cfg.get("kind") != "vq" or "vq" not in cfg:
        raise ConfigError(f"{run_dir} is not a tokenizer run (config.json kind={cfg.get('kind')!r}, "
                          "expected 'vq'); pass the directory written by train-tokenizer")
    return cfg


def load_vq(run_dir: str | Path) -> VQModel:
    """VQModel (eval mode) from a tokenizer run dir: config.json {"kind": "vq", "vq": ...} +
    model.safetensors (EMA weights when training used EMA)."""
    run_dir = Path(run_dir)
    cfg = read_tokenizer_config(run_dir)
    return _from_state_dict(from_dict(VQConfig, cfg["vq"]), load_weights(run_dir / "model.safetensors"),
                            str(run_dir / "model.safetensors"))


# ---- the tokenizer a run or code store depends on ------------------------------------------------

def tokenizer_ref(fingerprint: str | None, tokenizer_dir: str | Path | None, run_dir: str | Path) -> dict:
    """{"fingerprint", "path"}: path relative to run_dir, so a copied tree of runs keeps working."""
    path = None
    if tokenizer_dir:
        try:
            path = os.path.relpath(Path(tokenizer_dir).resolve(), Path(run_dir).resolve())
        except ValueError:  # another drive (Windows): no relative path exists
            path = str(Path(tokenizer_dir).resolve())
    return {"fingerprint": fingerprint, "path": path}


def store_tokenizer_dir(store_meta: dict, store_dir: str | Path) -> Path | None:
    """The tokenizer a code store was extracted with: "tokenizer_path" (relative to the store), or
    the absolute "tokenizer_dir" older stores recorded."""
    if store_meta.get("tokenizer_path"):
        return Path(store_dir) / store_meta["tokenizer_path"]
    return Path(store_meta["tokenizer_dir"]) if store_meta.get("tokenizer_dir") else None


def run_fingerprint(meta: dict) -> str | None:
    """The codebook fingerprint a run was trained on (None when it was never recorded)."""
    return (meta.get("tokenizer") or {}).get("fingerprint") or (meta.get("codes") or {}).get("tokenizer_fingerprint")


def find_run_tokenizer(meta: dict, run_dir: str | Path, override: str | Path | None = None) -> Path:
    """Tokenizer dir of a run: `override`, else the recorded relative path, else (version-0 runs)
    the absolute path they recorded. Not found -> one line naming the fingerprint and --tokenizer."""
    if override is not None:
        if not Path(override).is_dir():
            raise UserError(f"--tokenizer {override} is not a directory; pass a tokenizer run dir")
        return Path(override)
    tried = []
    if (meta.get("tokenizer") or {}).get("path"):
        tried.append(Path(run_dir) / meta["tokenizer"]["path"])
    if meta.get("format_version", 0) == 0 and (meta.get("codes") or {}).get("tokenizer_dir"):
        tried.append(Path(meta["codes"]["tokenizer_dir"]))
    for cand in tried:
        if (cand / "config.json").is_file():
            return cand
    where = f" (not at {', '.join(map(str, tried))})" if tried else " (the run does not record where)"
    raise UserError(f"cannot find the tokenizer of {run_dir}{where}; it needs the tokenizer with codebook "
                    f"fingerprint {run_fingerprint(meta) or 'unknown'}: pass --tokenizer DIR")


def check_run_tokenizer(vq: VQModel, meta: dict, run_dir: str | Path, tok_dir: str | Path) -> None:
    """Refuse a tokenizer whose codebook is not the one the run was trained on."""
    want, got = run_fingerprint(meta), codebook_fingerprint(vq)
    if want and want != got:
        raise UserError(f"tokenizer {tok_dir} has codebook fingerprint {got}, but {run_dir} was trained on codes of "
                        f"fingerprint {want}; pass --tokenizer DIR with the tokenizer the run was trained with")


def load_run_tokenizer(meta: dict, run_dir: str | Path, override: str | Path | None = None) -> VQModel:
    """The run's tokenizer (found as find_run_tokenizer does), fingerprint-checked."""
    tok = find_run_tokenizer(meta, run_dir, override)
    vq = load_vq(tok)
    check_run_tokenizer(vq, meta, run_dir, tok)
    return vq


def check_run_codes(meta: dict, run_dir: str | Path, store_meta: dict, store_dir: str | Path) -> None:
    """Refuse a code store extracted with another tokenizer than the run was trained on."""
    want, got = run_fingerprint(meta), store_meta.get("tokenizer_fingerprint")
    if want and got and want != got:
        raise UserError(f"code store {store_dir} holds codes of tokenizer {got}, but {run_dir} was trained on "
                        f"codes of tokenizer {want}; extract the codes with the run's tokenizer")
    k = (meta.get("codes") or {}).get("codebook_size")
    if k and store_meta.get("codebook_size") and k != store_meta["codebook_size"]:
        raise UserError(f"code store {store_dir} has {store_meta['codebook_size']} codes, {run_dir} was trained on "
                        f"{k}; extract the codes with the run's tokenizer")


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
