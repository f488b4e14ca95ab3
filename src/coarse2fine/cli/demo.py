"""`coarse2fine demo`: the README's main job."""
from __future__ import annotations

from coarse2fine.apps.demo import DemoPlan, run_demo


def register(sub) -> None:
    p = sub.add_parser("demo", help="tokenizer -> codes -> clusters -> coarse, fine and baseline models -> "
                                    "CTF and baseline samples side by side, on the embedded data (~15 CPU-minutes)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo); rerun to resume")
    p.add_argument("--quick", action="store_true", help="a tiny smoke-test size (about a minute)")
    d = DemoPlan()
    p.add_argument("--data", default=d.data, help="data set name (default: the embedded Fashion-MNIST subset)")
    p.add_argument("--vq-steps", type=int, help=f"tokenizer steps (default {d.vq_steps})")
    p.add_argument("--steps", type=int, help=f"steps for each transformer (default {d.steps})")
    p.add_argument("--preset", help=f"transformer preset (default {d.gpt_preset})")
    p.add_argument("--seed", type=int, default=0, help="seed of every step (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    plan = DemoPlan.quick() if args.quick else DemoPlan()
    plan.data, plan.seed = args.data, args.seed
    if args.vq_steps:
        plan.vq_steps = args.vq_steps
    if args.steps:
        plan.steps = args.steps
    if args.preset:
        plan.gpt_preset = args.preset
    run_demo(args.out, plan, progress=not args.no_progress)
    return 0
