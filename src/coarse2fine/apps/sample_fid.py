"""Evaluation sampling at scale: e.g. 50,000 images, exactly 50 per class, over torchrun ranks.

    torchrun --nproc_per_node 8 -m coarse2fine.cli sample-fid --baseline runs/llamagen/baseline --out fid/B

Layout of OUT (the format is data/sample_folder.py's): `samples/{i:06d}_c{label}.png` (PNG, never JPEG:
JPEG artefacts move FID), `samples.npz` (ADM evaluator format: arr_0 uint8 [N, H, W, 3] in index order,
plus `labels` int64 [N] and each PNG's SHA-256) and `fid_run.json` (the settings and the run summary).

What makes it exact and resumable:
- sample i has class i mod C, so any N that is a multiple of C gives exactly N / C per class;
- the N indices are cut into chunks of `batch_size`; chunk j is sampled as one batch with a generator
  seeded from (seed, j). The images therefore depend on (seed, batch_size) but not on the number of
  processes, and chunks are handed to ranks round-robin from the list of chunks still missing;
- every PNG is written under a temporary name and renamed, so a killed run leaves only whole files;
  a rerun with the same settings samples only the chunks with a missing PNG.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coarse2fine import distributed
from coarse2fine.config import UserError
from coarse2fine.fileio import dump_json, load_json, lock_dir, remove_stale_temp_files
from coarse2fine.data.sample_folder import NPZ, decode_images, png_name, write_adm_npz, write_png
from coarse2fine.precision import resolve_dtype
from coarse2fine.sampling import StageSampling


def class_schedule(num_samples: int, num_classes: int) -> np.ndarray:
    """labels int64 [N]: sample i gets class i mod C (every batch mixes classes)."""
    if num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {num_samples}")
    if num_samples % num_classes:
        lo = num_samples // num_classes * num_classes
        near = f"{lo} or {lo + num_classes}" if lo else f"{num_classes} (one per class) or more"  # never "10 or 10"
        raise UserError(f"--num-samples {num_samples} is not a multiple of the {num_classes} classes, so the classes "
                        f"cannot be equally represented; use {near}")
    return np.arange(num_samples, dtype=np.int64) % num_classes


def chunk_seed(seed: int, chunk: int) -> int:
    """Independent 63-bit seed for chunk `chunk` of a run seeded `seed`."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(2, np.uint64)[0] >> np.uint64(1))


SAMPLE_BATCH = 64  # images per sampling chunk (part of the seeding)


def sample_chunk(pipe, labels: np.ndarray, j: int, batch_size: int, seed: int, s1: StageSampling,
                 s2: StageSampling | None, image_size_eval: int | None = None) -> np.ndarray:
    """Chunk j of a run (labels[j * batch_size:(j + 1) * batch_size]) as uint8 images [b, H, W, 3], sampled
    with the generator seeded chunk_seed(seed, j): the same images whichever process, or command, draws it."""
    lo, hi = j * batch_size, min(len(labels), (j + 1) * batch_size)
    cond = torch.from_numpy(labels[lo:hi]).to(pipe.device)
    if s2 is not None:
        o = pipe(cond, s1, s2, seed=chunk_seed(seed, j), decode_images=False)
    else:
        o = pipe(cond, s1, seed=chunk_seed(seed, j), decode_images=False)
    return decode_images(pipe.vq, o.codes.to(pipe.device), image_size_eval, batch_size=hi - lo).numpy()


def sample_balanced(pipe, num_samples: int, seed: int = 0, batch_size: int = SAMPLE_BATCH
                    ) -> tuple[np.ndarray, np.ndarray]:
    """num_samples class-balanced images (sample i has class i mod C) in memory, with the pipeline's own
    sampling defaults: what `sample-fid` writes for the same seed and batch size. -> (uint8 [N, H, W, 3], labels)."""
    labels = class_schedule(num_samples, pipe.num_classes)
    d = pipe.defaults()
    chunks = [sample_chunk(pipe, labels, j, batch_size, seed, d["stage1"], d.get("stage2"))
              for j in range(math.ceil(num_samples / batch_size))]
    return np.concatenate(chunks), labels


def _load_pipeline(baseline, coarse, fine, tokenizer, device, dtype, pipeline=None):
    from coarse2fine.pipeline import ARPipeline, CTFPipeline, load_pretrained

    if pipeline is not None:
        if baseline or coarse or fine or tokenizer:
            raise UserError("give either --pipeline or run directories (--baseline, --coarse/--fine, --tokenizer), "
                            "not both")
        return load_pretrained(pipeline, device, dtype)
    if baseline and (coarse or fine):
        raise UserError("give either --baseline or --coarse/--fine, not both")
    if baseline:
        return ARPipeline.from_runs(baseline, tokenizer, device, dtype)
    if not (coarse and fine):
        raise UserError("give --baseline RUN, or both --coarse RUN and --fine RUN")
    return CTFPipeline.from_runs(coarse, fine, tokenizer, device, dtype)


def sample_fid(out_dir: str | Path, *, baseline: str | Path | None = None, coarse: str | Path | None = None,
               fine: str | Path | None = None, pipeline: str | Path | None = None,
               tokenizer: str | Path | None = None, num_samples: int = 50_000, batch_size: int = SAMPLE_BATCH,
               seed: int = 0,
               stage1: StageSampling | dict | None = None, stage2: StageSampling | dict | None = None,
               dtype: str | torch.dtype = "fp32", image_size_eval: int | None = None, device: str | None = None,
               progress: bool = True, compile_mode: str | None = None) -> dict[str, Any]:
    """Sample `num_samples` class-balanced images into out_dir (see module docstring); resumable.

    What samples: run directories (baseline, or coarse + fine, tokenizer optional) or `pipeline`, a
    release folder or Hub repo id. stage1: sampling knobs of the baseline / CTF stage 1; stage2: CTF
    stage 2; each a StageSampling, or a dict of the knobs that differ from the pipeline's own defaults
    (pipe.defaults()), or None for those defaults. dtype: "auto" | "fp32" | "bf16" or a torch dtype (the
    sampling autocast, precision.resolve_dtype). compile_mode: torch.compile mode of the decode step (None =
    eager; Pipeline.compile_mode). Returns the summary also stored in out_dir/fid_run.json. One process
    (group) per out_dir: rank 0 holds its lock, and first removes the temp files of a killed run."""
    from coarse2fine.checkpoint import check_not_run_out

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    info = distributed.setup(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; give a directory path")
    # `sample` refuses such a folder (files it did not write); sample-fid wrote samples/ among a run's files
    check_not_run_out(out, "a sample-fid folder", "sample-fid would write samples/, samples.npz and fid_run.json")
    with lock_dir(out, "another sample-fid process", info.is_main):
        if info.is_main:
            for d in (out, out / "samples"):
                remove_stale_temp_files(d)
        return _sample_fid(info, out, baseline, coarse, fine, pipeline, tokenizer, num_samples, batch_size, seed,
                           stage1, stage2, dtype, image_size_eval, progress, compile_mode)


def _stage_opts(given: StageSampling | dict | None, default: StageSampling) -> StageSampling:
    from dataclasses import replace

    if isinstance(given, StageSampling):
        return given
    return replace(default, **(given or {}))


def _sample_fid(info, out, baseline, coarse, fine, pipeline, tokenizer, num_samples, batch_size, seed, stage1,
                stage2, dtype, image_size_eval, progress, compile_mode) -> dict[str, Any]:
    """sample_fid under the lock of `out`."""
    from coarse2fine.pipeline import CTFPipeline

    dtype = resolve_dtype(dtype, info.device)
    bf16 = dtype == torch.bfloat16  # how fid_run.json records it
    pipe = _load_pipeline(baseline, coarse, fine, tokenizer, info.device, dtype, pipeline)
    pipe.compile_mode = compile_mode  # the images do not depend on it (the same codes in fp32)
    is_ctf = isinstance(pipe, CTFPipeline)
    defaults = pipe.defaults()  # the pipeline's own: an export's sampling_defaults, else the library's
    s1 = _stage_opts(stage1, defaults["stage1"])
    s2 = _stage_opts(stage2, defaults["stage2"]) if is_ctf else None
    labels = class_schedule(num_samples, pipe.num_classes)
    folder = out / "samples"
    runs = {k: str(Path(v).resolve()) for k, v in
            (("baseline", baseline), ("coarse", coarse), ("fine", fine), ("tokenizer", tokenizer)) if v}
    if pipeline is not None:  # a Hub id stays a name (its cache path is not the user's)
        runs["pipeline"] = str(Path(pipeline).resolve()) if Path(pipeline).is_dir() else str(pipeline)
    settings = {"kind": "ctf" if is_ctf else "baseline", "runs": runs,
                "num_samples": num_samples, "num_classes": pipe.num_classes, "batch_size": batch_size, "seed": seed,
                "stage1": vars(s1), "stage2": vars(s2) if is_ctf else None, "bf16": bf16,
                "image_size_eval": image_size_eval}
    if info.is_main:
        _check_or_write_settings(out, settings)
    distributed.barrier()

    chunks = math.ceil(num_samples / batch_size)
    have = set(os.listdir(folder))
    pending = [j for j in range(chunks)
               if any(png_name(i, int(labels[i])) not in have
                      for i in range(j * batch_size, min(num_samples, (j + 1) * batch_size)))]
    distributed.barrier()  # every rank lists the folder before any rank writes to it
    mine = pending[info.rank::info.world_size]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine), disable=not (progress and info.is_main), dynamic_ncols=True, unit="batch",
               desc=f"sample-fid (rank 0 of {info.world_size})")
    t0 = time.time()
    for j in mine:
        lo, hi = j * batch_size, min(num_samples, (j + 1) * batch_size)
        images = sample_chunk(pipe, labels, j, batch_size, seed, s1, s2, image_size_eval)
        for i, img in zip(range(lo, hi), images):
            write_png(folder / png_name(i, int(labels[i])), img)
        bar.update(1)
    bar.close()
    wall = time.time() - t0
    done = torch.tensor([float(sum(min(num_samples, (j + 1) * batch_size) - j * batch_size for j in mine))],
                        device=info.device)
    done = float(distributed.all_reduce_mean(done).item() * info.world_size)
    distributed.barrier()
    summary: dict[str, Any] = {}
    if info.is_main:
        paths = [folder / png_name(i, int(labels[i])) for i in range(num_samples)]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise UserError(f"{len(missing)} samples are missing after sampling (e.g. {missing[0]}); rerun to fill them")
        n, h, w = write_adm_npz(paths, labels, out / NPZ)
        per_class = np.bincount(labels, minlength=pipe.num_classes)
        summary = {**settings, "images": n, "height": h, "width": w, "per_class": int(per_class[0]),
                   "sampled_this_run": int(done), "world_size": info.world_size, "wall_s": wall,
                   "images_per_s": done / max(wall, 1e-9), "npz": str((out / NPZ).resolve())}
        dump_json({"settings": settings, "summary": summary}, out / "fid_run.json")
    # no barrier after the npz: writing 50k PNGs into it can outlast a collective's timeout, and the
    # other ranks have nothing left to do
    return summary


def _check_or_write_settings(out: Path, settings: dict[str, Any]) -> None:
    """A rerun must use the same settings, or it would mix two sample sets in one folder."""
    path = out / "fid_run.json"
    if path.exists():
        old = load_json(path)["settings"]
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise UserError(f"{out} holds samples made with other settings ({', '.join(diff)} differ); use the "
                            f"same flags to resume, or another --out")
        return
    (out / "samples").mkdir(parents=True, exist_ok=True)
    dump_json({"settings": settings, "summary": None}, path)
