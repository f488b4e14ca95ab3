"""Dataclass configs and named presets.

Every run directory and checkpoint carries its resolved config as JSON, so sampling and resuming
never ask the user to re-type model flags.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any


class UserError(ValueError):
    """An input problem the user can fix: the CLI prints it as one line, without a traceback."""


class ConfigError(UserError):
    """A configuration problem (unknown preset or field, missing or corrupt config.json)."""


@dataclass
class VQConfig:
    """LlamaGen VQ autoencoder. ch_mult with n levels downsamples by 2**(n-1)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    commit_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    dropout: float = 0.0
    image_size: int = 256
    # attention blocks in the lowest-resolution level/decoder first block (LlamaGen: 2 enc, 3 dec)
    use_attn: bool = True

    def __post_init__(self) -> None:
        check_codebook_size(self.codebook_size)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


@dataclass
class GPTConfig:
    """Llama-style transformer (LlamaGen GPT). vocab_size is K (fine) or C (coarse)."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 16384
    num_classes: int = 1000
    grid: int = 16  # image tokens = grid * grid
    causal: bool = True
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    token_dropout_p: float = 0.1
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    class_dropout_prob: float = 0.1
    # stage 2 only: vocabulary of the input (coarse) tokens; 0 means input vocab == vocab_size
    input_vocab_size: int = 0

    def __post_init__(self) -> None:
        """Sizes the network can be built with, checked where the config is made (gpt_config overrides, an
        edited config.json): a head count that does not divide dim was an AssertionError inside the
        attention layer, a head size the 2-D RoPE cannot split a ValueError, n_head 0 a ZeroDivisionError."""
        sizes = {k: getattr(self, k) for k in ("dim", "n_layer", "n_head", "vocab_size", "num_classes", "grid")}
        if not all(isinstance(v, int) for v in sizes.values()):
            return  # a value of the wrong type: from_dict names it; the network's own error otherwise
        small = [f"{k} {v}" for k, v in sizes.items() if v < 1]
        if small:
            raise ConfigError(f"GPTConfig {', '.join(small)}: every size must be 1 or more")
        if self.dim % self.n_head or self.head_dim % 4:
            fits = [h for h in range(1, self.dim + 1) if self.dim % h == 0 and (self.dim // h) % 4 == 0]
            near = min(fits, key=lambda h: (abs(h - self.n_head), h)) if fits else None
            raise ConfigError(f"GPTConfig dim {self.dim} with n_head {self.n_head}: each head must get a whole "
                              "number of channels, a multiple of 4 for the 2-D RoPE (dim / n_head = "
                              f"{self.dim / self.n_head:g}); "
                              + (f"use n_head {near} (head size {self.dim // near})" if near
                                 else "use a dim that is a multiple of 4"))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        m = self.multiple_of
        return m * ((hidden + m - 1) // m)


# torch.compile modes of the AR decode step (sample --compile MODE, Pipeline.compile_mode, generate_ar)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

MAX_CODEBOOK = 16384  # LlamaGen's largest codebook: --codebook-size goes up to it


def check_codebook_size(k: int, name: str = "codebook size") -> None:
    """The one range check of K (VQConfig runs it on every construction; the CLI names its flag)."""
    if not 2 <= k <= MAX_CODEBOOK:
        raise ConfigError(f"{name} {k}: choose 2 to {MAX_CODEBOOK} (LlamaGen's largest)")

VQ_PRESETS: dict[str, dict[str, Any]] = {
    "VQ-16": dict(ch_mult=(1, 1, 2, 2, 4), image_size=256),
    "VQ-8": dict(ch_mult=(1, 2, 2, 4), image_size=256),
    # CPU presets: 32x32 images -> 8x8 codes. VQ-tiny (0.75M params, ~0.25 CPU-s per batch-32 step
    # with bf16) reaches 27 dB test PSNR on the embedded data in 1200 steps; attention is off: it
    # costs ~17% per step and the target is met without it. VQ-small keeps it (~4x the compute).
    "VQ-tiny": dict(codebook_size=4096, codebook_embed_dim=8, ch=16, ch_mult=(1, 2, 4),
                    z_channels=64, num_res_blocks=1, image_size=32, use_attn=False),
    "VQ-small": dict(codebook_size=4096, codebook_embed_dim=8, ch=32, ch_mult=(1, 2, 4),
                     z_channels=128, num_res_blocks=1, image_size=32, use_attn=True),
    # 64x64 colour presets (emoji64): VQ-64-f8 gives 8x8 codes (the transformers then cost what they cost
    # on 32 px data), VQ-64-f4 16x16 codes (the paper's token grid). VQ-tiny's widths, one more level for
    # f8; measured ~1.0 and ~1.7 CPU-s per batch-32 training step on one AVX2 thread, fp32 (L2 only).
    # The codebook size is a flag (--codebook-size, up to LlamaGen's 16384).
    "VQ-64-f8": dict(codebook_size=4096, codebook_embed_dim=8, ch=16, ch_mult=(1, 2, 2, 4),
                     z_channels=64, num_res_blocks=1, image_size=64, use_attn=False),
    "VQ-64-f4": dict(codebook_size=4096, codebook_embed_dim=8, ch=16, ch_mult=(1, 2, 4),
                     z_channels=64, num_res_blocks=1, image_size=64, use_attn=False),
}

GPT_PRESETS: dict[str, dict[str, Any]] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    # CPU presets (head_dim 64 like LlamaGen), 8x8 token grids.
    "GPT-tiny": dict(n_layer=2, n_head=2, dim=128, grid=8, num_classes=10),
    "GPT-small": dict(n_layer=4, n_head=4, dim=256, grid=8, num_classes=10),
    "GPT-medium": dict(n_layer=8, n_head=6, dim=384, grid=8, num_classes=10),
}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field annotated `hint` (int, float, bool, str, tuple[X, ...],
    X | None). Numbers are checked as JSON has them: an int is a float, a bool is neither."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, numbers.Integral if hint is int else numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    return True


def _kind_of(hint: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, "a list" if typing.get_origin(hint) is tuple else str(hint).replace("NoneType", "null"))


def _coerce(cls, data: dict[str, Any], source: str | None = None):
    """Build dataclass `cls` from a dict, rejecting a non-object, unknown keys and values of the wrong
    type (each named, with where it came from), and restoring tuples."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}the {cls.__name__} settings must be a JSON object of fields, got "
                          f"{type(data).__name__} {data!r:.60}; re-create the file or restore it from a backup")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}unknown {cls.__name__} field(s) {unknown}; valid: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    bad = [f"{k} must be {_kind_of(hints[k])}, got {v!r}" for k, v in data.items() if not _fits(v, hints[k])]
    if bad:
        raise ConfigError(f"{where}{cls.__name__} {'; '.join(bad)}; correct the value or restore the file from a "
                          "backup")
    out = {}
    for k, v in data.items():
        if isinstance(v, list):
            v = tuple(v)
        out[k] = v
    try:
        return cls(**out)
    except ConfigError as e:  # a range check of the config itself (__post_init__): name the file it came from
        if not where:
            raise
        raise ConfigError(f"{where}{e}") from None


def vq_config(preset: str, **overrides) -> VQConfig:
    if preset not in VQ_PRESETS:
        raise ConfigError(f"unknown tokenizer preset {preset!r}; choose one of {sorted(VQ_PRESETS)}")
    return _coerce(VQConfig, {**VQ_PRESETS[preset], **overrides})


def gpt_config(preset: str, **overrides) -> GPTConfig:
    if preset not in GPT_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {sorted(GPT_PRESETS)}")
    return _coerce(GPTConfig, {**GPT_PRESETS[preset], **overrides})


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict[str, Any], source: str | None = None):
    """`cls` from a dict (a config.json section): unknown fields and values of the wrong type are a
    ConfigError naming them (and `source`, the file they came from)."""
    return _coerce(cls, data, source)


def optimiser_errors(cfg) -> list[str]:
    """The settings TrainConfig and TokenizerTrainConfig share, checked from Python as the CLI's flags check them
    (positive_float --lr, positive_int --log-every, ...): each field of its type first (steps=2.5 trained without
    ever saving weights), then the ranges (log_every=0 was a ZeroDivisionError, lr=nan torch's "Invalid learning
    rate" of the scaled rate, weight_decay=-1 or min_lr_ratio=5 trained on without a word)."""
    hints = typing.get_type_hints(type(cfg))
    bad = [f"{f.name} must be {_kind_of(hints[f.name])}, got {getattr(cfg, f.name)!r}" for f in fields(cfg)
           if not _fits(getattr(cfg, f.name), hints[f.name])]
    if bad:
        return bad
    ranges = {"lr": (cfg.lr > 0, "a finite number > 0"),
              "weight_decay": (cfg.weight_decay >= 0, "a finite number >= 0"),
              "grad_clip": (cfg.grad_clip >= 0, "a finite number >= 0 (0 = off)"),
              "min_lr_ratio": (0 <= cfg.min_lr_ratio <= 1, "in [0, 1]"),
              "beta1": (0 <= cfg.beta1 < 1, "in [0, 1)"), "beta2": (0 <= cfg.beta2 < 1, "in [0, 1)"),
              "warmup_steps": (cfg.warmup_steps >= 0, "an integer >= 0"),
              "log_every": (cfg.log_every >= 1, "an integer >= 1"),
              "ckpt_every": (cfg.ckpt_every >= 1, "an integer >= 1"),
              "seed": (0 <= cfg.seed < 2 ** 63, f"an integer from 0 to {2 ** 63 - 1}")}
    return [f"{k} must be {want}, got {getattr(cfg, k)!r}" for k, (ok, want) in ranges.items()
            if not ok or not math.isfinite(getattr(cfg, k))]


# fields removed from the configs (they did nothing); runs written before still resume
RETIRED_FIELDS = ("sample_every",)


def run_settings(cls, saved: dict[str, Any], source: str):
    """The settings dataclass `cls` (TrainConfig, TokenizerTrainConfig) of a run's config.json "train"
    section, upgraded from older field names, each value's type checked (ConfigError naming `source`)."""
    if hasattr(cls, "upgrade"):
        saved = cls.upgrade(saved)
    return from_dict(cls, {k: v for k, v in saved.items() if k not in RETIRED_FIELDS}, source)


@dataclass
class TrainConfig:
    """Optimisation settings shared by the coarse, fine and baseline models.

    The defaults ARE the "llamagen" recipe (see TRAIN_RECIPES): TrainConfig(steps=n) equals
    TrainConfig(**train_recipe("GPT-B", n)). For another preset's recipe, start from train_recipe(preset, n).
    lr is given per global batch of 256 (LlamaGen's convention) and scaled linearly by
    batch_size / 256. batch_size is the global batch: split over processes and accumulation steps.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    schedule: str = "constant"  # "constant" | "cosine"
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.0  # 0 disables EMA
    dtype: str = "auto"  # "auto" | "fp32" | "bf16" (precision.DTYPES)
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    eval_every: int = 0
    fsdp: bool = False
    # IAR (arXiv 2501.00880), baseline stage only: loss = CE_fine + w * CE_cluster, the cluster logit
    # being the logsumexp of its members' logits; needs a coarse map. 0 = off (plain baseline)
    cluster_loss_weight: float = 0.0
    # which recipe (train_recipe) the defaults came from; provenance only, the values above are what runs
    recipe: str = "llamagen"

    @staticmethod
    def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
        """Settings written before the precision had one spelling: `precision` -> dtype."""
        d = dict(saved)
        if "precision" in d:
            d["dtype"] = d.pop("precision")
        return d

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256

    def validate(self) -> None:
        bad = optimiser_errors(self)
        if bad or self.eval_every < 0:
            raise ConfigError("TrainConfig " + "; ".join(bad or [f"eval_every must be an integer >= 0, got "
                                                                 f"{self.eval_every}"]))
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("steps, batch size and grad accumulation must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema decay must be in [0, 1), got {self.ema_decay}")
        if not self.cluster_loss_weight >= 0:
            raise ConfigError(f"cluster loss weight must be >= 0, got {self.cluster_loss_weight}")


# Training recipes, chosen by the model preset. "cpu" (GPT-tiny/small/medium) is the measured small-model
# recipe of the demo and the quality study: lr 4e-3 per batch 256 (1e-3 at batch 64), 5% linear warmup,
# cosine decay. LlamaGen's ImageNet recipe (lr 1e-4 per 256, constant, no warmup) left GPT-tiny near chance
# after 400 steps on a 1.5k-image folder (baseline loss 8.04 vs ln 4096 = 8.32), where the "cpu" recipe
# trains. "llamagen" (GPT-B and larger) is LlamaGen's c2i recipe: batch 256, lr 1e-4, constant, wd 0.05,
# AdamW 0.9/0.95, clip 1.0 -- the TrainConfig defaults themselves, so it lists nothing but its warm-up.
# warmup_frac: the warm-up as a fraction of the run's steps, rounded (train_recipe).
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "cpu": dict(steps=1000, batch_size=64, lr=4e-3, schedule="cosine", warmup_frac=0.05),
    "llamagen": dict(warmup_frac=0.0),
}
CPU_PRESETS = ("GPT-tiny", "GPT-small", "GPT-medium")


def train_recipe(preset: str, steps: int | None = None) -> dict[str, Any]:
    """TrainConfig fields of the preset's recipe run for `steps` (default: the recipe's own step count),
    its warm-up that fraction of them, with "recipe" naming it. The one route from a preset to its
    optimisation settings: the CLI (training.plan), the demo and the studies call it; settings given
    explicitly override these."""
    if preset not in GPT_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {sorted(GPT_PRESETS)}")
    name = "cpu" if preset in CPU_PRESETS else "llamagen"
    r = {k: getattr(TrainConfig, k) for k in ("batch_size", "lr", "schedule", "weight_decay")}  # what recipes set
    r.update(TRAIN_RECIPES[name])
    frac = r.pop("warmup_frac")
    n = steps or r.get("steps") or TrainConfig.steps
    return {**r, "steps": n, "warmup_steps": int(round(frac * n)), "recipe": name}


DISC_LOSSES = ("hinge", "vanilla", "non-saturating")  # the discriminator's side of the GAN loss
GEN_LOSSES = ("hinge", "non-saturating")  # the generator's (tokenizer's) side


@dataclass
class TokenizerTrainConfig:
    """Optimisation settings of a tokenizer run (stored under "train" in config.json). The defaults are
    the "cpu" recipe; `tokenizer_recipe` gives each preset's. Loss = recon_weight * L1/L2
    + VQ + commitment (+ entropy, VQConfig) + perceptual_weight * perceptual
    + disc_weight * [adaptive] * adversarial (from step disc_start)."""

    # defaults tuned for the CPU presets on 32x32 data (LlamaGen's VQ-16 used lr 1e-4, batch 128)
    steps: int = 1200
    batch_size: int = 32            # global batch (split across ranks)
    lr: float = 2e-3
    warmup_steps: int = 100         # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0       # AdamW decay on conv weights only (never on the codebook)
    grad_clip: float = 1.0
    recon_loss: str = "l2"          # "l1" or "l2" on [-1, 1] pixels
    recon_weight: float = 1.0
    # perceptual loss on EfficientNet-Lite2 features (tokenizer/perceptual.py); 0 = off
    perceptual_weight: float = 0.0
    perceptual_depth: int = 5       # how many of Lite2's five taps, shallowest first (1: stride 2 only)
    perceptual_ramp: int = 0        # steps over which the perceptual weight rises linearly from 0
    # squared error of each 8x8 grid cell's mean colour (the images average-pooled to 8x8): a colour term
    # the perceptual features cannot trade away; 0 = off
    colour_weight: float = 0.0
    # PatchGAN discriminator (tokenizer/discriminator.py); disc_weight 0 = off
    disc_weight: float = 0.0
    disc_start: int = 0             # first step of the adversarial terms (the discriminator trains from it)
    disc_loss: str = "hinge"        # "hinge" | "vanilla" | "non-saturating"
    gen_adv_loss: str = "hinge"     # the generator's side: "hinge" | "non-saturating"
    disc_adaptive: bool = False     # VQGAN's gradient-norm ratio at the decoder's last layer
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr: float = 0.0            # 0: the tokenizer's lr (and its schedule)
    ema_decay: float = 0.999        # 0 disables EMA; the average warms up over the first steps
    dtype: str = "auto"             # "auto" | "fp32" | "bf16" autocast of the conv stack (quantizer in fp32)
    flip: bool = True               # random horizontal flips
    seed: int = 0
    reseed_dead: bool = True        # move unused codewords onto recent encoder latents
    reseed_every: int = 25          # steps between re-seeds
    reseed_until: float = 0.8       # stop re-seeding after this fraction of `steps` so codes settle
    reseed_noise: float = 0.01
    log_every: int = 25
    ckpt_every: int = 500
    recipe: str = "custom"          # which tokenizer_recipe the defaults came from (provenance only)

    @staticmethod
    def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
        """Settings written before the flags were unified: `ema` (bool) -> ema_decay 0, `bf16` and then
        `precision` -> dtype."""
        d = dict(saved)
        if "ema" in d and not d.pop("ema"):
            d["ema_decay"] = 0.0
        if "bf16" in d:
            bf16 = d.pop("bf16")
            d["dtype"] = "auto" if bf16 is None else ("bf16" if bf16 else "fp32")
        if "precision" in d:
            d["dtype"] = d.pop("precision")
        return d

    def validate(self) -> None:
        typed = optimiser_errors(self)
        if typed:
            raise ConfigError(f"TokenizerTrainConfig {'; '.join(typed)}")
        checks = [(self.recon_loss in ("l1", "l2"), f"recon loss must be l1 or l2, got {self.recon_loss!r}"),
                  (self.dtype in ("auto", "fp32", "bf16"), f"dtype must be auto, fp32 or bf16, got {self.dtype!r}"),
                  (self.disc_loss in DISC_LOSSES, f"disc loss must be one of {DISC_LOSSES}, got {self.disc_loss!r}"),
                  (self.gen_adv_loss in GEN_LOSSES, f"gen adv loss must be one of {GEN_LOSSES}, got {self.gen_adv_loss!r}"),
                  (0 <= self.ema_decay < 1, f"ema decay must be in [0, 1), got {self.ema_decay}"),
                  (min(self.recon_weight, self.perceptual_weight, self.disc_weight, self.disc_lr,
                       self.colour_weight, self.perceptual_ramp) >= 0,
                   "loss weights, the perceptual ramp and the discriminator lr must be >= 0"),
                  (1 <= self.perceptual_depth <= 5, f"perceptual depth must be 1..5, got {self.perceptual_depth}"),
                  (self.steps >= 1 and self.batch_size >= 1, "steps and batch size must be >= 1")]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ConfigError("; ".join(bad))


# Tokenizer recipes by preset. "cpu" = the TokenizerTrainConfig defaults (VQ-tiny/VQ-small on 32 px data:
# 27 dB test PSNR on the embedded set in 1200 steps). "llamagen" = LlamaGen's VQ-16/VQ-8 recipe
# (tokenizer/tokenizer_image/vq_train.py, vq_loss.py): batch 128, AdamW lr 1e-4 constant, betas 0.9/0.95,
# wd 0.05, L2 + perceptual 1.0 + PatchGAN hinge 0.5 from step 20000, no adaptive weight, no EMA.
TOKENIZER_RECIPES: dict[str, dict[str, Any]] = {
    "cpu": {},
    "llamagen": dict(batch_size=128, lr=1e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.05,
                     perceptual_weight=1.0, disc_weight=0.5, disc_start=20000, disc_loss="hinge",
                     gen_adv_loss="hinge", disc_adaptive=False, ema_decay=0.0),
    # the 64 px presets on CPU, chosen on emoji64 by PSNR, reconstruction FD AND a colour error (ΔE of the
    # 8x8-pooled images; benchmarks/results/tokenizer_emoji64_colour, 800 steps): perceptual 1.0 on all five
    # Lite2 taps had the lowest FD (1008) but turned every colour brown (ΔE 19.8 against L2's 10.2, 15.3 dB);
    # 0.3 on the two shallow taps, ramped in over 200 steps, with the mean-colour term keeps L2's colours
    # (ΔE 10.3) and sharpens shapes (FD 1482 against 1611, two seeds) for 0.5 dB of PSNR. The PatchGAN (0.5 from step
    # 300) hurt at this budget (benchmarks/results/tokenizer_emoji64), so it is off (--disc-weight 0.5).
    "cpu64": dict(batch_size=16, perceptual_weight=0.3, perceptual_depth=2, perceptual_ramp=200, colour_weight=1.0,
                  disc_weight=0.0, disc_start=300, disc_channels=32),
}
TOKENIZER_RECIPE_OF = {"VQ-16": "llamagen", "VQ-8": "llamagen", "VQ-64-f8": "cpu64", "VQ-64-f4": "cpu64"}


def tokenizer_recipe(preset: str) -> dict[str, Any]:
    """TokenizerTrainConfig fields of the preset's recipe, "recipe" naming it (flags given override them)."""
    name = TOKENIZER_RECIPE_OF.get(preset, "cpu")
    return {**TOKENIZER_RECIPES[name], "recipe": name}
