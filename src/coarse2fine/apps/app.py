"""The interactive page's model side, without a browser: pick a class, sample the coarse map (stage 1),
then the image (stage 2 + decode); redraw the details (stage 2 only) on the same coarse maps.

    ex = Explorer.from_runs("runs/demo/coarse", "runs/demo/fine", "runs/demo/baseline")
    res = ex.generate(Knobs(class_name="Sneaker", n=4, seed=0))   # res.coarse [B, N], res.images [B, H, W, 3]
    res2 = ex.redraw(res)                                          # same res2.coarse, new codes/images

The Gradio layout (apps/app_page.py) only turns these results into HTML; everything testable is here.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from coarse2fine.config import UserError
from coarse2fine.fileio import load_json
from coarse2fine.pipeline import ARPipeline, CTFPipeline
from coarse2fine.data.sample_folder import decode_images
from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, FINE_DECODINGS, StageSampling

MAX_IMAGES = 32

Progress = Callable[[float, str], None]


@dataclass
class Knobs:
    """What the page asks for. Stage-1 knobs also drive the baseline (same class, seed, CFG and filters); the
    baseline's temperature is its own. Defaults: sampling.py's."""

    class_name: str = ""
    n: int = 4
    seed: int = 0
    cfg: float = CTF_COARSE_DEFAULT.cfg_scale
    temperature1: float = CTF_COARSE_DEFAULT.temperature
    top_k1: int = CTF_COARSE_DEFAULT.top_k
    top_p1: float = CTF_COARSE_DEFAULT.top_p
    temperature2: float = CTF_FINE_DEFAULT.temperature
    top_k2: int = CTF_FINE_DEFAULT.top_k
    decoding: str = "network"
    temperature_baseline: float = BASELINE_DEFAULT.temperature  # LlamaGen's, not stage 1's

    def stage1(self) -> StageSampling:
        return StageSampling(temperature=float(self.temperature1), top_k=int(self.top_k1), top_p=float(self.top_p1),
                             cfg_scale=float(self.cfg))

    def baseline(self) -> StageSampling:
        """The baseline shares stage 1's CFG and filters; its temperature is its own (LlamaGen's 1.0)."""
        return StageSampling(temperature=float(self.temperature_baseline), top_k=int(self.top_k1),
                             top_p=float(self.top_p1), cfg_scale=float(self.cfg))

    def stage2(self) -> StageSampling:
        return StageSampling(temperature=float(self.temperature2), top_k=int(self.top_k2))


@dataclass
class Result:
    knobs: Knobs
    labels: torch.Tensor  # [B]
    coarse: torch.Tensor  # [B, N] cluster ids
    codes: torch.Tensor  # [B, N] fine ids
    images: np.ndarray  # uint8 [B, H, W, 3]
    coarse_images: np.ndarray  # uint8 [B, H, W, 3], each cluster in its colour
    baseline: np.ndarray | None  # uint8 [B, H, W, 3] or None without a baseline run
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    redraws: int = 0


def _whole(value, name: str, lo: int, hi: int | None = None) -> int:
    """Page numbers arrive as floats (or None when a box is emptied); refuse what is not a whole number (from
    Python nan, inf or a string was int()'s ValueError or OverflowError)."""
    try:
        whole = math.isfinite(float(value)) and float(value) == int(float(value))
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise UserError(f"{name} must be a whole number, got {value}")
    v = int(float(value))
    if v < lo or (hi is not None and v > hi):
        raise UserError(f"{name} must be in {lo}..{hi if hi is not None else 'any'}, got {v}")
    return v


def _no_progress(frac: float, desc: str) -> None:
    return None


class Explorer:
    """A CTF pipeline (+ optional baseline) with class names and a colour per coarse cluster."""

    def __init__(self, pipe: CTFPipeline, baseline: ARPipeline | None = None, class_names: list[str] | None = None):
        self.pipe, self.baseline = pipe, baseline
        n = pipe.num_classes
        names = list(class_names or [])
        self.class_names = names if len(names) == n else [f"class {i}" for i in range(n)]
        if baseline is not None and baseline.num_classes != n:
            raise UserError(f"the baseline run has {baseline.num_classes} classes, the CTF runs {n}; "
                            "pass a baseline trained on the same data")
        self._colors: torch.Tensor | None = None

    # ---- loading --------------------------------------------------------------------------------

    @classmethod
    def from_runs(cls, coarse, fine, baseline=None, device: str = "cpu") -> "Explorer":
        pipe = CTFPipeline.from_runs(coarse, fine, device=device)
        base = ARPipeline.from_runs(baseline, device=device) if baseline else None
        # the run records its code store's meta; read from where the pipeline found it ("~" expanded: from Python
        # no shell did it, and Path("~/runs/coarse") was "missing" after the runs had loaded)
        meta = load_json(pipe.sources["stage1"] / "config.json")
        names = meta.get("codes", {}).get("classes")
        if base is not None:  # the same class count is not the same data (was: shown side by side without a word)
            base_names = (load_json(base.sources["baseline"] / "config.json").get("codes") or {}).get("classes")
            if names and base_names and base_names != names:
                raise UserError(f"the baseline run {baseline} was trained on other classes ({', '.join(base_names[:3])}"
                                f", ...) than the CTF runs ({', '.join(names[:3])}, ...); pass a baseline trained on "
                                "the same data")
        return cls(pipe, base, names)

    @classmethod
    def from_demo(cls, out: str | Path = "runs/demo", device: str = "cpu") -> "Explorer":
        """The runs `coarse2fine demo --out OUT` writes: OUT/coarse, OUT/fine, OUT/baseline."""
        out = Path(out)
        if not all((out / s / "model.safetensors").is_file() for s in ("coarse", "fine")):
            raise UserError(f"no trained runs in {out}; run `make demo` first, or pass --coarse/--fine")
        base = out / "baseline" if (out / "baseline" / "model.safetensors").is_file() else None
        return cls.from_runs(out / "coarse", out / "fine", base, device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str = "cpu") -> "Explorer":
        """A release folder (or a Hugging Face repo id holding one), loaded by CTFPipeline.from_pretrained."""
        pipe = CTFPipeline.from_pretrained(name_or_path, device=device)
        # the class names the stage-1 run recorded from its code store (kept in the release's stage1/)
        meta = load_json(pipe.sources["stage1"] / "config.json")
        return cls(pipe, None, (meta.get("codes") or {}).get("classes"))

    def default_knobs(self) -> Knobs:
        """The knobs the page starts at: the pipeline's sampling defaults (an export's sampling_defaults,
        else sampling.py's), so the page's first image is what the pipeline gives without options."""
        s1, s2 = self.pipe.coarse_default, self.pipe.fine_default
        tb = self.baseline.default.temperature if self.baseline is not None else BASELINE_DEFAULT.temperature
        return Knobs(cfg=s1.cfg_scale, temperature1=s1.temperature, top_k1=s1.top_k, top_p1=s1.top_p,
                     temperature2=s2.temperature, top_k2=s2.top_k, temperature_baseline=tb)

    # ---- colours --------------------------------------------------------------------------------

    @torch.no_grad()
    def cluster_colors(self, batch: int = 256) -> torch.Tensor:
        """uint8 [C, 3]: the mean RGB of each cluster's member codes, each decoded alone as a 1x1
        token grid. Depends on the weights only, so stable across calls; computed once."""
        if self._colors is None:
            vq, cmap = self.pipe.vq, self.pipe.cmap
            dev = next(vq.parameters()).device
            K = cmap.num_codes
            rgb = torch.empty(K, 3)
            for lo in range(0, K, batch):
                ids = torch.arange(lo, min(K, lo + batch), device=dev).view(-1, 1, 1)  # [b, 1, 1]
                rgb[lo:lo + len(ids)] = vq.decode_codes(ids).float().mean((2, 3)).cpu()  # [b, 3] in ~[-1, 1]
            phi = cmap.phi.cpu()
            sums = torch.zeros(cmap.num_coarse, 3).index_add_(0, phi, rgb)
            mean = sums / cmap.sizes.clamp(min=1).unsqueeze(1).float()
            self._colors = ((mean.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [-1, 1] -> 0..255
        return self._colors

    def coarse_images(self, coarse: torch.Tensor, size: int) -> np.ndarray:
        """coarse [B, N] (square grid) -> uint8 [B, size, size, 3]: each cell in its cluster's
        colour, upscaled (nearest) to the image size."""
        B, N = coarse.shape
        side = int(round(N ** 0.5))
        grid = self.cluster_colors()[coarse.cpu()].view(B, side, side, 3)  # [B, N, 3] -> [B, h, w, 3]
        rep = max(1, size // side)
        return grid.repeat_interleave(rep, 1).repeat_interleave(rep, 2).numpy()

    # ---- sampling -------------------------------------------------------------------------------

    def class_id(self, name) -> int:
        if name in self.class_names:
            return self.class_names.index(name)
        if isinstance(name, (int, np.integer)) and 0 <= int(name) < len(self.class_names):
            return int(name)
        raise UserError(f"unknown class {name!r}; pick one of {', '.join(self.class_names)}")

    def check(self, k: Knobs) -> Knobs:
        """Whole-number knobs as ints, every value in range; raises UserError naming the bad one."""
        k = replace(k, n=_whole(k.n, "number of images", 1, MAX_IMAGES), seed=_whole(k.seed, "seed", 0),
                    top_k1=_whole(k.top_k1, "stage-1 top-k", 0), top_k2=_whole(k.top_k2, "stage-2 top-k", 0))
        for attr, name in (("cfg", "cfg scale"), ("temperature1", "stage-1 temperature"),
                           ("top_p1", "stage-1 top-p"), ("temperature2", "stage-2 temperature"),
                           ("temperature_baseline", "baseline temperature")):
            value = getattr(k, attr)
            if value is None:
                raise UserError(f"{name} is empty; enter a number")
            try:  # a string from Python was float()'s ValueError when the knobs became StageSampling
                float(value)
            except (TypeError, ValueError):
                raise UserError(f"{name} must be a number, got {value!r}") from None
        if k.decoding not in FINE_DECODINGS:
            raise UserError(f"stage-2 decoding must be one of {', '.join(FINE_DECODINGS)}, got {k.decoding!r}")
        k.stage1().validate(self.pipe.coarse_model.cfg.vocab_size, "stage-1")
        k.stage2().validate(self.pipe.fine_model.cfg.vocab_size, "stage-2")
        self.class_id(k.class_name)
        return k

    def generate(self, knobs: Knobs, progress: Progress = _no_progress) -> Result:
        """Stage 1 + stage 2 + decode for n images of one class (and the baseline's, same seed)."""
        k = self.check(knobs)
        labels = torch.full((k.n,), self.class_id(k.class_name), dtype=torch.long)
        progress(0.05, "stage 1 (coarse map) + stage 2 (details)")
        out = self.pipe(labels, k.stage1(), k.stage2(), seed=k.seed, decode_images=False, fine_decoding=k.decoding)
        progress(0.5, "decoding images")
        images, t_dec = self._decode(out.codes)
        timings = {**out.timings, "decode_s": t_dec}
        base = None
        if self.baseline is not None:
            progress(0.7, "baseline (same class and seed)")
            b = self.baseline(labels, k.baseline(), seed=k.seed)
            base = b.images.numpy()
            timings["baseline_s"] = sum(b.timings.values())
        progress(0.95, "colouring the coarse maps")
        return Result(k, labels, out.coarse, out.codes, images, self.coarse_images(out.coarse, images.shape[1]),
                      base, timings)

    def redraw(self, prev: Result, knobs: Knobs | None = None, progress: Progress = _no_progress) -> Result:
        """Stage 2 only, on prev's coarse maps, with a new stage-2 seed (and the given stage-2 knobs)."""
        k = self.check(replace(prev.knobs, temperature2=knobs.temperature2, top_k2=knobs.top_k2,
                               decoding=knobs.decoding) if knobs else prev.knobs)
        n = prev.redraws + 1
        seed = k.seed * 100_003 + n  # one fresh stage-2 stream per redraw, reproducible from (seed, n)
        progress(0.05, "stage 2 only (details), same coarse maps")
        codes, t2 = self._stage2(prev.coarse, prev.labels, k, seed)
        progress(0.6, "decoding images")
        images, t_dec = self._decode(codes)
        return replace(prev, knobs=k, codes=codes, images=images, redraws=n,
                       timings={"stage2_s": t2, "decode_s": t_dec})

    def _stage2(self, coarse: torch.Tensor, labels: torch.Tensor, k: Knobs, seed: int) -> tuple[torch.Tensor, float]:
        """The library's stage-2-only entry point (CTFPipeline.redraw) on the kept coarse maps."""
        out = self.pipe.redraw(coarse, labels, k.stage2(), seed=seed, decode_images=False, fine_decoding=k.decoding)
        return out.codes, out.timings["stage2_s"]

    def _decode(self, codes: torch.Tensor) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        images = decode_images(self.pipe.vq, codes.to(self.pipe.device))
        return images.numpy(), time.perf_counter() - t0
