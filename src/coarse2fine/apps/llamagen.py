"""Import LlamaGen release files into coarse2fine run directories.

    import_llamagen(vq="vq_ds16_c2i.pt", gpt="c2i_B_256.pt", preset="GPT-B", out="runs/llamagen")
    -> runs/llamagen/tokenizer/{config.json kind "vq", model.safetensors}   (what load_vq reads)
       runs/llamagen/baseline/{config.json kind "gpt", stage "baseline", model.safetensors} (load_run)

Files are read with weights_only=True (LlamaGen's training checkpoints also pickle their argparse
Namespace under "args"; that one class is allowed, nothing else). Keys are checked strictly: a
missing, unexpected or mis-shaped key is named, and a file that belongs to another preset says
which preset it matches. Nothing is inferred from file names: the grid comes from --image-size and
the tokenizer's downsampling, the vocabulary and class count from the tensors themselves.
"""
from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from coarse2fine.checkpoint import (check_keys, load_strict, load_torch_file, read_run_config, save_run,
                                    tokenizer_ref, unwrap_state_dict)
from coarse2fine.config import GPT_PRESETS, VQ_PRESETS, UserError, VQConfig, from_dict, gpt_config, to_dict, vq_config
from coarse2fine.models import Transformer
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint
from coarse2fine.checkpoint import load_vq

log = logging.getLogger("coarse2fine.import")

# LlamaGen's FID settings per model size (llamagen-compat.md); recorded in the imported run.
LLAMAGEN_FID_CFG = {"GPT-B": 2.0, "GPT-L": 2.0, "GPT-XL": 1.75}
# Non-learned tables some LlamaGen versions store; rebuilt by our model, so dropped (and recorded).
DERIVED_GPT_KEYS = ("freqs_cis",)


def read_llamagen_file(path: str | Path, source: str) -> dict[str, Any]:
    """torch.load(weights_only=True) of a LlamaGen .pt (argparse.Namespace "args" allowed)."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise UserError(f"{source} {path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def pick_weights(obj: dict[str, Any], path: str | Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a LlamaGen file and where it was found ("model", "ema", ... or "<top level>")."""
    if use_ema:
        if not isinstance(obj.get("ema"), dict):
            raise UserError(f"{path} has no 'ema' weights (top-level keys: {sorted(map(str, obj))}); drop --ema")
        order = ("ema",)
    else:
        # LlamaGen's own samplers read "model", then "module" (deepspeed), then "state_dict"
        order = ("model", "module", "state_dict")
    where = next((k for k in order if isinstance(obj.get(k), dict)), "<top level>")
    return unwrap_state_dict(obj, prefer=order, source=str(path)), where


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _matching_presets(model_fn, presets: dict[str, dict], sd: dict[str, torch.Tensor]) -> list[str]:
    """Presets whose (meta-device) model has exactly the keys and shapes of `sd`."""
    out = []
    for name in presets:
        with torch.device("meta"):
            model = model_fn(name)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if own == {k: tuple(v.shape) for k, v in sd.items()}:
            out.append(name)
    return out


def _check_not_swapped(sd: dict[str, torch.Tensor], path, expect: str) -> None:
    if expect == "gpt" and "encoder.conv_in.weight" in sd:
        raise UserError(f"{path} is a VQ tokenizer checkpoint; pass it as --vq, and the c2i model as --gpt")
    if expect == "vq" and "tok_embeddings.weight" in sd:
        raise UserError(f"{path} is a GPT checkpoint; pass it as --gpt, and the tokenizer as --vq")


# ---- tokenizer -------------------------------------------------------------------------------

def trained_size(obj: dict[str, Any]) -> int | None:
    """The image size a LlamaGen training checkpoint records in its pickled args, if any."""
    size = getattr(obj.get("args"), "image_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def import_vq(path: str | Path, out_dir: str | Path, preset: str = "VQ-16", image_size: int | None = None,
              use_ema: bool = False) -> Path:
    """LlamaGen VQ file -> tokenizer run dir {config.json, model.safetensors}; returns the dir.

    image_size None: the size the file records (its training args), else the preset's. A size that
    differs from the recorded one (or, without a record, from the preset's) is allowed, since the
    convolutions run at any size and LlamaGen's 384 px models use its 256 px tokenizer, but warned
    about: it sets the code grid every later command uses."""
    obj = read_llamagen_file(path, "tokenizer file")
    known = trained_size(obj) or (VQ_PRESETS[preset]["image_size"] if preset in VQ_PRESETS else None)
    if image_size is None:
        image_size = known or 256
    elif known and image_size != known:
        why = "its training args record" if trained_size(obj) else f"the {preset} preset is"
        log.warning("--image-size %d: %s was trained at %d px (%s), so its codes at %d px may be off; pass "
                    "--image-size %d unless %d px is what it will encode", image_size, path, known, why, image_size,
                    known, image_size)
    cfg = vq_config(preset, image_size=image_size)
    if image_size % cfg.downsample:
        raise UserError(f"--image-size {image_size} is not a multiple of the tokenizer's downsampling {cfg.downsample}")
    sd, where = pick_weights(obj, path, use_ema)
    _check_not_swapped(sd, path, "vq")
    model = VQModel(cfg)
    if {k: tuple(v.shape) for k, v in model.state_dict().items()} != {k: tuple(v.shape) for k, v in sd.items()}:
        fits = _matching_presets(lambda n: VQModel(vq_config(n)), VQ_PRESETS, sd)
        if fits:
            raise UserError(f"{path} is a {' / '.join(fits)} tokenizer, not {preset}; pass --vq-preset {fits[0]}")
        check_keys(model, sd, str(path))  # names every missing / unexpected / mis-shaped key
    load_strict(model, sd, str(path))
    out = _fresh_dir(out_dir)
    save_run(out, "vq", {"vq": to_dict(cfg),
                         "data": {"name": "imagenet", "resolution": image_size, "note": "LlamaGen release"},
                         "train": {}, "fingerprint": codebook_fingerprint(model), "source": _source(path, where)},
             model)
    load_vq(out)  # the run dir must load through the normal path; fail here, not at first use
    return out


# ---- c2i GPT ---------------------------------------------------------------------------------

def gpt_shape(sd: dict[str, torch.Tensor], path) -> dict[str, int]:
    """Layers, width, vocabulary and class count read off a LlamaGen GPT state dict."""
    if "cls_embedding.embedding_table.weight" not in sd:
        hint = (" (this looks like a text-to-image model; only class-to-image is supported)"
                if any(k.startswith("cls_embedding.cap_proj") for k in sd) else "")
        raise UserError(f"{path} has no cls_embedding.embedding_table.weight, so it is not a LlamaGen "
                        f"class-to-image GPT{hint}")
    if "tok_embeddings.weight" not in sd:
        raise UserError(f"{path} has no tok_embeddings.weight; it is not a LlamaGen GPT checkpoint")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    vocab, dim = sd["tok_embeddings.weight"].shape
    return {"n_layer": len(layers), "dim": int(dim), "vocab_size": int(vocab),
            "num_classes": int(sd["cls_embedding.embedding_table.weight"].shape[0]) - 1}


def import_gpt(path: str | Path, out_dir: str | Path, preset: str, tokenizer_dir: str | Path,
               image_size: int | None = None, use_ema: bool = False) -> Path:
    """LlamaGen c2i file -> baseline run dir {config.json, model.safetensors}; returns the dir.
    image_size None: the tokenizer's."""
    if preset not in GPT_PRESETS:
        raise UserError(f"unknown --preset {preset!r}; choose one of {sorted(GPT_PRESETS)}")
    tok_dir = Path(tokenizer_dir).resolve()
    vq = load_vq(tok_dir)
    image_size = image_size or vq.cfg.image_size
    if image_size % vq.cfg.downsample:
        raise UserError(f"--image-size {image_size} is not a multiple of the tokenizer's downsampling "
                        f"{vq.cfg.downsample}")
    grid = image_size // vq.cfg.downsample
    sd, where = pick_weights(read_llamagen_file(path, "GPT file"), path, use_ema)
    _check_not_swapped(sd, path, "gpt")
    dropped = sorted(k for k in DERIVED_GPT_KEYS if k in sd)
    sd = {k: v for k, v in sd.items() if k not in DERIVED_GPT_KEYS}
    shape = gpt_shape(sd, path)
    want = gpt_config(preset)
    if (want.n_layer, want.dim) != (shape["n_layer"], shape["dim"]):
        fits = [n for n, p in GPT_PRESETS.items()
                if (gpt_config(n).n_layer, gpt_config(n).dim) == (shape["n_layer"], shape["dim"])]
        hint = f"; pass --preset {fits[0]}" if fits else "; no preset has that shape"
        raise UserError(f"{path} has {shape['n_layer']} layers of width {shape['dim']}"
                        f"{' (' + ' / '.join(fits) + ')' if fits else ''}, but --preset {preset} has "
                        f"{want.n_layer} layers of width {want.dim}{hint}")
    if shape["vocab_size"] != vq.cfg.codebook_size:
        raise UserError(f"{path} predicts {shape['vocab_size']} codes but the tokenizer {tok_dir} has "
                        f"{vq.cfg.codebook_size}; import the tokenizer the model was trained with")
    cfg = gpt_config(preset, vocab_size=shape["vocab_size"], num_classes=shape["num_classes"], grid=grid,
                     causal=True)
    model = Transformer(cfg)
    load_strict(model, sd, str(path))
    out = _fresh_dir(out_dir)
    fp = codebook_fingerprint(vq)
    meta: dict[str, Any] = {
        "stage": "baseline", "gpt": to_dict(cfg), "train": None, "restricted": False, "coarse_map": None,
        "codes": {"tokenizer_fingerprint": fp, "codebook_size": cfg.vocab_size, "grid": grid,
                  "num_classes": cfg.num_classes, "image_size": image_size, "dataset": "imagenet (LlamaGen release)"},
        "tokenizer": tokenizer_ref(fp, tok_dir, out),
        "source": {**_source(path, where), "dropped_keys": dropped},
    }
    if preset in LLAMAGEN_FID_CFG:
        meta["llamagen_fid_sampling"] = {"cfg_scale": LLAMAGEN_FID_CFG[preset], "temperature": 1.0,
                                         "top_k": 0, "top_p": 1.0}
    save_run(out, "gpt", meta, model)
    return out


def import_llamagen(out: str | Path, vq: str | Path | None = None, gpt: str | Path | None = None,
                    preset: str | None = None, vq_preset: str = "VQ-16", image_size: int | None = None,
                    tokenizer_dir: str | Path | None = None, use_ema: bool = False) -> dict[str, Path]:
    """Import a VQ file to out/tokenizer and/or a c2i file to out/baseline (see module docstring).

    With `gpt` but no `vq`, `tokenizer_dir` names an already imported tokenizer run dir."""
    if vq is None and gpt is None:
        raise UserError("nothing to import: give --vq and/or --gpt")
    if gpt is not None and preset is None:
        raise UserError("--gpt needs --preset (GPT-B, GPT-L, GPT-XL or GPT-XXL): the file does not store its "
                        "head count")
    if gpt is not None and vq is None and tokenizer_dir is None:
        raise UserError("--gpt needs the tokenizer it was trained with: --vq FILE or --tokenizer RUN_DIR")
    if vq is not None and tokenizer_dir is not None:
        raise UserError("give either --vq (a LlamaGen file) or --tokenizer (a run dir), not both")
    out = Path(out)
    done: dict[str, Path] = {}
    if vq is not None:
        done["tokenizer"] = import_vq(vq, out / "tokenizer", vq_preset, image_size, use_ema)
        tokenizer_dir = done["tokenizer"]
    if gpt is not None:
        try:
            done["baseline"] = import_gpt(gpt, out / "baseline", preset, tokenizer_dir, image_size, use_ema)
        except UserError:
            if "tokenizer" in done:  # written by this call: leave no half import behind
                shutil.rmtree(done["tokenizer"])
            raise
    return done


def cfg_interval_from_llamagen(cfg_interval: float) -> int:
    """LlamaGen's --cfg-interval c (guidance on tokens 0 .. floor(c)+1; -1 = all tokens) as our
    StageSampling.cfg_interval (guidance on the first n tokens; -1 = all): n = floor(c) + 2."""
    if cfg_interval <= -1:
        return -1
    return int(cfg_interval // 1) + 2


def _source(path: str | Path, where: str) -> dict[str, Any]:
    p = Path(path).resolve()
    return {"format": "llamagen", "file": str(p), "sha256": file_sha256(p), "weights_key": where}


def _fresh_dir(path: str | Path) -> Path:
    out = Path(path)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def describe(run_dir: str | Path) -> str:
    """One line about an imported run dir (for the CLI)."""
    meta = read_run_config(run_dir)
    if meta["kind"] == "vq":
        c = from_dict(VQConfig, meta["vq"])
        return (f"tokenizer: K={c.codebook_size}, {c.image_size}px -> {c.grid}x{c.grid} codes, "
                f"fingerprint {meta['fingerprint']}")
    g = meta["gpt"]
    return (f"baseline: {g['n_layer']} layers x {g['dim']}, vocab {g['vocab_size']}, {g['num_classes']} classes, "
            f"grid {g['grid']}x{g['grid']}")


__all__ = ["import_llamagen", "import_vq", "import_gpt", "read_llamagen_file", "cfg_interval_from_llamagen"]
