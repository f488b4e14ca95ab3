"""Subcommands over the transformer stages: presets, cluster, train, sample."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from coarse2fine.config import GPT_PRESETS, VQ_PRESETS, TrainConfig, UserError, gpt_config, vq_config
from coarse2fine.stages import STAGE_SPECS


def register(sub) -> None:
    p = sub.add_parser("presets", help="list every model preset with its parameter count")
    p.add_argument("--vocab", type=int, nargs="*", default=[16384, 512],
                   help="vocabulary sizes to count the GPT presets with (default: 16384 512)")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("cluster", help="k-means the tokenizer codebook into coarse labels (a CoarseMap)")
    p.add_argument("--tokenizer", required=True, help="tokenizer run directory or a LlamaGen VQ .pt file")
    p.add_argument("--vq-preset", default="VQ-16", help="preset of a LlamaGen .pt tokenizer (default VQ-16)")
    p.add_argument("--clusters", type=int, default=0, help="number of coarse labels C (default K/32, paper: 512)")
    p.add_argument("--method", default="kmeans", choices=["kmeans", "random", "balanced"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-init", type=int, default=1, help="k-means restarts (best inertia kept)")
    p.add_argument("--out", required=True, help="output file (.safetensors) or directory")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("train", help="train a coarse (stage 1), fine (stage 2) or baseline model on extracted codes",
                       description="Train one stage. With --resume, every flag left out takes the run's saved value "
                                   "(`train --resume --out R` alone continues R); a flag given must equal the run's "
                                   "value, except a larger --steps, which extends the run (recorded in config.json), "
                                   "and --grad-accum/--fsdp/--log-every/--ckpt-every/--eval-every, which leave the "
                                   "computation unchanged.")
    p.add_argument("--stage", choices=list(STAGE_SPECS), help="which model (required unless --resume)")
    p.add_argument("--codes", help="code store directory (from `coarse2fine extract-codes`; required unless --resume)")
    p.add_argument("--heldout", help="held-out code store for token metrics (e.g. the test split)")
    p.add_argument("--coarse-map", help="CoarseMap from `coarse2fine cluster` (coarse and fine stages)")
    p.add_argument("--preset", help=f"model preset (default GPT-small): {', '.join(GPT_PRESETS)}")
    p.add_argument("--head", choices=["restricted", "full"],
                   help="fine stage: 'restricted' (default) scores only the members of each position's coarse "
                        "cluster; 'full' is the paper's K-way head. The default is measured: on Fashion-MNIST the "
                        "restricted head gave lower held-out NLL and better samples (benchmarks/results/RESULTS.md)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped, "
                                                         "with its saved settings")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    d = TrainConfig()
    for f, h in [("steps", "optimizer steps"), ("batch_size", "global batch (over processes and accumulation)"),
                 ("lr", "learning rate per global batch 256 (scaled linearly)"), ("warmup_steps", "linear warmup"),
                 ("schedule", "constant or cosine"), ("weight_decay", "AdamW weight decay on >= 2-D weights"),
                 ("grad_clip", "gradient-norm clip (0 = off)"), ("grad_accum", "gradient accumulation micro-steps"),
                 ("ema_decay", "EMA decay (0 = off), e.g. 0.999"), ("precision", "auto, fp32 or bf16"),
                 ("seed", "seed for init, data order and dropout"), ("log_every", "log interval (steps)"),
                 ("ckpt_every", "checkpoint interval (steps)"), ("eval_every", "held-out eval interval (0 = end only)"),
                 ("fsdp", "shard with FSDP2 under torchrun (large presets)"),
                 ("cluster_loss_weight", "IAR: weight of a cluster-level cross-entropy added to the baseline's loss "
                                         "(needs --coarse-map; 0 = off)")]:
        default = getattr(d, f)
        flag = "--" + f.replace("_", "-")
        # default None = "not given": a fresh run takes the TrainConfig default, --resume the run's value
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None, help=h)
        else:
            p.add_argument(flag, type=type(default), default=None, help=f"{h} (default {default})")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval-tokens", help="token metrics of a trained stage on held-out codes: stage-1 coarse "
                                           "accuracy/NLL, stage-2 fine accuracy given the true coarse labels, baseline")
    p.add_argument("--run", required=True, help="a coarse, fine or baseline run directory")
    p.add_argument("--codes", required=True, help="held-out code store (e.g. extracted from the test split)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N sequences only")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval_tokens)

    p = sub.add_parser("sample", help="sample images from a CTF pair of runs or from a baseline run")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--coarse", help="stage-1 run directory (needs --fine)")
    g.add_argument("--baseline", help="baseline run directory")
    p.add_argument("--fine", help="stage-2 run directory")
    p.add_argument("--tokenizer", help="tokenizer run directory (default: the one the runs were trained with)")
    p.add_argument("--classes", help="comma-separated class ids (default: every class)")
    p.add_argument("--per-class", type=int, default=4, help="images per class (default 4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory: PNGs, grid.png, samples.npz")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast while sampling")
    add_sampling_flags(p)
    p.set_defaults(func=cmd_sample)


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Stage 1 (and the baseline) use --cfg/--temperature/--top-k/--top-p; stage 2 the -2 variants.
    Defaults are the paper's: cfg 2.0, temperature 1.1 in both CTF stages, top-k all."""
    p.add_argument("--cfg", type=float, default=2.0, help="CFG scale, stage 1 / baseline (1.0 = off)")
    p.add_argument("--cfg-interval", type=int, default=-1, help="apply CFG to the first N tokens only (-1 = all)")
    p.add_argument("--temperature", type=float, default=None, help="stage 1 / baseline (default 1.1 CTF, 1.0 baseline)")
    p.add_argument("--top-k", type=int, default=0, help="stage 1 / baseline top-k (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="stage 1 / baseline top-p (1.0 = off)")
    p.add_argument("--cfg-2", type=float, default=1.0, help="stage-2 CFG scale (1.0 = off)")
    p.add_argument("--temperature-2", type=float, default=1.1, help="stage-2 temperature")
    p.add_argument("--top-k-2", type=int, default=0, help="stage-2 top-k (0 = all)")
    p.add_argument("--top-p-2", type=float, default=1.0, help="stage-2 top-p")


def sampling_opts(args, baseline: bool):
    from coarse2fine.sampling import StageSampling

    t1 = args.temperature if args.temperature is not None else (1.0 if baseline else 1.1)
    s1 = StageSampling(t1, args.top_k, args.top_p, args.cfg, args.cfg_interval)
    s2 = StageSampling(args.temperature_2, args.top_k_2, args.top_p_2, args.cfg_2)
    return s1, s2


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


def load_tokenizer_any(path: str, preset: str):
    """A tokenizer run directory, or a LlamaGen .pt file."""
    from coarse2fine.checkpoint import load_llamagen_vq, load_vq

    p = Path(path)
    if p.is_dir():
        return load_vq(p)
    if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return load_llamagen_vq(p, preset)
    raise UserError(f"--tokenizer {p} is neither a run directory nor a .pt file")


def cmd_cluster(args) -> int:
    from coarse2fine.tokenizer.clustering import cluster_codebook, default_num_coarse
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    vq = load_tokenizer_any(args.tokenizer, args.vq_preset)
    k = vq.cfg.codebook_size
    c = args.clusters or default_num_coarse(k)
    cmap = cluster_codebook(vq.codebook_normalized(), c, args.method, args.seed,
                            codebook_fingerprint(vq), n_init=args.n_init)
    out = Path(args.out)
    path = out / "coarse_map.safetensors" if out.suffix != ".safetensors" else out
    cmap.save(path)
    st = cmap.stats()
    print(f"{args.method}: {k} codes -> {c} clusters; size mean {st['mean_size']:.1f}, min {st['min_size']}, "
          f"max {st['max_size']}, std {st['std_size']:.2f}, empty {st['empty']}")
    print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    import dataclasses

    from coarse2fine.data.tencrop import open_code_store
    from coarse2fine.stages import stage_config, stage_spec
    from coarse2fine.tokenizer.clustering import CoarseMap
    from coarse2fine.training.loop import saved_run, train

    given = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    if args.resume:  # a flag left out takes the run's value; train() refuses a given one that differs
        kw = saved_run(args.out)
        kw["cfg"] = dataclasses.replace(kw["cfg"], **given)
    elif not (args.stage and args.codes):
        raise UserError("train needs --stage and --codes (only --resume reads them from the run)")
    else:  # fields without a flag (e.g. beta1/beta2, min_lr_ratio) keep their TrainConfig defaults
        kw = {"cfg": TrainConfig(**given), "stage": args.stage, "restricted": True}
    for key, value in (("stage", args.stage), ("codes_dir", args.codes), ("coarse_map", args.coarse_map),
                       ("heldout_dir", args.heldout)):
        kw[key] = value if value is not None else kw.get(key)
    if args.head is not None:
        kw["restricted"] = args.head == "restricted"
    kw["restricted"] = kw["restricted"] and stage_spec(kw["stage"]).restricted_head
    if args.preset is not None or "model_cfg" not in kw:
        meta = open_code_store(kw["codes_dir"]).meta  # extract-codes or extract-codes-imagenet output
        num_coarse = CoarseMap.load(kw["coarse_map"]).num_coarse if kw["coarse_map"] else 0
        kw["model_cfg"] = stage_config(args.preset or "GPT-small", kw["stage"], meta["codebook_size"], num_coarse,
                                       meta["num_classes"], meta["grid"])
    summary = train(**kw, out_dir=args.out, resume=args.resume, progress=not args.no_progress, device=args.device)
    from coarse2fine.distributed import rank

    if rank() == 0:  # under torchrun: one summary, not one per process
        print(json.dumps(summary, indent=1))
    return 0


def cmd_eval_tokens(args) -> int:
    from coarse2fine.data.tencrop import open_code_store
    from coarse2fine.tokenizer.clustering import CoarseMap
    from coarse2fine.checkpoint import load_run
    from coarse2fine.stages import StageBatches, evaluate_tokens, stage_spec

    model, meta = load_run(args.run, device=args.device)
    stage = meta["stage"]
    spec = stage_spec(stage)
    cmap = CoarseMap.load(Path(args.run) / "coarse_map.safetensors") if spec.needs_coarse_map else None
    batches = StageBatches(open_code_store(args.codes), stage, cmap)
    members = cmap.members.to(args.device) if meta.get("restricted") else None
    res = evaluate_tokens(model, batches, torch.device(args.device), args.batch_size, members, args.limit)
    what = spec.target_name
    print(f"{stage}: {what} accuracy {res['acc']:.4f}, NLL {res['nll']:.4f} nats/token "
          f"over {res['count']} held-out sequences")
    print(json.dumps({"stage": stage, **res}))
    return 0


def parse_classes(spec: str | None, num_classes: int, per_class: int) -> torch.Tensor:
    if spec:
        try:
            ids = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError as e:
            raise UserError(f"--classes must be comma-separated integers, got {spec!r}") from e
    else:
        ids = list(range(num_classes))
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise UserError(f"class ids {bad} out of range; the model has classes 0..{num_classes - 1}")
    if per_class < 1:
        raise UserError("--per-class must be >= 1")
    return torch.tensor(ids).repeat_interleave(per_class)


def cmd_sample(args) -> int:
    from coarse2fine.pipeline import ARPipeline, CTFPipeline, save_samples

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    if args.coarse:
        if not args.fine:
            raise UserError("--coarse needs --fine (the stage-2 run)")
        pipe = CTFPipeline.from_runs(args.coarse, args.fine, args.tokenizer, args.device, dtype)
    else:
        pipe = ARPipeline.from_runs(args.baseline, args.tokenizer, args.device, dtype)
    labels = parse_classes(args.classes, pipe.num_classes, args.per_class)
    s1, s2 = sampling_opts(args, baseline=bool(args.baseline))
    images, timings = [], {}
    for b in range(0, len(labels), args.batch_size):
        chunk = labels[b:b + args.batch_size]
        o = pipe(chunk, s1, s2, seed=args.seed + b) if args.coarse else pipe(chunk, s1, seed=args.seed + b)
        images.append(o.images)
        for k, v in o.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    out = Path(args.out)
    save_samples(torch.cat(images), labels, out, nrow=args.per_class if args.per_class > 1 else 8)
    total = sum(timings.values())
    print(f"wrote {len(labels)} images to {out} (grid.png, samples.npz); "
          + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()) + f"; {len(labels) / max(total, 1e-9):.1f} images/s")
    return 0
