"""Sampling pipelines loaded from run directories: CTF (stage 1 + stage 2 + VQ decode) and the
plain AR baseline (LlamaGen), with the same knobs and outputs.

    pipe = CTFPipeline.from_runs("runs/coarse", "runs/fine")       # tokenizer found via the runs
    out = pipe(torch.tensor([0, 1, 2]), seed=0)                     # out.images: uint8 [B, H, W, 3]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coarse2fine.config import UserError
from coarse2fine.data.preprocess import to_uint8
from coarse2fine.sampling import (FINE_DECODINGS, StageSampling, centroid_members, check_fine_decoding, check_labels,
                                  generate_ar, generate_fine, random_member)
from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint
from coarse2fine.checkpoint import load_vq
from coarse2fine.checkpoint import load_run

# Paper defaults (Sec. 5.1): cfg 2.0, temperature 1.1 in both stages, top-k all.
CTF_COARSE_DEFAULT = StageSampling(temperature=1.1, cfg_scale=2.0)
CTF_FINE_DEFAULT = StageSampling(temperature=1.1)
BASELINE_DEFAULT = StageSampling(temperature=1.0, cfg_scale=2.0)


@dataclass
class SampleOutput:
    images: torch.Tensor  # uint8 [B, H, W, 3]
    codes: torch.Tensor  # [B, N] fine codes
    labels: torch.Tensor  # [B]
    coarse: torch.Tensor | None = None  # [B, N] (CTF only)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part


def _tokenizer_dir(meta: dict, override: str | Path | None) -> Path:
    if override is not None:
        return Path(override)
    tok = meta.get("codes", {}).get("tokenizer_dir")
    if not tok:
        raise UserError("the run does not record its tokenizer; pass --tokenizer")
    return Path(tok)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@torch.no_grad()
def decode(vq: VQModel, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """codes [B, N] -> uint8 images [B, H, W, 3], decoded in batches."""
    parts = [to_uint8(vq.decode_codes(codes[i:i + batch_size])) for i in range(0, len(codes), batch_size)]
    return torch.cat(parts).permute(0, 2, 3, 1).cpu()  # [B, 3, H, W] -> [B, H, W, 3]


class CTFPipeline:
    """Stage 1 (coarse labels, KV-cache AR with CFG) -> stage 2 (all fine codes in one step) -> VQ decode.

    fine_model may be None: then only the decodings that need no stage-2 network are available
    ("random-member", "centroid-member"; see sampling.FINE_DECODINGS)."""

    def __init__(self, vq: VQModel, coarse_model, fine_model, cmap: CoarseMap, restricted: bool = False,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.vq, self.coarse_model, self.fine_model = vq.to(self.device).eval(), coarse_model, fine_model
        self.cmap, self.restricted, self.dtype = cmap, restricted, dtype
        cmap.check_fingerprint(codebook_fingerprint(vq))
        if coarse_model.cfg.vocab_size != cmap.num_coarse:
            raise UserError(f"stage-1 model predicts {coarse_model.cfg.vocab_size} coarse labels, the coarse map has "
                            f"{cmap.num_coarse}; use runs trained on the same coarse map")
        if fine_model is not None:
            if fine_model.cfg.input_vocab_size != cmap.num_coarse or fine_model.cfg.vocab_size != cmap.num_codes:
                raise UserError("the stage-2 model does not match the coarse map/tokenizer; use runs trained on the "
                                "same codes")
            if coarse_model.cfg.seq_len != fine_model.cfg.seq_len:
                raise UserError("stage-1 and stage-2 models were trained for different token grids")
        self.members = cmap.members.to(self.device)
        self.num_classes = coarse_model.cfg.num_classes
        self._centroid_codes: torch.Tensor | None = None

    @classmethod
    def from_runs(cls, coarse_dir, fine_dir=None, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        """fine_dir None: stage 1 only, for the decodings without a stage-2 network."""
        coarse_model, cmeta = load_run(coarse_dir, "coarse", device)
        cmap = CoarseMap.load(Path(coarse_dir) / "coarse_map.safetensors")
        fine_model, restricted = None, False
        if fine_dir is not None:
            fine_model, fmeta = load_run(fine_dir, "fine", device)
            fine_map = CoarseMap.load(Path(fine_dir) / "coarse_map.safetensors")
            if not torch.equal(cmap.phi, fine_map.phi):
                raise UserError(f"{coarse_dir} and {fine_dir} were trained on different coarse maps; retrain one of them")
            restricted = bool(fmeta.get("restricted"))
        vq = load_vq(_tokenizer_dir(cmeta, tokenizer_dir))
        return cls(vq, coarse_model, fine_model, cmap, restricted=restricted, device=device, dtype=dtype)

    @property
    def decodings(self) -> tuple[str, ...]:
        """The stage-2 decodings this pipeline can run (all of them when it has a stage-2 network)."""
        return FINE_DECODINGS if self.fine_model is not None else FINE_DECODINGS[1:]

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, coarse_opts: StageSampling = CTF_COARSE_DEFAULT,
                 fine_opts: StageSampling = CTF_FINE_DEFAULT, seed: int | None = 0,
                 decode_images: bool = True, fine_decoding: str = "network") -> SampleOutput:
        """labels [B] -> SampleOutput. fine_decoding: one of sampling.FINE_DECODINGS."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        check_labels(labels, self.num_classes)
        coarse_opts.validate(self.coarse_model.cfg.vocab_size, "stage-1")
        self._check_decoding(fine_decoding, fine_opts)
        gen = _generator(seed, self.device)
        t0 = time.perf_counter()
        coarse = generate_ar(self.coarse_model, labels, coarse_opts, gen, self.dtype)
        _sync(self.device)
        stage1_s = time.perf_counter() - t0
        out = self._details(coarse, labels, fine_opts, gen, decode_images, fine_decoding)
        out.timings = {"stage1_s": stage1_s, **out.timings}
        return out

    @torch.no_grad()
    def redraw(self, coarse: torch.Tensor, labels: torch.Tensor, fine_opts: StageSampling = CTF_FINE_DEFAULT,
               seed: int | None = 0, decode_images: bool = True, fine_decoding: str = "network") -> SampleOutput:
        """Stage 2 (+ decode) only, on given coarse maps [B, N]: new details, the same structure."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        check_labels(labels, self.num_classes)
        coarse = torch.as_tensor(coarse, dtype=torch.long, device=self.device)
        if coarse.dim() != 2 or coarse.size(1) != self.coarse_model.cfg.seq_len or coarse.size(0) != labels.numel():
            raise UserError(f"coarse maps must be [B, {self.coarse_model.cfg.seq_len}] with one label per row")
        if coarse.min() < 0 or coarse.max() >= self.cmap.num_coarse:
            raise UserError(f"coarse labels must be in 0..{self.cmap.num_coarse - 1}")
        self._check_decoding(fine_decoding, fine_opts)
        return self._details(coarse, labels, fine_opts, _generator(seed, self.device), decode_images, fine_decoding)

    def _check_decoding(self, fine_decoding: str, fine_opts: StageSampling) -> None:
        check_fine_decoding(fine_decoding)
        if fine_decoding == "network":
            if self.fine_model is None:
                raise UserError("this pipeline has no stage-2 model; load one (--fine) or pick --fine-decoding "
                                "random-member or centroid-member")
            fine_opts.validate(self.fine_model.cfg.vocab_size, "stage-2")

    def _details(self, coarse, labels, fine_opts, gen, decode_images: bool, fine_decoding: str) -> SampleOutput:
        t = {}
        t0 = time.perf_counter()
        if fine_decoding == "network":
            codes = generate_fine(self.fine_model, coarse, labels, fine_opts, gen,
                                  self.members if self.restricted else None, self.dtype)
        elif fine_decoding == "random-member":
            codes = random_member(coarse, self.members, self.cmap.sizes, gen)
        else:
            if self._centroid_codes is None:
                self._centroid_codes = centroid_members(self.cmap.members, self.cmap.centroids,
                                                        self.vq.quantize.codebook().detach().cpu()).to(self.device)
            codes = self._centroid_codes[coarse]
        _sync(self.device)
        t["stage2_s"] = time.perf_counter() - t0
        images = torch.empty(0)
        if decode_images:
            t0 = time.perf_counter()
            images = decode(self.vq, codes)
            t["decode_s"] = time.perf_counter() - t0
        return SampleOutput(images, codes.cpu(), labels.cpu(), coarse.cpu(), t)


class ARPipeline:
    """The plain LlamaGen baseline: one causal model over the K fine codes."""

    def __init__(self, vq: VQModel, model, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.vq, self.model, self.dtype = vq.to(self.device).eval(), model, dtype
        if model.cfg.vocab_size != vq.cfg.codebook_size:
            raise UserError(f"baseline predicts {model.cfg.vocab_size} codes but the tokenizer has "
                            f"{vq.cfg.codebook_size}; pass the tokenizer the model was trained with")
        self.num_classes = model.cfg.num_classes

    @classmethod
    def from_runs(cls, baseline_dir, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        model, meta = load_run(baseline_dir, "baseline", device)
        return cls(load_vq(_tokenizer_dir(meta, tokenizer_dir)), model, device, dtype)

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, opts: StageSampling = BASELINE_DEFAULT, seed: int | None = 0,
                 decode_images: bool = True) -> SampleOutput:
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        check_labels(labels, self.num_classes)
        gen = _generator(seed, self.device)
        t0 = time.perf_counter()
        codes = generate_ar(self.model, labels, opts, gen, self.dtype)
        _sync(self.device)
        t = {"stage1_s": time.perf_counter() - t0}
        images = torch.empty(0)
        if decode_images:
            t0 = time.perf_counter()
            images = decode(self.vq, codes)
            t["decode_s"] = time.perf_counter() - t0
        return SampleOutput(images, codes.cpu(), labels.cpu(), None, t)


def save_samples(images: torch.Tensor, labels: torch.Tensor, out: str | Path, nrow: int = 8) -> None:
    """PNGs named {index:06d}_c{label}.png, grid.png, and samples.npz (arr_0 uint8 [N, H, W, 3] as
    the ADM evaluator reads it, plus labels int64 [N])."""
    import io

    import numpy as np
    from PIL import Image

    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.fileio import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arr = images.numpy()
    for i, (img, lab) in enumerate(zip(arr, labels.tolist())):
        Image.fromarray(img).save(out / f"{i:06d}_c{lab}.png")
    save_grid(arr, out / "grid.png", nrow=nrow)
    buf = io.BytesIO()
    np.savez(buf, arr_0=arr, labels=labels.numpy())
    atomic_write_bytes(out / "samples.npz", buf.getvalue())
