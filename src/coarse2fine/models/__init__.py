"""The transformer network. Which vocabularies and attention direction each stage gives it is the
stage's business (coarse2fine.stages.STAGE_SPECS), not the model's."""
from __future__ import annotations

from coarse2fine.models.transformer import Transformer, count_params

__all__ = ["Transformer", "count_params"]
