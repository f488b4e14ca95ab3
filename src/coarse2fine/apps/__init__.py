"""Workflows built on the library: the demo, FID sampling at scale, LlamaGen import."""
