"""coarse2fine: autoregressive image generation with coarse-to-fine token prediction (CTF)."""

__version__ = "0.1.0"
