"""LlamaGen-compatible VQ autoencoder: images [B,3,H,W] in [-1,1] <-> codes [B,h,w] in 0..K-1.

Quantisation (as LlamaGen): the latent z and the codebook are L2-normalised, the nearest codeword by
squared L2 is picked, gradients pass straight through (z + sg(z_q - z)), and the losses are
vq = mean((z_q - sg(z))^2) and commit = beta * mean((sg(z_q) - z)^2), plus an optional entropy loss.

Dead-code re-seeding (ours, training only, off unless the trainer asks for it): a large codebook on a
small data set collapses to a few hundred live codes. `VectorQuantizer.reseed_dead_codes` replaces
every codeword that no token in the usage window chose by a randomly drawn recent (normalised)
encoder output plus a little noise, so it lands where the data is and gets picked. The draw uses a
caller-supplied torch.Generator, so it is deterministic under a seed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coarse2fine.config import UserError, VQConfig
from coarse2fine.tokenizer.blocks import Decoder, Encoder

USAGE_WINDOW = 65536  # LlamaGen's `codebook_used` buffer length: the last 65536 chosen codes
LOOKUP_ROWS = 512  # latents per distance block in VectorQuantizer.lookup


def check_images(x: torch.Tensor) -> None:
    """Images as the tokenizer takes them, float [B, 3, H, W] in [-1, 1]; uint8 or channels-last images ended in a
    convolution's RuntimeError, and 0-255 floats were encoded into codes of near-white images without a word."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"images must be a float tensor [B, 3, H, W] in [-1, 1], got {got}; bring uint8 [B, H, W, 3] "
                        "pixels to it with x.permute(0, 3, 1, 2) / 127.5 - 1")
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x))
        if lo < -1.5 or hi > 1.5:  # resampling may overshoot [-1, 1] a little; 0-255 pixels are far out
            raise UserError(f"images must be in [-1, 1], got values from {lo:.4g} to {hi:.4g}; scale 0-255 pixels "
                            "with x / 127.5 - 1")


class VectorQuantizer(nn.Module):
    """Nearest-codeword lookup with straight-through gradients. Latents are [B, D, h, w]."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, entropy_ratio: float = 0.0,
                 l2_norm: bool = True):
        super().__init__()
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.entropy_ratio, self.l2_norm = entropy_ratio, l2_norm
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        # Rolling window of recently chosen code ids (float, as in LlamaGen's state dict); -1 = empty
        # slot, so usage is not inflated by the initial fill value.
        self.register_buffer("codebook_used", torch.full((USAGE_WINDOW,), -1.0))
        self._recent_z: torch.Tensor | None = None  # last training batch's latents [N, D], for re-seeding

    def codebook(self) -> torch.Tensor:
        """The codewords used for lookup, [K, D] float32 (unit-norm rows when l2_norm)."""
        w = self.embedding.weight.float()
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Nearest codeword ids for latents [N, D] (normalised first when l2_norm) -> [N] int64."""
        if self.l2_norm:
            z_flat = F.normalize(z_flat, dim=-1)
        e = self.codebook()
        e2 = e.pow(2).sum(1)[None, :]  # [1, K]
        # ||z||^2 + ||e||^2 - 2 z.e; the argmin ignores the ||z||^2 term, kept for clarity of units.
        # LOOKUP_ROWS latents at a time: the [rows, K] distances then stay in the CPU's cache (a
        # batch's [N, K] at once was ~40% of encoding Fashion-MNIST); each row's result is the same
        return torch.cat([(z.pow(2).sum(1, keepdim=True) + e2 - 2.0 * z @ e.t()).argmin(dim=1)
                          for z in z_flat.split(LOOKUP_ROWS)]) if len(z_flat) else z_flat.new_zeros(0, dtype=torch.long)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """z [B, D, h, w] -> (z_q [B, D, h, w] straight-through, losses/metrics, codes [B, h, w])."""
        b, _, h, w = z.shape
        # distances and losses in float32: a bf16 argmin over thousands of codes is unreliable
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float().permute(0, 2, 3, 1).reshape(-1, self.dim)  # [N = B*h*w, D]
            if self.l2_norm:
                z = F.normalize(z, dim=-1)
            e = self.codebook()
            d = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None, :] - 2.0 * z @ e.t()  # [N, K]
            idx = d.argmin(dim=1)  # [N]
            z_q = e[idx]  # [N, D]
            aux: dict[str, torch.Tensor] = {}
            if self.training:
                aux["vq_loss"] = (z_q - z.detach()).pow(2).mean()
                aux["commit_loss"] = self.beta * (z_q.detach() - z).pow(2).mean()
                if self.entropy_ratio > 0:
                    aux["entropy_loss"] = self.entropy_ratio * entropy_loss(-d)
                self._record_usage(idx)
                self._recent_z = z.detach()
            counts = torch.bincount(idx, minlength=self.codebook_size).float()
            p = counts / counts.sum()
            aux["perplexity"] = torch.exp(-(p * torch.log(p + 1e-10)).sum())
            z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = z_q.reshape(b, h, w, self.dim).permute(0, 3, 1, 2).contiguous()  # [B, D, h, w]
        return z_q, aux, idx.reshape(b, h, w)

    @torch.no_grad()
    def _record_usage(self, idx: torch.Tensor) -> None:
        n = min(idx.numel(), USAGE_WINDOW)
        used = self.codebook_used
        used.copy_(torch.cat([used[n:], idx[-n:].to(used.dtype)]))

    def window_usage(self) -> float:
        """Fraction of the K codes chosen at least once in the usage window (training batches)."""
        seen = self.codebook_used[self.codebook_used >= 0]
        return torch.unique(seen).numel() / self.codebook_size if seen.numel() else 0.0

    def dead_codes(self) -> torch.Tensor:
        """Ids [M] of codes no token in the usage window chose."""
        seen = self.codebook_used[self.codebook_used >= 0].long()
        alive = torch.zeros(self.codebook_size, dtype=torch.bool, device=seen.device)
        alive[seen] = True
        return (~alive).nonzero().flatten()

    @torch.no_grad()
    def reseed_dead_codes(self, generator: torch.Generator, noise: float = 0.01) -> int:
        """Move every dead codeword onto a random recent encoder latent (+ `noise` * N(0,1), then
        normalised); returns how many were moved. Needs a training forward first (recent latents).
        `generator` must live on the CPU; the same generator state gives the same result."""
        if self._recent_z is None:
            return 0
        dead = self.dead_codes()
        if dead.numel() == 0:
            return 0
        pool = self._recent_z.cpu()
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), generator=generator)
        new = pool[pick] + noise * torch.randn(dead.numel(), self.dim, generator=generator)
        if self.l2_norm:
            new = F.normalize(new, dim=-1)
        w = self.embedding.weight
        w[dead.to(w.device)] = new.to(w.device, w.dtype)
        return int(dead.numel())


def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-token entropy minus batch-mean-distribution entropy of softmax(affinity / T); [N, K]."""
    logits = affinity / temperature
    probs = logits.softmax(-1)
    sample_entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
    avg = probs.mean(0)
    return sample_entropy + (avg * torch.log(avg + 1e-5)).sum()


class VQModel(nn.Module):
    """LlamaGen VQ model. Parameter names match LlamaGen so its checkpoints load strictly."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        common = dict(ch=cfg.ch, ch_mult=tuple(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks,
                      z_channels=cfg.z_channels, dropout=cfg.dropout, use_attn=cfg.use_attn)
        self.encoder = Encoder(**common)
        self.decoder = Decoder(**common)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.codebook_embed_dim, cfg.commit_beta,
                                        cfg.entropy_loss_ratio, cfg.codebook_l2_norm)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay (training/loop.param_groups): the codebook."""
        return {f"quantize.{name}" for name, _ in self.quantize.named_parameters()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x [B,3,H,W] in [-1,1] -> (recon [B,3,H,W], aux: losses (training), perplexity, codes [B,h,w])."""
        z_q, aux, codes = self.quantize(self.quant_conv(self.encoder(x)))
        aux["codes"] = codes
        return self.decoder(self.post_quant_conv(z_q)), aux

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] in [-1,1] -> codes LongTensor [B, h, w] (h = H / downsample)."""
        check_images(x)
        z = self.quant_conv(self.encoder(x)).float()  # [B, D, h, w]
        b, d, h, w = z.shape
        idx = self.quantize.lookup(z.permute(0, 2, 3, 1).reshape(-1, d))  # [B*h*w]
        return idx.reshape(b, h, w)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] or [B, h*w] (raster order, square grid) -> images [B,3,H,W] in ~[-1,1].
        Ids outside the codebook are refused (a negative one was read from the end, e[-1], without a word)."""
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise UserError(f"codes must be integer ids, got {codes.dtype} values; pass the codes as integers")
        k = self.cfg.codebook_size
        if codes.numel() and codes.device.type != "meta":  # meta: FLOP counting (bench.runs), no values
            lo, hi = torch.aminmax(codes)
            if int(lo) < 0 or int(hi) >= k:
                bad = codes[(codes < 0) | (codes >= k)].unique()[:4].tolist()
                raise UserError(f"codes must be in 0..{k - 1} (the ids of this tokenizer's codebook), got {bad}; "
                                "decode codes with the tokenizer that made them")
        if codes.dim() == 2:
            side = int(round(codes.shape[1] ** 0.5))
            if side * side != codes.shape[1]:
                raise ValueError(f"cannot reshape {codes.shape[1]} codes per image into a square grid")
            codes = codes.reshape(codes.shape[0], side, side)
        if codes.dim() != 3:
            raise ValueError(f"codes must be [B, h, w] or [B, h*w], got shape {tuple(codes.shape)}")
        e = self.quantize.codebook()  # [K, D]
        z_q = e[codes.long()].permute(0, 3, 1, 2).contiguous()  # [B, h, w, D] -> [B, D, h, w]
        dtype = self.post_quant_conv.weight.dtype
        return self.decoder(self.post_quant_conv(z_q.to(dtype)))

    def codebook_normalized(self) -> torch.Tensor:
        """L2-normalised codewords [K, D] float32 (what lookup and clustering use)."""
        return F.normalize(self.quantize.embedding.weight.detach().float(), dim=-1)


def codebook_fingerprint(vq: VQModel) -> str:
    """sha256 (first 16 hex chars) of the normalised codebook as little-endian float32 bytes."""
    arr = vq.codebook_normalized().cpu().contiguous().numpy().astype("<f4")
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the codebook that appears at least once in `codes` (any shape)."""
    return torch.unique(codes).numel() / codebook_size


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
