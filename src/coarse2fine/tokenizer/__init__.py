"""VQ tokenizer (LlamaGen-compatible) and codebook clustering.

    vq = coarse2fine.checkpoint.load_vq("runs/tok")   # or load_llamagen_vq("vq_ds16_c2i.pt", "VQ-16")
    codes = vq.encode(images)                # [B,3,H,W] in [-1,1] -> LongTensor [B,h,w]
    images = vq.decode_codes(codes)          # -> [B,3,H,W] in ~[-1,1]
"""
from coarse2fine.tokenizer.vq import VQModel, VectorQuantizer, codebook_fingerprint, codebook_usage

__all__ = ["VQModel", "VectorQuantizer", "codebook_fingerprint", "codebook_usage"]
