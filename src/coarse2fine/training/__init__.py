"""Training loops: the transformer stages and the VQ tokenizer, with their shared helpers."""
