"""Sampling pipelines loaded from run directories or from an exported folder: CTF (stage 1 +
stage 2 + VQ decode) and the plain AR baseline (LlamaGen), with the same knobs and outputs.

    pipe = CTFPipeline.from_runs("runs/coarse", "runs/fine")       # tokenizer found via the runs
    pipe = CTFPipeline.from_pretrained("ctf-export")               # a `coarse2fine export` folder
    out = pipe(torch.tensor([0, 1, 2]), seed=0)                     # out.images: uint8 [B, H, W, 3]

Every path that pairs a model with a tokenizer checks the codebook fingerprint the model was
trained on. Nothing is ever downloaded: from_pretrained reads a local folder only.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from coarse2fine.config import UserError
from coarse2fine.data.preprocess import to_uint8
from coarse2fine.fileio import atomic_write_bytes
from coarse2fine.sampling import (BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, FINE_DECODINGS,
                                  StageSampling, centroid_members, check_fine_decoding, check_labels,
                                  generate_ar, generate_fine, random_member)
from coarse2fine.tokenizer.clustering import CoarseMap
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint
from coarse2fine.checkpoint import (FORMAT, FORMAT_VERSION, find_run_tokenizer, load_run, load_run_tokenizer, load_weights,
                                    read_run_config, run_fingerprint, save_run, tokenizer_ref, write_run_config)


@dataclass
class SampleOutput:
    images: torch.Tensor  # uint8 [B, H, W, 3]
    codes: torch.Tensor  # [B, N] fine codes
    labels: torch.Tensor  # [B]
    coarse: torch.Tensor | None = None  # [B, N] (CTF only)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part


def _index_component(folder: str | Path, pipeline: str, needed: tuple[str, ...], stages: tuple[str, ...]
                     ) -> tuple[dict[str, Path], dict[str, StageSampling]]:
    """model_index.json of an exported folder -> ({component: its sub-folder}, {stage: sampling
    defaults}), checked: every component in `needed` present and inside the folder (an export is
    self-contained: a path out of it, or a link out of it, is refused), the defaults valid."""
    from coarse2fine.config import load_json

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root} does not exist; from_pretrained loads a local folder written by `coarse2fine "
                        "export` and never downloads anything")
    index = load_json(root / "model_index.json")
    if index.get("format") != FORMAT or not isinstance(index.get("format_version"), int):
        raise UserError(f"{root}/model_index.json is not a coarse2fine export; write one with `coarse2fine export`")
    if index["format_version"] > FORMAT_VERSION:
        raise UserError(f"{root} was exported in format_version {index['format_version']}; this coarse2fine reads "
                        f"up to {FORMAT_VERSION}: upgrade coarse2fine")
    if index.get("_class_name") != pipeline:
        raise UserError(f"{root} is a {index.get('_class_name')} export, not a {pipeline} one; load it with "
                        f"{index.get('_class_name')}.from_pretrained")
    comps = index.get("components")
    missing = [n for n in needed if not isinstance(comps, dict) or not isinstance(comps.get(n), str)]
    if missing:
        raise UserError(f"{root}/model_index.json names no {', '.join(missing)} component; export the folder again")
    inside = root.resolve()
    parts = {}
    for name in needed:
        sub = (root / comps[name]).resolve()
        if sub == inside or not sub.is_relative_to(inside):
            raise UserError(f"{root}/model_index.json: component {name} is {comps[name]!r}, outside the exported "
                            "folder; an export is self-contained: copy that component into it or export again")
        parts[name] = sub
    return parts, _sampling_defaults(root, index.get("sampling_defaults"), stages)


def _sampling_defaults(root: Path, given, stages: tuple[str, ...]) -> dict[str, StageSampling]:
    """sampling_defaults of model_index.json -> {stage: StageSampling}: what a call without sampling
    arguments uses. A stage left out keeps the library's default; an unknown stage or knob, or a value
    out of range, is an error naming it."""
    if given is None:
        return {}
    where = f"{root}/model_index.json sampling_defaults"
    if not isinstance(given, dict) or set(given) - set(stages):
        raise UserError(f"{where} must map {' / '.join(stages)} to sampling settings, got {given!r}")
    out = {}
    knobs = [f.name for f in fields(StageSampling)]
    whole = ("top_k", "cfg_interval")  # counts: integers; the others any number
    for stage, d in given.items():
        if not isinstance(d, dict) or set(d) - set(knobs):
            raise UserError(f"{where}: {stage} must hold some of {knobs}, got {d!r}")
        bad = [k for k, v in d.items() if isinstance(v, bool) or not isinstance(v, int if k in whole else (int, float))]
        if bad:
            raise UserError(f"{where}: {stage} {bad[0]} must be a number, got {d[bad[0]]!r}")
        out[stage] = StageSampling(**d)
        out[stage].validate(1 << 30, f"{where}: {stage}")  # top-k against the vocabulary: checked when sampling
    return out


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
        # what a call without sampling arguments uses (an export's sampling_defaults replace them)
        self.coarse_default, self.fine_default = CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT
        self._centroid_codes: torch.Tensor | None = None

    @classmethod
    def from_runs(cls, coarse_dir, fine_dir=None, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        """Stage runs (each with its coarse_map.safetensors); the tokenizer is the one the runs record
        (relative path first) unless `tokenizer_dir` is given, and must have their fingerprint.
        fine_dir None: stage 1 only, for the decodings without a stage-2 network."""
        return cls._load(coarse_dir, fine_dir, Path(coarse_dir) / "coarse_map.safetensors",
                         Path(fine_dir) / "coarse_map.safetensors" if fine_dir is not None else None,
                         tokenizer_dir, device, dtype)

    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype=torch.float32):
        """A folder written by `coarse2fine export --coarse R1 --fine R2` (never downloads). Its
        model_index.json sampling_defaults become the defaults of calls without sampling arguments."""
        parts, defaults = _index_component(folder, cls.__name__, ("tokenizer", "stage1", "stage2", "coarse_map"),
                                          ("stage1", "stage2"))
        cmap = parts["coarse_map"] / "coarse_map.safetensors"
        pipe = cls._load(parts["stage1"], parts["stage2"], cmap, cmap, parts["tokenizer"], device, dtype)
        pipe.coarse_default = defaults.get("stage1", pipe.coarse_default)
        pipe.fine_default = defaults.get("stage2", pipe.fine_default)
        return pipe

    @classmethod
    def _load(cls, coarse_dir, fine_dir, coarse_map, fine_map, tokenizer_dir, device, dtype):
        coarse_model, cmeta = load_run(coarse_dir, "coarse", device)
        cmap = CoarseMap.load(coarse_map)
        fine_model, restricted = None, False
        if fine_dir is not None:
            fine_model, fmeta = load_run(fine_dir, "fine", device)
            fmap = CoarseMap.load(fine_map)
            if not torch.equal(cmap.phi, fmap.phi):
                raise UserError(f"{coarse_dir} and {fine_dir} were trained on different coarse maps; retrain one of them")
            if run_fingerprint(cmeta) and run_fingerprint(fmeta) and run_fingerprint(cmeta) != run_fingerprint(fmeta):
                raise UserError(f"{coarse_dir} and {fine_dir} were trained on codes of different tokenizers "
                                f"({run_fingerprint(cmeta)} vs {run_fingerprint(fmeta)}); retrain one of them")
            restricted = bool(fmeta.get("restricted"))
        vq = load_run_tokenizer(cmeta, coarse_dir, tokenizer_dir)
        return cls(vq, coarse_model, fine_model, cmap, restricted=restricted, device=device, dtype=dtype)

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
        coarse_opts, fine_opts = coarse_opts or self.coarse_default, fine_opts or self.fine_default
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
    def redraw(self, coarse: torch.Tensor, labels: torch.Tensor, fine_opts: StageSampling | None = None,
               seed: int | None = 0, decode_images: bool = True, fine_decoding: str = "network") -> SampleOutput:
        """Stage 2 (+ decode) only, on given coarse maps [B, N]: new details, the same structure."""
        fine_opts = fine_opts or self.fine_default
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
        self.default = BASELINE_DEFAULT  # what a call without `opts` uses (an export's sampling_defaults)

    @classmethod
    def from_runs(cls, baseline_dir, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        """A baseline run; the tokenizer as in CTFPipeline.from_runs, fingerprint-checked."""
        model, meta = load_run(baseline_dir, "baseline", device)
        return cls(load_run_tokenizer(meta, baseline_dir, tokenizer_dir), model, device, dtype)

    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype=torch.float32):
        """A folder written by `coarse2fine export --baseline R` (never downloads); its sampling_defaults
        become the defaults of calls without `opts`."""
        parts, defaults = _index_component(folder, cls.__name__, ("tokenizer", "baseline"), ("stage1",))
        pipe = cls.from_runs(parts["baseline"], parts["tokenizer"], device, dtype)
        pipe.default = defaults.get("stage1", pipe.default)
        return pipe

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, opts: StageSampling | None = None, seed: int | None = 0,
                 decode_images: bool = True) -> SampleOutput:
        opts = opts or self.default
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


def save_samples(images: torch.Tensor, labels: torch.Tensor, out: str | Path, nrow: int = 8,
                 replace: list[Path] = ()) -> None:
    """PNGs named {index:06d}_c{label}.png, grid.png, and samples.npz (arr_0 uint8 [N, H, W, 3] as
    the ADM evaluator reads it, plus labels int64 [N]).

    Written whole or not at all: everything goes to a staging folder inside `out` first; only when
    every file is written are the files of `replace` (an earlier output) removed and the new ones
    moved in, samples.npz last. A failure (a full disk: the OSError names the path) leaves the
    earlier output as it was; a kill leaves a staging folder that the next `save_samples` removes."""
    import io
    import tempfile

    import numpy as np
    from PIL import Image

    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.fileio import remove_stale_temp_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out, "sample")
    stage = Path(tempfile.mkdtemp(dir=out, prefix=f".sample.{os.getpid()}.", suffix=".tmp"))
    try:
        arr = images.numpy()
        names = [f"{i:06d}_c{lab}.png" for i, lab in enumerate(labels.tolist())]
        try:
            for img, name in zip(arr, names):
                Image.fromarray(img).save(stage / name)
            save_grid(arr, stage / "grid.png", nrow=nrow)
            buf = io.BytesIO()
            np.savez(buf, arr_0=arr, labels=labels.numpy())
            (stage / "samples.npz").write_bytes(buf.getvalue())
        except OSError as e:  # PIL and numpy do not name the file; the user's path is `out`, not our staging
            if e.filename is None or str(stage) in str(e.filename):
                raise OSError(e.errno, e.strerror or str(e), str(out)) from e
            raise
        for f in sorted(replace, key=lambda f: f.name != "samples.npz"):  # the npz first: it marks a whole output
            f.unlink(missing_ok=True)
        for name in names + ["grid.png", "samples.npz"]:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---- export: one self-contained folder in the Hugging Face layout ---------------------------------

def export_pipeline(out: str | Path, coarse=None, fine=None, baseline=None, tokenizer=None) -> Path:
    """Write `out`/{model_index.json, README.md, tokenizer/, coarse_map/, stage1/, stage2/} (CTF) or
    {..., tokenizer/, baseline/}; each component holds config.json + *.safetensors. The runs are
    loaded (and fingerprint-checked) first, the folder is written beside `out` and renamed into
    place only after it loads back, so a failed export leaves nothing behind. Returns `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} is not empty; export writes a fresh folder: choose another --out or remove it")
    if bool(baseline) == bool(coarse or fine) or (not baseline and not (coarse and fine)):
        raise UserError("give --baseline RUN, or both --coarse RUN and --fine RUN")
    runs = {"baseline": Path(baseline)} if baseline else {"stage1": Path(coarse), "stage2": Path(fine)}
    pipe = (ARPipeline.from_runs(baseline, tokenizer) if baseline else CTFPipeline.from_runs(coarse, fine, tokenizer))
    first = next(iter(runs.values()))
    tok_src = find_run_tokenizer(read_run_config(first), first, tokenizer)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an export that crashed
    try:
        fp = codebook_fingerprint(pipe.vq)
        save_run(tmp / "tokenizer", "vq", {**read_run_config(tok_src, "vq"), "fingerprint": fp},
                 load_weights(tok_src / "model.safetensors"))
        metas = {}
        for name, src in runs.items():
            meta = read_run_config(src, "gpt")
            # local absolute paths mean nothing in a release folder
            meta["codes"] = {k: v for k, v in (meta.get("codes") or {}).items()
                             if k not in ("dir", "tokenizer_dir", "tokenizer_path")}
            meta.pop("heldout", None)  # the held-out store a run was evaluated on (resume only)
            meta["tokenizer"] = tokenizer_ref(fp, tmp / "tokenizer", tmp / name)
            metas[name] = save_run(tmp / name, "gpt", meta, load_weights(src / "model.safetensors"))
        components = {"tokenizer": "tokenizer", **{name: name for name in runs}}
        if not baseline:
            pipe.cmap.save(tmp / "coarse_map" / "coarse_map.safetensors")
            write_run_config(tmp / "coarse_map", "coarse_map", {"fingerprint": pipe.cmap.fingerprint,
                                                               "method": pipe.cmap.method, **pipe.cmap.stats()})
            components["coarse_map"] = "coarse_map"
        defaults = ({"stage1": asdict(BASELINE_DEFAULT)} if baseline else
                    {"stage1": asdict(CTF_COARSE_DEFAULT), "stage2": asdict(CTF_FINE_DEFAULT)})
        cls_name = type(pipe).__name__
        index = {"_class_name": cls_name, "format": FORMAT, "format_version": FORMAT_VERSION,
                 "components": dict(sorted(components.items())), "sampling_defaults": defaults}
        atomic_write_bytes(tmp / "model_index.json", (json.dumps(index, indent=1) + "\n").encode())
        card = model_card(out.name, pipe, runs, read_run_config(tok_src, "vq"), defaults)
        atomic_write_bytes(tmp / "README.md", card.encode())
        type(pipe).from_pretrained(tmp)  # what users will do: it must load before it is published
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(name: str, pipe, runs: dict[str, Path], tok_meta: dict, defaults: dict) -> str:
    """README.md of an exported folder: what it is, its training data, the scores measured in the
    runs (summary.json held-out metrics, eval*.json reports), sampling defaults, how to load it."""
    from coarse2fine.models import count_params

    vq, cls_name = pipe.vq.cfg, type(pipe).__name__
    models = {"baseline": pipe.model} if "baseline" in runs else {"stage1": pipe.coarse_model, "stage2": pipe.fine_model}
    what = {"stage1": "causal transformer: class -> one coarse label per position (KV cache, CFG)",
            "stage2": "full-attention transformer: class + all coarse labels -> all fine codes in one step",
            "baseline": "causal transformer over the fine codes (LlamaGen-style next-token model)"}
    lines = [f"# {name}", "",
             f"A class-conditional image generator ({cls_name}) exported by `coarse2fine export`. "
             f"Tokenizer: VQ with K={vq.codebook_size} codes, {vq.image_size} px images -> {vq.grid}x{vq.grid} codes.",
             ""]
    if "baseline" not in runs:
        lines += [f"Coarse-to-fine token prediction: the {vq.codebook_size} codes are grouped into "
                  f"{pipe.cmap.num_coarse} clusters ({pipe.cmap.method}, coarse_map/).", ""]
    if "baseline" not in runs and pipe.restricted:
        what["stage2"] += "; each position scores only the members of its coarse cluster"
    lines += [f"- `{k}/`: {what[k]}, {count_params(m) / 1e6:.2f}M parameters (from run `{runs[k].name}`)"
              for k, m in models.items()]
    lines += ["- `tokenizer/`: VQ autoencoder (decodes codes to images)", "", "## Training data", "",
              "| component | data set | resolution | steps | global batch |", "|---|---|---|---|---|"]
    td, tt = tok_meta.get("data") or {}, tok_meta.get("train") or {}
    lines.append(f"| tokenizer | {td.get('name', '?')} ({td.get('split', '?')}) | {td.get('resolution', vq.image_size)} px"
                 f" | {tt.get('steps', '?')} | {tt.get('batch_size', '?')} |")
    scores = []
    for k, run in runs.items():
        meta = read_run_config(run)
        c, t = meta.get("codes") or {}, meta.get("train") or {}
        lines.append(f"| {k} | {c.get('dataset', '?')} ({c.get('split', '?')}, {c.get('count', '?')} code sequences)"
                     f" | {vq.image_size} px | {t.get('steps', '?')} | {t.get('batch_size', '?')} |")
        scores += _run_scores(k, run)
    lines += ["", "## Measured scores", ""] + (scores or ["No scores were found in the runs (no summary.json "
                                                         "held-out metrics, no eval*.json report)."])
    lines += ["", "## Sampling defaults", ""]
    lines += [f"- {k}: " + ", ".join(f"{a} {b}" for a, b in v.items()) for k, v in defaults.items()]
    lines += ["", "## Use", "", "Load it (local folder; nothing is downloaded) and sample:", "", "```python",
              f"from coarse2fine.pipeline import {cls_name}",
              f'pipe = {cls_name}.from_pretrained("{name}")  # then pipe(torch.tensor([0, 1]), seed=0).images',
              "```", ""]
    return "\n".join(lines)


def _run_scores(component: str, run: Path) -> list[str]:
    """Score lines found in a run dir: summary.json (held-out NLL / accuracy) and eval*.json."""
    from coarse2fine.config import load_json

    out = []
    if (run / "summary.json").is_file():
        h = load_json(run / "summary.json").get("heldout") or {}
        if "nll" in h:
            out.append(f"- {component}: held-out NLL {h['nll']:.4f} nats/token, token accuracy {h['acc']:.4f} "
                       f"({h.get('count', '?')} sequences)")
    for rep in sorted(run.glob("eval*.json")):
        nums = {k: v for k, v in load_json(rep).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if nums:
            out.append(f"- {component} ({rep.name}): " + ", ".join(f"{k} {v:.4g}" for k, v in nums.items()))
    return out
