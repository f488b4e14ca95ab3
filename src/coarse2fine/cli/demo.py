"""`coarse2fine demo`: the README's main job."""
from __future__ import annotations

from coarse2fine.apps.demo import COLOUR, DemoPlan, default_out, run_demo
from coarse2fine.cli._args import kmeans_seed, nonneg_float, nonneg_int, positive_float, positive_int, unit_interval_open


def register(sub) -> None:
    p = sub.add_parser("demo", help="codes -> clusters -> coarse, fine and baseline models -> CTF and baseline "
                                    "samples side by side, scored, on the embedded data (12 minutes on 2 AVX2 "
                                    "cores in fp32, 9 with native bf16)")
    p.add_argument("--out", help="output directory (default runs/demo, runs/demo_<data> for other --data); "
                                 "rerun to resume")
    p.add_argument("--quick", action="store_true", help="a tiny smoke-test size (about a minute)")
    d = DemoPlan()
    p.add_argument("--data", default=d.data, help="data set name (default: the embedded Fashion-MNIST subset, grey, "
                                                  "32 px; emoji64: colour at 64 px, its own shipped tokenizer)")
    p.add_argument("--train-tokenizer", action="store_true",
                   help="train the tokenizer here instead of using the shipped one (always so for data without "
                        f"one; ~{d.vq_steps} steps, about 10 more minutes)")
    p.add_argument("--vq-steps", type=int, help=f"tokenizer steps with --train-tokenizer (default {d.vq_steps})")
    p.add_argument("--steps", type=int, help=f"steps for each transformer (default {d.steps}, {COLOUR['steps']} for emoji64)")
    p.add_argument("--preset", help=f"transformer preset (default {d.gpt_preset}, {COLOUR['gpt_preset']} for emoji64)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default=d.dtype,
                   help="transformer precision (default auto: bf16 where the CPU has it natively, else fp32)")
    p.add_argument("--workers", type=nonneg_int, default=d.workers,
                   help="models trained at once, one thread each (default 0: all three when >= 2 cores)")
    p.add_argument("--eval-per-class", type=positive_int,
                   help=f"samples per class scored by FD, KID and class accuracy (default {d.eval_per_class})")
    p.add_argument("--temperature", type=positive_float,
                   help=f"sampling temperature of stage 1 and the baseline (default {d.temperature}, "
                        f"{COLOUR['temperature']} for emoji64)")
    p.add_argument("--cfg", type=nonneg_float,
                   help=f"CFG scale of stage 1 and the baseline (default {d.cfg_scale}, {COLOUR['cfg_scale']} for "
                        "emoji64; longer training wants less: at 2000 steps CFG 3 scored above CFG 5, "
                        "docs/results.md)")
    p.add_argument("--dropout", type=unit_interval_open,
                   help=f"token, residual and FFN dropout of the three transformers (default {d.dropout}, "
                        f"{COLOUR['dropout']} for emoji64: docs/results.md#the-colour-demo; 0 turns it off)")
    p.add_argument("--ema-decay", type=unit_interval_open,
                   help=f"EMA decay of the transformers' weights, sampled instead of the last ones (default {d.ema}: off; "
                        f"{COLOUR['ema']} for emoji64)")
    p.add_argument("--seed", type=kmeans_seed, default=0, help="seed of every step (default 0)")
    p.add_argument("--no-progress", action="store_true", help="(kept for scripts; the demo prints one line per phase)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from coarse2fine.config import UserError

    plan = DemoPlan.quick(args.data) if args.quick else DemoPlan.for_data(args.data)
    plan.seed, plan.dtype = args.seed, args.dtype
    if args.train_tokenizer:
        plan.tokenizer = "train"
    if args.vq_steps is not None and plan.tokenizer != "train":  # was ignored without a word
        raise UserError(f"--vq-steps sets the steps of a tokenizer trained here, and the demo of {args.data} uses "
                        "the shipped tokenizer; add --train-tokenizer, or drop --vq-steps")
    for flag, field in (("vq_steps", "vq_steps"), ("steps", "steps"), ("eval_per_class", "eval_per_class")):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
            setattr(plan, field, value)
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    plan.workers = args.workers
    if args.preset:
        plan.gpt_preset = args.preset
    if args.temperature is not None:
        plan.temperature = args.temperature
    if args.cfg is not None:
        plan.cfg_scale = args.cfg
    if args.dropout is not None:
        plan.dropout = args.dropout
    if args.ema_decay is not None:
        plan.ema = args.ema_decay
    run_demo(args.out or default_out(args.data), plan, progress=not args.no_progress)
    return 0
