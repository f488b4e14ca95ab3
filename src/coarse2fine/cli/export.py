"""`coarse2fine export`: runs -> one self-contained pipeline folder (Hugging Face layout)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="write a self-contained pipeline folder (model_index.json, one sub-folder "
                                      "per component, README.md model card) from a CTF pair or a baseline run",
                       description="The folder loads with CTFPipeline.from_pretrained(DIR) or "
                                   "ARPipeline.from_pretrained(DIR) (what save_pretrained writes); push it to the Hugging Face "
                                   "Hub with huggingface-cli upload, or pipe.push_to_hub.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--coarse", help="stage-1 run directory (needs --fine)")
    g.add_argument("--baseline", help="baseline run directory")
    p.add_argument("--fine", help="stage-2 run directory")
    p.add_argument("--tokenizer", help="tokenizer run directory (default: the one the runs record)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import ARPipeline, CTFPipeline
    from coarse2fine.release import check_fresh

    if args.coarse and not args.fine:
        raise UserError("--coarse needs --fine (the stage-2 run)")
    if args.baseline and args.fine:
        raise UserError("--fine belongs to a CTF export (--coarse R1 --fine R2), not to --baseline")
    check_fresh(args.out)  # before the runs are loaded: a refusal costs nothing
    pipe = (ARPipeline.from_runs(args.baseline, args.tokenizer) if args.baseline else
            CTFPipeline.from_runs(args.coarse, args.fine, args.tokenizer))
    out = pipe.save_pretrained(args.out)
    names = sorted(p.name for p in out.iterdir())
    print(f"exported to {out}: {', '.join(names)}")
    return 0
