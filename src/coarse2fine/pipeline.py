"""Sampling pipelines loaded from run directories or from a release folder: CTF (stage 1 +
stage 2 + VQ decode) and the plain AR baseline (LlamaGen), with the same knobs and outputs.

    pipe = CTFPipeline.from_runs("runs/coarse", "runs/fine")       # tokenizer found via the runs
    pipe.save_pretrained("ctf-release")                            # one folder (release.py's layout)
    pipe = CTFPipeline.from_pretrained("ctf-release")              # a local folder, or a HF repo id
    out = pipe(torch.tensor([0, 1, 2]), seed=0)                     # out.images: uint8 [B, H, W, 3]

Precision has one spelling across the Python API: dtype = "auto" | "fp32" | "bf16" (as the CLI's --dtype) or a
torch dtype (precision.resolve_dtype); the same goes for TrainConfig.dtype, sample_fid and extract_tencrop.

Every path that pairs a model with a tokenizer checks the codebook fingerprint the model was
trained on. A local folder is read as it is; only a name that is not a folder is taken as a Hugging
Face repo id (release.resolve: snapshot_download, which can stay offline on its cache).
"""
from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coarse2fine.config import UserError
from coarse2fine.distributed import check_device
from coarse2fine.precision import resolve_dtype
from coarse2fine.sampling import (BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, FINE_DECODINGS,
                                  StageSampling, centroid_members, check_fine_decoding, check_labels,
                                  generate_ar, generate_fine, random_member)
from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint
from coarse2fine import release
from coarse2fine.checkpoint import find_run_tokenizer, load_run, load_run_map, load_run_tokenizer, run_fingerprint
from coarse2fine.data import sample_folder


@dataclass
class SampleOutput:
    images: torch.Tensor  # uint8 [B, H, W, 3]
    codes: torch.Tensor  # [B, N] fine codes
    labels: torch.Tensor  # [B]
    coarse: torch.Tensor | None = None  # [B, N] (CTF only)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    try:  # any integer: numpy's (np.int64 from an rng) and a 0-d integer tensor as well as int
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not 0 <= value < 2 ** 63:
        fix = "pass an integer" if value is None else "pass a seed >= 0" if value < 0 else "pass a smaller seed"
        raise UserError(f"seed must be an integer from 0 to {2 ** 63 - 1}, got {seed!r}; {fix}")
    seed = value
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _expand(path):
    """A path given from Python with "~" (no shell expanded it) as the home folder; None stays None."""
    return None if path is None else Path(path).expanduser()


def _whole(t: torch.Tensor) -> bool:
    """Does `t` hold whole numbers only (integers, or floats without a fraction; not bools or complex)?"""
    return not (t.is_complex() or t.dtype == torch.bool) and (
        not t.is_floating_point() or bool((torch.isfinite(t) & (t == t.round())).all()))


def as_labels(labels, num_classes: int, device: torch.device) -> torch.Tensor:
    """A pipeline call's labels (a list, array or tensor of class ids) -> long [B] on `device`. Refused in
    one line: no label, a shape other than [B], values that are not whole numbers (torch.as_tensor with
    dtype=long truncated 1.5 to class 1 without a word; an empty or 2-D tensor ended in a reshape or
    unpacking error deep in sampling), and ids outside 0..num_classes-1."""
    try:
        t = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"labels must be class ids (a list, array or 1-D tensor of integers), got {labels!r:.80}") \
            from None
    if t.dim() != 1:
        raise UserError(f"labels must be 1-D, one class id per image [B], got shape {list(t.shape)}; "
                        "e.g. [3] for one image of class 3")
    if t.numel() == 0:
        raise UserError("labels name no image: pass at least one class id, e.g. [0, 1, 2]")
    if not _whole(t):
        raise UserError(f"labels must be whole class ids, got {t.tolist()[:16]}; round them or pass integers")
    t = t.to(device=device, dtype=torch.long)
    check_labels(t, num_classes)
    return t


def stage_opts(opts, default: StageSampling, arg: str) -> StageSampling:
    """A call's sampling options: None takes the pipeline's default; anything but a StageSampling (a dict of
    knobs, as in an export's sampling_defaults) is one line (was an AttributeError deep in sampling, and an
    empty dict fell back to the default without a word)."""
    if opts is None:
        return default
    if not isinstance(opts, StageSampling):
        attr = {"coarse_opts": "coarse_default", "fine_opts": "fine_default"}.get(arg, "default")
        raise UserError(f"{arg} must be a coarse2fine.sampling.StageSampling, got {type(opts).__name__}; e.g. "
                        f"dataclasses.replace(pipe.{attr}, temperature=1.0)")
    return opts


class Pipeline:
    """What both pipelines share: timed parts, decoding, and release I/O (save_pretrained /
    from_pretrained / push_to_hub through release.py). `sources` names the folders the components were
    loaded from ({"tokenizer": dir, "stage1": run, ...}); save_pretrained reads their configs."""

    device: torch.device
    vq: VQModel
    sources: dict[str, Path]  # set by from_runs / from_pretrained; absent for a pipeline built from objects
    # torch.compile mode of the AR decode step ("default"; None = eager). Opt-in: at 16x16 codes on an AMX CPU
    # it took 0.93x (fp32) and 0.76x (bf16) the CPU time of eager after a one-time compile of tens of seconds
    # (docs/speed.md), so it pays for many batches (sample-fid), not for one. The codes are eager's in fp32.
    compile_mode: str | None = None

    def _timed(self, timings: dict[str, float], key: str, fn):
        """fn() with its seconds (device synchronised) recorded as timings[key]."""
        t0 = time.perf_counter()
        out = fn()
        _sync(self.device)
        timings[key] = time.perf_counter() - t0
        return out

    def _output(self, codes, labels, coarse, timings: dict[str, float], decode_images: bool) -> SampleOutput:
        images = (self._timed(timings, "decode_s", lambda: sample_folder.decode_images(self.vq, codes))
                  if decode_images else torch.empty(0))
        return SampleOutput(images, codes.cpu(), labels.cpu(), None if coarse is None else coarse.cpu(), timings)

    def parts(self) -> dict[str, torch.nn.Module]:
        """{component name: network} of the release folder."""
        raise NotImplementedError

    def defaults(self) -> dict[str, StageSampling]:
        """{stage: sampling defaults}: what a call without sampling arguments uses."""
        raise NotImplementedError

    def save_pretrained(self, out: str | Path) -> Path:
        """Write this pipeline (networks, tokenizer, coarse map, sampling defaults, a model card) into the
        fresh folder `out`; from_pretrained(out) gives it back. Written beside `out` and renamed into
        place only after it loads back. Works on a pipeline built from objects too (diffusers saves from
        the components): their configs come from the networks; runs add their training record and scores."""
        return release.save_pipeline(self, out)

    @classmethod
    def from_pretrained(cls, name_or_path, device="cpu", dtype=torch.float32, revision: str | None = None,
                        cache_dir=None, local_files_only: bool = False, token=None):
        """A release folder (save_pretrained / `coarse2fine export`), or a Hugging Face repo id holding
        one (fetched by huggingface_hub.snapshot_download; local_files_only: its cache only). The folder's
        sampling_defaults become the defaults of calls without sampling arguments."""
        folder = release.resolve(name_or_path, revision, cache_dir, local_files_only, token)
        parts, defaults = release.read_index(folder, cls.__name__)
        return cls._from_folder(parts, defaults, device, dtype)

    def push_to_hub(self, repo_id: str, token=None, private: bool | None = None,
                    commit_message: str = "Upload coarse2fine pipeline") -> str:
        """save_pretrained into a temporary folder, then upload it to the Hugging Face repo `repo_id`
        (created if missing) with huggingface_hub; returns the commit URL. Needs the network."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1])
            return release.push_folder(folder, repo_id, token, private, commit_message)


class CTFPipeline(Pipeline):
    """Stage 1 (coarse labels, KV-cache AR with CFG) -> stage 2 (all fine codes in one step) -> VQ decode.

    fine_model may be None: then only the decodings that need no stage-2 network are available
    ("random-member", "centroid-member"; see sampling.FINE_DECODINGS)."""

    def __init__(self, vq: VQModel, coarse_model, fine_model, cmap: CoarseMap, restricted: bool = False,
                 device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32):
        self.device = check_device(device, "device")
        self.vq, self.coarse_model, self.fine_model = vq.to(self.device).eval(), coarse_model, fine_model
        self.cmap, self.restricted, self.dtype = cmap, restricted, resolve_dtype(dtype, self.device)
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
            if coarse_model.cfg.num_classes != fine_model.cfg.num_classes:  # was: sampled without a word
                raise UserError(f"the stage-1 model was trained on {coarse_model.cfg.num_classes} classes, the stage-2 "
                                f"model on {fine_model.cfg.num_classes}: codes of different data sets; use runs "
                                "trained on the same codes")
        self.members = cmap.members.to(self.device)
        self.num_classes = coarse_model.cfg.num_classes
        # what a call without sampling arguments uses (an export's sampling_defaults replace them)
        self.coarse_default, self.fine_default = CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT
        self._centroid_codes: torch.Tensor | None = None

    @classmethod
    def from_runs(cls, coarse_dir, fine_dir=None, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        """Stage runs (each with its coarse_map.safetensors); the tokenizer is the one the runs record
        (relative path first) unless `tokenizer_dir` is given, and must have their fingerprint.
        fine_dir None: stage 1 only, for the decodings without a stage-2 network."""
        return cls._load(coarse_dir, fine_dir, None, None, tokenizer_dir, device, dtype)

    @classmethod
    def _from_folder(cls, parts: dict[str, Path], defaults: dict[str, StageSampling], device, dtype):
        cmap = parts["coarse_map"] / "coarse_map.safetensors"
        pipe = cls._load(parts["stage1"], parts["stage2"], cmap, cmap, parts["tokenizer"], device, dtype)
        pipe.coarse_default = defaults.get("stage1", pipe.coarse_default)
        pipe.fine_default = defaults.get("stage2", pipe.fine_default)
        return pipe

    def parts(self) -> dict[str, torch.nn.Module]:
        if self.fine_model is None:
            raise UserError("this pipeline has no stage-2 model; load one (from_runs with a fine run) to save it")
        return {"stage1": self.coarse_model, "stage2": self.fine_model}

    def defaults(self) -> dict[str, StageSampling]:
        return {"stage1": self.coarse_default, "stage2": self.fine_default}

    @classmethod
    def _load(cls, coarse_dir, fine_dir, coarse_map, fine_map, tokenizer_dir, device, dtype):
        check_device(device, "device")  # before any weights are read onto it
        coarse_dir, fine_dir = _expand(coarse_dir), _expand(fine_dir)
        coarse_map, fine_map, tokenizer_dir = _expand(coarse_map), _expand(fine_map), _expand(tokenizer_dir)
        coarse_model, cmeta = load_run(coarse_dir, "coarse", device)
        cmap = load_run_map(coarse_dir, cmeta, coarse_map)
        fine_model, restricted = None, False
        if fine_dir is not None:
            fine_model, fmeta = load_run(fine_dir, "fine", device)
            fmap = load_run_map(fine_dir, fmeta, fine_map)
            if not torch.equal(cmap.phi, fmap.phi):
                raise UserError(f"{coarse_dir} and {fine_dir} were trained on different coarse maps; retrain one of them")
            if run_fingerprint(cmeta) and run_fingerprint(fmeta) and run_fingerprint(cmeta) != run_fingerprint(fmeta):
                raise UserError(f"{coarse_dir} and {fine_dir} were trained on codes of different tokenizers "
                                f"({run_fingerprint(cmeta)} vs {run_fingerprint(fmeta)}); retrain one of them")
            restricted = bool(fmeta.get("restricted"))
        tok = find_run_tokenizer(cmeta, coarse_dir, tokenizer_dir)
        vq = load_run_tokenizer(cmeta, coarse_dir, tok)
        pipe = cls(vq, coarse_model, fine_model, cmap, restricted=restricted, device=device, dtype=dtype)
        pipe.sources = {"tokenizer": Path(tok), "stage1": Path(coarse_dir),
                        **({"stage2": Path(fine_dir)} if fine_dir is not None else {})}
        return pipe

    @property
    def decodings(self) -> tuple[str, ...]:
        """The stage-2 decodings this pipeline can run (all of them when it has a stage-2 network)."""
        return FINE_DECODINGS if self.fine_model is not None else FINE_DECODINGS[1:]

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, coarse_opts: StageSampling | None = None,
                 fine_opts: StageSampling | None = None, seed: int | None = 0,
                 decode_images: bool = True, fine_decoding: str = "network") -> SampleOutput:
        """labels [B] -> SampleOutput. fine_decoding: one of sampling.FINE_DECODINGS. Options left
        None take the pipeline's defaults (the paper's, or an export's sampling_defaults)."""
        coarse_opts = stage_opts(coarse_opts, self.coarse_default, "coarse_opts")
        fine_opts = stage_opts(fine_opts, self.fine_default, "fine_opts")
        labels = as_labels(labels, self.num_classes, self.device)
        coarse_opts.validate(self.coarse_model.cfg.vocab_size, "stage-1")
        self._check_decoding(fine_decoding, fine_opts)
        gen, t = _generator(seed, self.device), {}
        coarse = self._timed(t, "stage1_s", lambda: generate_ar(self.coarse_model, labels, coarse_opts, gen, self.dtype,
                                                                   compile_mode=self.compile_mode))
        return self._details(coarse, labels, fine_opts, gen, decode_images, fine_decoding, t)

    @torch.no_grad()
    def redraw(self, coarse: torch.Tensor, labels: torch.Tensor, fine_opts: StageSampling | None = None,
               seed: int | None = 0, decode_images: bool = True, fine_decoding: str = "network") -> SampleOutput:
        """Stage 2 (+ decode) only, on given coarse maps [B, N]: new details, the same structure."""
        fine_opts = stage_opts(fine_opts, self.fine_default, "fine_opts")
        labels = as_labels(labels, self.num_classes, self.device)
        try:
            coarse = torch.as_tensor(coarse)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"coarse maps must be cluster ids (a [B, N] tensor or nested list of integers, e.g. a "
                            f"previous call's out.coarse), got {coarse!r:.80}") from None
        if not _whole(coarse):  # as_tensor(dtype=long) truncated 1.5 to cluster 1 without a word
            bad = (coarse[~(torch.isfinite(coarse) & (coarse == coarse.round()))] if coarse.is_floating_point()
                   else coarse.flatten())
            raise UserError(f"coarse maps must hold whole cluster ids, got {coarse.dtype} values such as "
                            f"{bad[:4].tolist()}; round them or pass integers (e.g. a call's out.coarse)")
        coarse = coarse.to(device=self.device, dtype=torch.long)
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

    def _details(self, coarse, labels, fine_opts, gen, decode_images: bool, fine_decoding: str,
                 timings: dict[str, float] | None = None) -> SampleOutput:
        t = {} if timings is None else timings
        codes = self._timed(t, "stage2_s", lambda: self._fine(coarse, labels, fine_opts, gen, fine_decoding))
        return self._output(codes, labels, coarse, t, decode_images)

    def _fine(self, coarse, labels, fine_opts, gen, fine_decoding: str) -> torch.Tensor:
        if fine_decoding == "network":
            return generate_fine(self.fine_model, coarse, labels, fine_opts, gen,
                                 self.members if self.restricted else None, self.dtype)
        if fine_decoding == "random-member":
            return random_member(coarse, self.members, self.cmap.sizes, gen)
        if self._centroid_codes is None:
            self._centroid_codes = centroid_members(self.cmap.members, self.cmap.centroids,
                                                    self.vq.quantize.codebook().detach().cpu()).to(self.device)
        return self._centroid_codes[coarse]


class ARPipeline(Pipeline):
    """The plain LlamaGen baseline: one causal model over the K fine codes."""

    def __init__(self, vq: VQModel, model, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32):
        self.device = check_device(device, "device")
        self.vq, self.model, self.dtype = vq.to(self.device).eval(), model, resolve_dtype(dtype, self.device)
        if model.cfg.vocab_size != vq.cfg.codebook_size:
            raise UserError(f"baseline predicts {model.cfg.vocab_size} codes but the tokenizer has "
                            f"{vq.cfg.codebook_size}; pass the tokenizer the model was trained with")
        self.num_classes = model.cfg.num_classes
        self.default = BASELINE_DEFAULT  # what a call without `opts` uses (an export's sampling_defaults)

    @classmethod
    def from_runs(cls, baseline_dir, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        """A baseline run; the tokenizer as in CTFPipeline.from_runs, fingerprint-checked."""
        check_device(device, "device")  # before any weights are read onto it
        baseline_dir, tokenizer_dir = _expand(baseline_dir), _expand(tokenizer_dir)
        model, meta = load_run(baseline_dir, "baseline", device)
        tok = find_run_tokenizer(meta, baseline_dir, tokenizer_dir)
        pipe = cls(load_run_tokenizer(meta, baseline_dir, tok), model, device, dtype)
        pipe.sources = {"tokenizer": Path(tok), "baseline": Path(baseline_dir)}
        return pipe

    @classmethod
    def _from_folder(cls, parts: dict[str, Path], defaults: dict[str, StageSampling], device, dtype):
        pipe = cls.from_runs(parts["baseline"], parts["tokenizer"], device, dtype)
        pipe.default = defaults.get("stage1", pipe.default)
        return pipe

    def parts(self) -> dict[str, torch.nn.Module]:
        return {"baseline": self.model}

    def defaults(self) -> dict[str, StageSampling]:
        return {"stage1": self.default}

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, opts: StageSampling | None = None, seed: int | None = 0,
                 decode_images: bool = True) -> SampleOutput:
        opts = stage_opts(opts, self.default, "opts")
        labels = as_labels(labels, self.num_classes, self.device)
        gen, t = _generator(seed, self.device), {}
        codes = self._timed(t, "stage1_s", lambda: generate_ar(self.model, labels, opts, gen, self.dtype,
                                                                   compile_mode=self.compile_mode))
        return self._output(codes, labels, None, t, decode_images)


def load_pretrained(name_or_path, device="cpu", dtype=torch.float32, revision: str | None = None, cache_dir=None,
                    local_files_only: bool = False, token=None) -> Pipeline:
    """A release folder (or Hub repo id) as the pipeline its model_index.json names: CTFPipeline or ARPipeline."""
    folder = release.resolve(name_or_path, revision, cache_dir, local_files_only, token)
    cls = {"CTFPipeline": CTFPipeline, "ARPipeline": ARPipeline}[release.pipeline_class(folder)]
    return cls.from_pretrained(folder, device, dtype)
