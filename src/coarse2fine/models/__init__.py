"""Transformers for the three uses: baseline (causal, K), coarse (causal, C), fine (bidirectional, C -> K)."""
from __future__ import annotations

from coarse2fine.config import GPTConfig, gpt_config
from coarse2fine.models.transformer import Transformer, count_params

STAGES = ("coarse", "fine", "baseline")


def stage_config(preset: str, stage: str, codebook_size: int, num_coarse: int, num_classes: int,
                 grid: int, **overrides) -> GPTConfig:
    """Resolve a preset for a stage: vocabularies and attention direction follow from the stage."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    if stage == "baseline":
        kw = dict(vocab_size=codebook_size, causal=True)
    elif stage == "coarse":
        kw = dict(vocab_size=num_coarse, causal=True)
    else:
        kw = dict(vocab_size=codebook_size, input_vocab_size=num_coarse, causal=False)
    kw.update(num_classes=num_classes, grid=grid)
    kw.update(overrides)
    return gpt_config(preset, **kw)


__all__ = ["Transformer", "count_params", "stage_config", "STAGES"]
