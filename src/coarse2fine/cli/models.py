"""Subcommands over the transformer stages: presets, cluster, train, sample."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from coarse2fine.cli._args import (add_compile, add_device, add_dtype, add_threads, cfg_interval, check_out_path,
                                   kmeans_seed, nonneg_float, nonneg_int, positive_float, positive_int, probability,
                                   reject_unused, seed_int, unit_interval_open)
from coarse2fine.config import GPT_PRESETS, VQ_PRESETS, UserError, gpt_config, vq_config
from coarse2fine.sampling import FINE_DECODINGS
from coarse2fine.stages import STAGE_SPECS
from coarse2fine.tokenizer.clustering import METHODS

# TrainConfig field -> (flag type, help). The flag is --<field with dashes> (--schedule and --dtype, with
# choices, are added beside them).
# Every flag defaults to None = "not given": a fresh run takes the preset's recipe (config.train_recipe),
# --resume the run's saved value.
_TRAIN_FLAGS = {
    "steps": (positive_int, "optimizer steps"),
    "batch_size": (positive_int, "global batch (over processes and accumulation)"),
    "lr": (positive_float, "learning rate per global batch 256 (scaled linearly)"),
    "warmup_steps": (nonneg_int, "linear warmup steps"),
    "weight_decay": (nonneg_float, "AdamW weight decay on >= 2-D weights"),
    "grad_clip": (nonneg_float, "gradient-norm clip (0 = off)"),
    "grad_accum": (positive_int, "gradient accumulation micro-steps"),
    "ema_decay": (unit_interval_open, "EMA decay (0 = off), e.g. 0.999"),
    "seed": (seed_int, "seed for init, data order and dropout"),
    "log_every": (positive_int, "log interval (steps)"),
    "ckpt_every": (positive_int, "checkpoint interval (steps)"),
    "eval_every": (nonneg_int, "held-out eval interval (0 = end only)"),
    "cluster_loss_weight": (nonneg_float, "IAR: weight of a cluster-level cross-entropy added to the baseline's "
                                          "loss (needs --coarse-map; 0 = off)"),
}


def register(sub) -> None:
    p = sub.add_parser("presets", help="list every model preset with its parameter count")
    p.add_argument("--vocab", type=positive_int, nargs="*", default=[16384, 512],
                   help="vocabulary sizes to count the GPT presets with (default: 16384 512)")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("cluster", help="k-means the tokenizer codebook into coarse labels (a CoarseMap)")
    p.add_argument("--tokenizer", required=True, help="tokenizer run directory or a LlamaGen VQ .pt file")
    add_vq_preset(p)
    p.add_argument("--clusters", type=positive_int, default=None,
                   help="number of coarse labels C (default K/32, paper: 512)")
    p.add_argument("--method", default="kmeans", choices=list(METHODS),
                   help="kmeans (the paper), random (ablation), balanced (equal-size k-means) or agglomerative (average linkage, as MASC); default kmeans")
    p.add_argument("--seed", type=kmeans_seed, default=0, help="seed of the k-means initialisation (default 0)")
    p.add_argument("--n-init", type=positive_int, default=1, help="k-means restarts (best inertia kept; default 1)")
    p.add_argument("--out", required=True, help="output file (.safetensors) or directory")
    add_threads(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("train", help="train a coarse (stage 1), fine (stage 2) or baseline model on extracted codes",
                       description="Train one stage. Settings left out come from the preset's recipe (CPU presets: "
                                   "the measured small-model recipe; GPT-B and larger: LlamaGen's), printed at start "
                                   "and stored in config.json. With --resume, every flag left out takes the run's "
                                   "saved value (`train --resume --out R` alone continues R); a flag given must equal "
                                   "the run's value, except a larger --steps, which extends the run (recorded in "
                                   "config.json), and --grad-accum/--fsdp/--log-every/--ckpt-every/--eval-every, which "
                                   "leave the computation unchanged.")
    p.add_argument("--stage", choices=list(STAGE_SPECS),
                   help="coarse: stage 1 over cluster ids; fine: stage 2; baseline: next-token over fine ids "
                        "(required unless --resume)")
    p.add_argument("--codes", help="code store directory (from `coarse2fine extract-codes`; required unless --resume)")
    p.add_argument("--heldout", help="held-out code store for token metrics (e.g. the test split)")
    p.add_argument("--coarse-map", help="CoarseMap from `coarse2fine cluster` (coarse and fine stages; the baseline "
                                        "with --cluster-loss-weight)")
    p.add_argument("--preset", help=f"model preset (default GPT-small): {', '.join(GPT_PRESETS)}")
    p.add_argument("--head", choices=["restricted", "full"], default=None,
                   help="fine stage only: 'restricted' (default) scores only the members of each position's coarse "
                        "cluster; 'full' is the paper's K-way head. The default is measured: on Fashion-MNIST the "
                        "restricted head gave lower held-out NLL and better samples (benchmarks/results/RESULTS.md)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped, "
                                                         "with its saved settings")
    add_device(p)
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    for f, (kind, h) in _TRAIN_FLAGS.items():
        p.add_argument("--" + f.replace("_", "-"), type=kind, default=None, help=f"{h} (default: the preset's recipe)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                   help="learning-rate schedule after warmup (default: the preset's recipe)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default=None,
                   help="training precision: auto (bf16 where it is fast: CUDA, CPUs with native bf16), fp32 or "
                        "bf16 (default auto)")
    p.add_argument("--fsdp", action="store_true", default=None, help="shard with FSDP2 under torchrun (large presets)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval-tokens", help="token metrics of a trained stage on held-out codes: stage-1 coarse "
                                           "accuracy/NLL, stage-2 fine accuracy given the true coarse labels, baseline")
    p.add_argument("--run", required=True, help="a coarse, fine or baseline run directory")
    p.add_argument("--codes", required=True, help="held-out code store (e.g. extracted from the test split)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="sequences per forward pass (default 256)")
    p.add_argument("--max-sequences", type=positive_int, default=None,
                   help="evaluate the first N code sequences of the store only (default: all)")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=cmd_eval_tokens)

    p = sub.add_parser("sample", help="sample images from a CTF pair of runs, a baseline run or a release folder")
    add_pipeline_source(p)
    p.add_argument("--fine", help="stage-2 run directory (with --coarse; not with a --fine-decoding that needs no "
                                  "stage-2 model)")
    p.add_argument("--fine-decoding", default=None, choices=list(FINE_DECODINGS),
                   help="CTF stage 2: 'network' (the stage-2 model, default), 'random-member' (a random member of "
                        "each predicted cluster, as MASC) or 'centroid-member' (the member nearest the cluster "
                        "centroid); the last two need no --fine")
    p.add_argument("--tokenizer", help="tokenizer run directory (default: the one the runs were trained with)")
    p.add_argument("--classes", help="comma-separated class ids (default: every class)")
    p.add_argument("--per-class", type=positive_int, default=4, help="images per class (default 4)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per sampling batch; batch b is seeded with --seed + b (default 64)")
    p.add_argument("--seed", type=seed_int, default=0, help="base random seed (default 0)")
    p.add_argument("--out", required=True,
                   help="output directory: numbered PNGs, grid.png, samples.npz; must be new, empty or "
                        "hold only an earlier `sample` output (which is replaced)")
    add_device(p)
    add_threads(p)
    add_dtype(p, "fp32", "autocast precision while sampling")
    add_compile(p, SAMPLE_COMPILE_HELP)
    add_sampling_flags(p)
    p.set_defaults(func=cmd_sample)


SAMPLE_COMPILE_HELP = (": needs a C++ compiler on CPU; a one-time compile of tens of seconds, then 0.76-0.93x the "
                       "CPU time per batch at 16x16 codes (docs/speed.md), worth it for many batches")


def add_vq_preset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vq-preset", default=None, choices=sorted(VQ_PRESETS),
                   help="architecture of a LlamaGen .pt tokenizer file (default VQ-16); run directories carry "
                        "their own, so it is refused with one")


def add_pipeline_source(p: argparse.ArgumentParser) -> None:
    """What samples: a CTF pair of runs (--coarse, with --fine), a baseline run, or a release folder."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--coarse", help="stage-1 run directory (needs --fine)")
    g.add_argument("--baseline", help="baseline run directory")
    g.add_argument("--pipeline", help="a release folder (`coarse2fine export`, save_pretrained) or a Hugging Face "
                                      "repo id owner/name; CTF or baseline, as its model_index.json says")


def open_pipeline(args, dtype: torch.dtype):
    """The pipeline the flags name (add_pipeline_source), on args.device in `dtype`. A release folder carries
    its tokenizer and every stage, so --fine and --tokenizer are refused with it, and a baseline folder
    refuses the stage-2 flags as --baseline does."""
    from coarse2fine.pipeline import ARPipeline, CTFPipeline, load_pretrained

    if getattr(args, "pipeline", None):
        reject_unused(args, ["--fine", "--tokenizer"], "comes from the release folder with --pipeline; drop it")
        pipe = load_pretrained(args.pipeline, args.device, dtype)
        if isinstance(pipe, ARPipeline):
            reject_unused(args, STAGE2_FLAGS + (["--fine-decoding"] if getattr(args, "fine_decoding", None) else []),
                          f"applies to the CTF stage 2 only; {args.pipeline} is a baseline pipeline: drop it")
        elif getattr(args, "fine_decoding", None) not in (None, "network"):
            reject_unused(args, STAGE2_FLAGS, f"is for the stage-2 network; --fine-decoding {args.fine_decoding} "
                                              "uses none, drop it")
        return pipe
    if args.coarse:
        return CTFPipeline.from_runs(args.coarse, args.fine, args.tokenizer, args.device, dtype)
    return ARPipeline.from_runs(args.baseline, args.tokenizer, args.device, dtype)


STAGE2_FLAGS = ["--cfg-2", "--temperature-2", "--top-k-2", "--top-p-2"]


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Stage 1 (and the baseline) use --cfg/--temperature/--top-k/--top-p/--cfg-interval; stage 2 the -2
    variants. Every one defaults to None ("not given"): the pipeline's own defaults (pipe.defaults(): a
    release folder's sampling_defaults, else sampling.CTF_COARSE_DEFAULT / CTF_FINE_DEFAULT, the paper's,
    and BASELINE_DEFAULT, LlamaGen's) fill in the rest (sampling_opts), and a baseline can refuse the
    stage-2 ones."""
    from coarse2fine.sampling import BASELINE_DEFAULT as B, CTF_COARSE_DEFAULT as S1, CTF_FINE_DEFAULT as S2

    p.add_argument("--cfg", type=nonneg_float, default=None,
                   help=f"CFG scale, stage 1 / baseline (1.0 = off; default: the pipeline's, {S1.cfg_scale} CTF, "
                        f"{B.cfg_scale} baseline)")
    p.add_argument("--cfg-interval", type=cfg_interval, default=None,
                   help=f"apply CFG to the first N tokens only (-1 = all; default: the pipeline's, {S1.cfg_interval})")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help=f"stage 1 / baseline (default: the pipeline's, {S1.temperature} CTF, {B.temperature} baseline)")
    p.add_argument("--top-k", type=nonneg_int, default=None,
                   help=f"stage 1 / baseline top-k (0 = all; default: the pipeline's, {S1.top_k})")
    p.add_argument("--top-p", type=probability, default=None,
                   help=f"stage 1 / baseline top-p (1.0 = off; default: the pipeline's, {S1.top_p})")
    p.add_argument("--cfg-2", type=nonneg_float, default=None, help=f"stage-2 CFG scale (1.0 = off; default {S2.cfg_scale})")
    p.add_argument("--temperature-2", type=positive_float, default=None,
                   help=f"stage-2 temperature (default {S2.temperature})")
    p.add_argument("--top-k-2", type=nonneg_int, default=None, help=f"stage-2 top-k (0 = all; default {S2.top_k})")
    p.add_argument("--top-p-2", type=probability, default=None, help=f"stage-2 top-p (1.0 = off; default {S2.top_p})")


def check_mode(args) -> None:
    """--coarse needs --fine unless the stage-2 decoding uses no network; a baseline refuses --fine and every
    stage-2 knob instead of ignoring them; the no-network decodings refuse the stage-2 network's knobs."""
    decoding = getattr(args, "fine_decoding", None)  # sample-fid samples with the stage-2 network only
    network = decoding in (None, "network")
    if args.coarse and not args.fine and network:
        raise UserError("--coarse needs --fine (the stage-2 run), or --fine-decoding random-member|centroid-member")
    if args.coarse and not network:
        reject_unused(args, ["--fine", *STAGE2_FLAGS],
                      f"is for the stage-2 network; --fine-decoding {decoding} uses none, drop it")
    if args.baseline:
        reject_unused(args, ["--fine", *STAGE2_FLAGS] + (["--fine-decoding"] if decoding is not None else []),
                      "applies to the CTF stage 2 only; drop it with --baseline")


def given_sampling(args) -> tuple[dict, dict]:
    """The sampling knobs given on the command line: ({stage 1 / baseline}, {stage 2}), StageSampling
    field -> value; a flag left out is absent."""
    one = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cfg_scale": args.cfg,
           "cfg_interval": args.cfg_interval}
    two = {"temperature": args.temperature_2, "top_k": args.top_k_2, "top_p": args.top_p_2, "cfg_scale": args.cfg_2}
    return ({k: v for k, v in one.items() if v is not None}, {k: v for k, v in two.items() if v is not None})


def sampling_opts(args, defaults: dict):
    """(stage 1 or baseline, stage 2 or None) StageSampling: the flags given over `defaults`, the
    pipeline's own (pipe.defaults()); stage 2 is None for a baseline."""
    from dataclasses import replace

    given1, given2 = given_sampling(args)
    s2 = defaults.get("stage2")
    return replace(defaults["stage1"], **given1), (None if s2 is None else replace(s2, **given2))


def cmd_presets(args) -> int:
    from coarse2fine.models import Transformer, count_params
    from coarse2fine.tokenizer.vq import VQModel

    print(f"{'preset':<12} {'kind':<10} {'layers':>6} {'heads':>5} {'dim':>5}  parameters")
    for name in VQ_PRESETS:
        cfg = vq_config(name)
        with torch.device("meta"):
            n = count_params(VQModel(cfg))
        print(f"{name:<12} {'tokenizer':<10} {'':>6} {'':>5} {'':>5}  {n / 1e6:8.2f}M  "
              f"(K={cfg.codebook_size}, {cfg.image_size}px -> {cfg.grid}x{cfg.grid})")
    for name in GPT_PRESETS:
        cfg = gpt_config(name)
        counts = []
        for v in args.vocab:
            with torch.device("meta"):
                counts.append(f"{count_params(Transformer(gpt_config(name, vocab_size=v))) / 1e6:.2f}M @vocab {v}")
        print(f"{name:<12} {'gpt':<10} {cfg.n_layer:>6} {cfg.n_head:>5} {cfg.dim:>5}  " + ", ".join(counts))
    return 0


def load_tokenizer_any(path: str, vq_preset: str | None):
    """A tokenizer run directory, or a LlamaGen .pt file built as `vq_preset` (default VQ-16)."""
    from coarse2fine.checkpoint import load_llamagen_vq, load_vq

    p = Path(path)
    if p.is_dir():
        if vq_preset is not None:
            raise UserError(f"--vq-preset applies to LlamaGen .pt files only; {p} is a run directory that "
                            "carries its own architecture: drop --vq-preset")
        return load_vq(p)
    if not p.exists():
        raise UserError(f"--tokenizer {p} does not exist")
    if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return load_llamagen_vq(p, vq_preset or "VQ-16")
    raise UserError(f"--tokenizer {p} is neither a run directory nor a .pt file")


def cmd_cluster(args) -> int:
    from coarse2fine.tokenizer.clustering import cluster_codebook, default_num_coarse
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    out = Path(args.out)
    if out.suffix[1:].isalpha() and not out.is_dir():  # a file's name (x.npy), not a folder's (maps, maps/v1.2)
        check_out_path(out, kind="file", suffix=".safetensors")
    else:
        check_out_path(out)  # an existing file without a suffix: no folder to write the map into
    path = out if out.suffix == ".safetensors" and not out.is_dir() else out / "coarse_map.safetensors"
    if any((path.parent / f).exists() for f in ("config.json", "state.pt", "model.safetensors")):
        # a run's map is part of the run: its models were trained on that one (and its record names it)
        raise UserError(f"--out {args.out}: {path.parent} is a run directory, whose coarse map is the one its models "
                        "were trained on; write the new map to another folder (e.g. --out maps/new)")
    vq = load_tokenizer_any(args.tokenizer, args.vq_preset)
    k = vq.cfg.codebook_size
    c = args.clusters or default_num_coarse(k)
    if c > k:
        raise UserError(f"--clusters {c} is more than the codebook's {k} codes")
    cmap = cluster_codebook(vq.codebook_normalized(), c, args.method, args.seed,
                            codebook_fingerprint(vq), n_init=args.n_init)
    cmap.save(path)
    st = cmap.stats()
    print(f"{args.method}: {k} codes -> {c} clusters; size mean {st['mean_size']:.1f}, min {st['min_size']}, "
          f"max {st['max_size']}, std {st['std_size']:.2f}, empty {st['empty']}")
    print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from coarse2fine.distributed import rank
    from coarse2fine.training.gpt import train
    from coarse2fine.training.plan import plan_stage_run

    check_out_path(Path(args.out))
    given = {f: getattr(args, f) for f in _TRAIN_FLAGS} | {"schedule": args.schedule, "dtype": args.dtype,
                                                           "fsdp": args.fsdp}
    plan = plan_stage_run(args.out, resume=args.resume, stage=args.stage, preset=args.preset, codes=args.codes,
                          coarse_map=args.coarse_map, heldout=args.heldout, head=args.head, given=given)
    if plan.summary and not args.no_progress and rank() == 0:  # once under torchrun, not per process
        print(plan.summary, flush=True)
    summary = train(**plan.kwargs, out_dir=args.out, resume=args.resume, progress=not args.no_progress,
                    device=args.device)
    if rank() == 0:  # under torchrun: one summary, not one per process
        print(json.dumps(summary, indent=1))
    return 0


def cmd_eval_tokens(args) -> int:
    from coarse2fine.data.codes import open_code_store
    from coarse2fine.checkpoint import check_run_codes, load_run, load_run_map
    from coarse2fine.stages import StageBatches, evaluate_tokens, stage_spec

    model, meta = load_run(args.run, device=args.device)
    stage = meta["stage"]
    spec = stage_spec(stage)
    cmap = load_run_map(args.run, meta) if spec.needs_coarse_map else None
    store = open_code_store(args.codes)
    check_run_codes(meta, args.run, store.meta, args.codes)  # codes of another tokenizer: garbage metrics
    batches = StageBatches(store, stage, cmap)
    members = cmap.members.to(args.device) if meta.get("restricted") else None
    res = evaluate_tokens(model, batches, torch.device(args.device), args.batch_size, members, args.max_sequences)
    what = spec.target_name
    print(f"{stage}: {what} accuracy {res['acc']:.4f}, NLL {res['nll']:.4f} nats/token "
          f"over {res['count']} held-out sequences")
    print(json.dumps({"stage": stage, **res}))
    return 0


def parse_classes(spec: str | None, num_classes: int, per_class: int) -> torch.Tensor:
    if spec is not None:  # given, even empty: `--classes ""` names no class, it does not mean all
        parts = [s.strip() for s in spec.split(",")]
        if not any(parts):
            raise UserError(f"--classes {spec!r} names no class; give e.g. --classes 0,3")
        if not all(parts):  # `1,,2` sampled classes 1 and 2: the id meant between the commas was lost
            i = parts.index("")
            where = ("before the first comma" if i == 0 else "after the last comma" if i == len(parts) - 1
                     else "between two commas")
            raise UserError(f"--classes {spec!r} has an empty entry {where}; remove the extra comma or put the "
                            "missing class id there")
        try:
            ids = [int(s) for s in parts]
        except ValueError as e:
            raise UserError(f"--classes must be comma-separated integers, got {spec!r}") from e
    else:
        ids = list(range(num_classes))
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise UserError(f"class ids {bad} out of range; the model has classes 0..{num_classes - 1}")
    return torch.tensor(ids).repeat_interleave(per_class)


def cmd_sample(args) -> int:
    from coarse2fine.fileio import lock_dir
    from coarse2fine.data.sample_folder import owned_files

    check_mode(args)
    out = Path(args.out)
    check_out_path(out)
    # two writers would mix their images in one folder; a failure into a new folder removes it
    with lock_dir(out, "another `sample` process", clean_failed=()):
        return _sample(args, out, owned_files(out))


def _sample(args, out: Path, owned: list[Path]) -> int:
    from coarse2fine.pipeline import CTFPipeline
    from coarse2fine.precision import resolve_dtype
    from coarse2fine.data.sample_folder import write_folder

    dtype = resolve_dtype(args.dtype, torch.device(args.device))
    pipe = open_pipeline(args, dtype)
    pipe.compile_mode = args.compile or None
    labels = parse_classes(args.classes, pipe.num_classes, args.per_class)
    s1, s2 = sampling_opts(args, pipe.defaults())
    images, timings = [], {}
    progress = SampleProgress(len(labels), args.batch_size, pipe.vq.cfg.image_size)
    for b in range(0, len(labels), args.batch_size):
        chunk = labels[b:b + args.batch_size]
        o = (pipe(chunk, s1, s2, seed=args.seed + b, fine_decoding=args.fine_decoding or "network")
             if isinstance(pipe, CTFPipeline) else pipe(chunk, s1, seed=args.seed + b))
        images.append(o.images)
        for k, v in o.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        progress.done(b // args.batch_size + 1)
    # an earlier sample output is replaced, never mixed with this one
    write_folder(torch.cat(images), labels, out, nrow=args.per_class if args.per_class > 1 else 8, replace=owned)
    total = sum(timings.values())
    print(f"wrote {len(labels)} images to {out} (grid.png, samples.npz); "
          + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()) + f"; {len(labels) / max(total, 1e-9):.1f} images/s")
    return 0


class SampleProgress:
    """What a long `sample` says on stdout: the size of the job up front (images, batches, the memory the
    images take until they are written), then after the first batch an estimate of the time left, and
    a progress line every EVERY_S seconds. A one-batch job says nothing extra."""

    EVERY_S = 10.0
    WARN_BYTES = 1 << 30  # images are held in memory until all are sampled

    def __init__(self, n: int, batch: int, image_size: int):
        self.batches, self.t0, self.last = -(-n // batch), time.perf_counter(), 0.0
        if self.batches > 1:
            mem = n * image_size * image_size * 3
            print(f"sampling {n} images in {self.batches} batches of {batch} ({mem / 2**20:.0f} MB of images in "
                  "memory until they are written)", flush=True)
            if mem > self.WARN_BYTES:
                print(f"warning: {n} images need {mem / 2**30:.1f} GB of memory and as many PNG files; lower "
                      "--per-class or sample in parts (--classes, --seed) if that is more than intended", flush=True)

    def done(self, i: int) -> None:
        now = time.perf_counter() - self.t0
        if self.batches > 1 and i < self.batches and (i == 1 or now - self.last >= self.EVERY_S):
            self.last = now
            print(f"batch {i}/{self.batches} after {now:.1f} s; about {now / i * (self.batches - i):.0f} s left",
                  flush=True)

