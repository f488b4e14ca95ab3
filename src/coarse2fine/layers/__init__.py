"""Pure-torch building blocks of the Llama-style transformer (no data, checkpoint or distributed imports)."""
from coarse2fine.layers.attention import Attention, KVCache
from coarse2fine.layers.blocks import FeedForward, LabelEmbedder, RMSNorm
from coarse2fine.layers.rope import apply_rope, rope_2d

__all__ = ["Attention", "KVCache", "FeedForward", "LabelEmbedder", "RMSNorm", "apply_rope", "rope_2d"]
