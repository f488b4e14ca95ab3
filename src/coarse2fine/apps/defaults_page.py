"""Every default in one place: docs/defaults.md, written from the definitions the code runs.

The page is generated, never edited by hand: `python -m coarse2fine.apps.defaults_page > docs/defaults.md`.
A test (tests/unit/test_defaults_page.py) fails when a default changes and the page does not, so the page
cannot drift from the code.
"""
from __future__ import annotations

import dataclasses
import inspect
import sys

from coarse2fine.apps.demo import COLOUR, DemoPlan
from coarse2fine.config import (CPU_PRESETS, GPT_PRESETS, TOKENIZER_RECIPE_OF, TOKENIZER_RECIPES,
                                VQ_PRESETS, GPTConfig, TokenizerTrainConfig, TrainConfig, gpt_config, train_recipe,
                                vq_config)
from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, StageSampling
from coarse2fine.tokenizer.clustering import METHODS, cluster_codebook, default_num_coarse

HEADER = """# Defaults: every setting the library picks for you

Generated from the code by `python -m coarse2fine.apps.defaults_page > docs/defaults.md`; a test fails when
the two differ. Where each value was measured or why it was chosen is in the comment beside its definition
(the file named under each table), and in [results.md](results.md), [tokenizer.md](tokenizer.md) and
[speed.md](speed.md). Every value here is a flag of the command that uses it ([cli.md](cli.md)).
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(str(x) for x in v) + ")"
    return str(v)


def _table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fields(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _model_presets() -> str:
    rows = []
    for name in GPT_PRESETS:
        c = gpt_config(name)
        rows.append([name, c.n_layer, c.n_head, c.dim, c.ffn_hidden, f"{c.grid}x{c.grid}", c.num_classes,
                     "cpu" if name in CPU_PRESETS else "llamagen"])
    d = _fields(GPTConfig)
    drop = ", ".join(f"{label} {d[k]:g}" for k, label in (
        ("token_dropout_p", "token"), ("resid_dropout_p", "residual"), ("ffn_dropout_p", "FFN"),
        ("attn_dropout_p", "attention"), ("class_dropout_prob", "class label")))
    return ("## Transformers (`--preset`)\n\n" + _table(
        ["preset", "layers", "heads", "width", "FFN hidden", "token grid", "classes", "training recipe"], rows) +
        f"\n\nAll presets: RoPE base {d['rope_base']:g}, RMSNorm eps {d['norm_eps']:g}, dropout {drop} "
        "(class dropout is what classifier-free guidance samples against). Stage 1 has a C-way head, stage 2 "
        "and the baseline a K-way one. Defined in `config.py` (GPT_PRESETS, GPTConfig).\n")


def _tokenizer_presets() -> str:
    rows = []
    for name in VQ_PRESETS:
        c = vq_config(name)
        rows.append([name, f"{c.image_size} px", c.downsample, f"{c.grid}x{c.grid}", c.codebook_size,
                     c.codebook_embed_dim, c.ch, c.ch_mult, "yes" if c.use_attn else "no",
                     TOKENIZER_RECIPE_OF.get(name, "cpu")])
    return ("## Tokenizers (`--vq-preset`)\n\n" + _table(
        ["preset", "images", "downsampling", "code grid", "codebook K", "code dim", "width", "ch_mult", "attention",
         "training recipe"], rows) +
        "\n\nCodewords are L2-normalised (LlamaGen), commitment beta 0.25. `--codebook-size` changes K up to "
        "16384. Defined in `config.py` (VQ_PRESETS, VQConfig).\n")


def _cpu_warmup_share() -> float:
    r = train_recipe(CPU_PRESETS[0], 1000)
    return r["warmup_steps"] / r["steps"]


def _train_recipes() -> str:
    keys = ["steps", "batch_size", "lr", "schedule", "warmup_steps", "weight_decay"]
    rows = []
    for preset in ("GPT-tiny", "GPT-B"):
        r = train_recipe(preset)
        rows.append([r["recipe"], ", ".join(p for p in GPT_PRESETS if train_recipe(p)["recipe"] == r["recipe"])] +
                    [r[k] for k in keys])
    t = _fields(TrainConfig)
    common = ", ".join(f"{k} {_fmt(t[k])}" for k in ("min_lr_ratio", "beta1", "beta2", "grad_clip", "ema_decay",
                                                      "dtype", "log_every", "ckpt_every"))
    return ("## Training the transformers (`train`)\n\n" + _table(
        ["recipe", "presets", "steps", "batch", "lr per batch 256", "schedule", "warm-up steps", "weight decay"],
        rows) +
        f"\n\nBoth recipes: {common}. Precision auto = bf16 autocast where the CPU or GPU has native bf16, "
        "fp32 elsewhere. The lr is scaled linearly by batch / 256. The warm-up is "
        f"{_cpu_warmup_share():g} of the steps in the cpu recipe. Defined in `config.py` "
        "(TRAIN_RECIPES, TrainConfig).\n")


def _tokenizer_recipes() -> str:
    base = _fields(TokenizerTrainConfig)
    keys = ["steps", "batch_size", "lr", "warmup_steps", "recon_loss", "perceptual_weight", "perceptual_depth",
            "perceptual_ramp", "colour_weight", "disc_weight", "disc_start", "ema_decay"]
    rows = []
    for name, over in TOKENIZER_RECIPES.items():
        r = {**base, **over}
        presets = ", ".join(p for p in VQ_PRESETS if TOKENIZER_RECIPE_OF.get(p, "cpu") == name)
        rows.append([name, presets] + [r[k] for k in keys])
    return ("## Training the tokenizer (`train-tokenizer`)\n\n" + _table(
        ["recipe", "presets", "steps", "batch", "lr", "warm-up", "reconstruction", "perceptual weight",
         "perceptual taps", "perceptual ramp", "colour weight", "GAN weight", "GAN from step", "EMA"], rows) +
        f"\n\nAll recipes: dead codewords re-seeded every {base['reseed_every']} steps until "
        f"{base['reseed_until']:g} of the run, horizontal flips on, precision {base['dtype']}. The 64-px recipe "
        "(cpu64) was chosen by PSNR, reconstruction FD and a colour error together "
        "([tokenizer.md](tokenizer.md)). Defined in `config.py` (TOKENIZER_RECIPES, TokenizerTrainConfig).\n")


def _sampling() -> str:
    def row(name: str, s: StageSampling) -> list:
        return [name, s.temperature, s.top_k or "off", "off" if s.top_p >= 1 else s.top_p,
                s.cfg_scale if s.use_cfg else "off", "every token" if s.cfg_interval < 0 else f"first {s.cfg_interval}"]
    rows = [row("CTF stage 1 (coarse labels)", CTF_COARSE_DEFAULT), row("CTF stage 2 (fine codes)", CTF_FINE_DEFAULT),
            row("baseline (LlamaGen AR)", BASELINE_DEFAULT)]
    return ("## Sampling (`sample`, the pipelines, the page)\n\n" + _table(
        ["stage", "temperature", "top-k", "top-p", "CFG scale", "CFG applied to"], rows) +
        "\n\nThe paper's settings for CTF (Sec. 5.1) and LlamaGen's for the baseline. CFG combines the "
        "conditional and unconditional logits in LlamaGen's order, so greedy samples match LlamaGen's bit for bit "
        "(`generate_ar(cfg_before_head=True)` guides the hidden state instead: 0.84x the CPU time at K = 16384, "
        "equal up to rounding). "
        "The demo samples sharper than this (next table). Defined in `sampling.py`.\n")


def _clustering() -> str:
    sig = inspect.signature(cluster_codebook).parameters
    d = {k: sig[k].default for k in ("method", "n_init", "max_iter", "seed")}
    others = ", ".join(m for m in METHODS if m != d["method"])
    return ("## Clustering (`cluster`)\n\n" + _table(
        ["setting", "default"],
        [["clusters C", f"K / 32 (16384 -> {default_num_coarse(16384)}, 4096 -> {default_num_coarse(4096)}, "
                        "as the paper)"],
         ["method", f"{d['method']} (Lloyd, {d['n_init']} initialisation(s), at most {d['max_iter']} iterations, "
                    f"seed {d['seed']}); also {others}"]]) +
        "\n\nDefined in `tokenizer/clustering.py` (default_num_coarse, cluster_codebook).\n")


def _demo() -> str:
    grey, colour = DemoPlan(), DemoPlan(**{"data": "emoji64", **COLOUR})
    keys = [("data", "data"), ("resolution", "image size"), ("vq_preset", "tokenizer"), ("gpt_preset", "transformers"),
            ("steps", "steps per network"), ("batch_size", "batch"), ("lr", "lr per batch 256"),
            ("dropout", "dropout"), ("ema", "EMA decay (0 = off)"), ("clusters", "clusters (0 = K / 32)"),
            ("head", "stage-2 head"),
            ("temperature", "temperature (both methods)"), ("cfg_scale", "CFG scale (both methods)"),
            ("fine_top_k", "stage-2 top-k"), ("eval_per_class", "scored samples per class"), ("dtype", "precision")]
    rows = [[label, _fmt(getattr(grey, k)), _fmt(getattr(colour, k))] for k, label in keys]
    return ("## The demo (`demo`, `demo --data emoji64`)\n\n" + _table(
        ["setting", "grey (default data, 32 px)", "colour (emoji64, 64 px)"], rows) +
        "\n\nThe demo ships its tokenizer and classifier for both data sets, so it trains only the three "
        "transformers. It samples sharper than the paper (temperature below 1, higher CFG, a greedy stage 2): "
        "short CPU runs give flat distributions. Defined in `apps/demo.py` (DemoPlan, COLOUR).\n")


def render() -> str:
    parts = [HEADER, _model_presets(), _tokenizer_presets(), _train_recipes(), _tokenizer_recipes(), _clustering(),
             _sampling(), _demo()]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
