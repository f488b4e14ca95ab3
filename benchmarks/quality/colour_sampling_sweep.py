"""Can sampling settings alone make the colour demo's samples recognisable? One trained CTF point of the
colour curve (colour_curve.py's work folder), sampled and scored at stage-1 temperature, CFG, top-k and
top-p, and stage-2 CFG, with the demo's scorer (450 samples, 50 per class; class accuracy of the shipped
Lite0-probe classifier; FD-EffNetLite0@64 against the training images).

    OMP_NUM_THREADS=1 python benchmarks/quality/colour_sampling_sweep.py \\
        --point /work/c2f_colour/curve/GPT-tiny_1000_s0 --out benchmarks/results/colour_curve_emoji64

Writes sampling_sweep.jsonl (one row per setting, resumable) and sampling_sweep.md, and a grid per setting
in the point's folder. Stage 2 is greedy (top-k 1) unless a setting says otherwise, as in the demo.
`--settings "t=0.9 cfg=3;t=0.8 cfg=3 p=0.8"` sweeps other settings; `--name` names the two files (another
point's sweep beside the first: `--name sampling_sweep_small3000_s0`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# each: stage-1 temperature t, CFG cfg, top-k k, top-p p; stage-2 CFG cfg2 (the demo's choice first)
SETTINGS = [dict(t=0.9, cfg=5.0), dict(t=0.7, cfg=5.0), dict(t=0.5, cfg=5.0), dict(t=0.9, cfg=5.0, k=20),
            dict(t=0.9, cfg=5.0, k=50), dict(t=0.9, cfg=5.0, p=0.8), dict(t=0.9, cfg=5.0, cfg2=3.0),
            dict(t=0.7, cfg=8.0, k=20), dict(t=0.7, cfg=5.0, k=50, cfg2=3.0)]


def key(s: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in s.items())


def parse_settings(text: str) -> list[dict]:
    """ "t=0.9 cfg=3;t=0.8 cfg=3 k=16" -> [{"t": 0.9, "cfg": 3.0}, {"t": 0.8, "cfg": 3.0, "k": 16}]"""
    out = []
    for item in filter(None, (x.strip() for x in text.split(";"))):
        s = {}
        for pair in item.split():
            k, _, v = pair.partition("=")
            if k not in ("t", "cfg", "k", "p", "cfg2"):
                raise SystemExit(f"--settings: unknown knob {k!r} in {item!r} (t, cfg, k, p, cfg2)")
            s[k] = int(v) if k == "k" else float(v)
        if "t" not in s or "cfg" not in s:
            raise SystemExit(f"--settings: every setting needs t= and cfg=, got {item!r}")
        out.append(s)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--point", type=Path, required=True, help="a colour-curve point folder (coarse/, fine/)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--settings", help='";"-separated settings, e.g. "t=0.9 cfg=3;t=0.8 cfg=3 p=0.8" (default: SETTINGS)')
    ap.add_argument("--name", default="sampling_sweep", help="file stem of the rows and the table")
    args = ap.parse_args(argv)
    settings = parse_settings(args.settings) if args.settings else SETTINGS

    import torch

    from colour_curve import base_plan
    from coarse2fine.apps.demo_report import evaluate_both
    from coarse2fine.bench.speed import machine_info
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.pipeline import CTFPipeline
    from coarse2fine.sampling import StageSampling

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_f = args.out / f"{args.name}.jsonl"
    done = {r["setting"] for r in map(json.loads, rows_f.read_text().splitlines())} if rows_f.exists() else set()
    plan = base_plan(args.seed)
    pipe = CTFPipeline.from_runs(args.point / "coarse", args.point / "fine")
    labels = torch.arange(9).repeat_interleave(args.per_class)
    for s in settings:
        if key(s) in done:
            continue
        s1 = StageSampling(temperature=s["t"], cfg_scale=s["cfg"], top_k=s.get("k", 0), top_p=s.get("p", 1.0))
        s2 = StageSampling(top_k=plan.fine_top_k, cfg_scale=s.get("cfg2", 1.0))
        o = pipe(labels, s1, s2, seed=args.seed)
        ev = evaluate_both(plan, {"ctf": o}, log=lambda m: None)["ctf"]
        grid = o.images.numpy().reshape(9, args.per_class, *o.images.shape[1:])[:, :8]
        save_grid(grid.reshape(-1, *o.images.shape[1:]), args.point / f"sweep_{key(s).replace(' ', '_')}.png", nrow=8)
        row = {"setting": key(s), **s, "class_accuracy": ev["class_accuracy"], "fd": ev["fd"], "n": ev["n"],
               "point": args.point.name, "seed": args.seed,
               "per_class_accuracy": {c: v["accuracy"] for c, v in ev["per_class_accuracy"].items()}}
        with open(rows_f, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{key(s)}: ClassAcc {ev['class_accuracy']:.3f}, FD {ev['fd']:.0f}", flush=True)
    rows = [json.loads(x) for x in rows_f.read_text().splitlines()]
    m = machine_info()
    lines = [f"# Sampling settings at one trained CTF point ({rows[0]['point']}, seed {rows[0]['seed']})", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/quality/colour_sampling_sweep.py --point "
             f".../{rows[0]['point']} --out {args.out}"
             + (f" --name {args.name} --settings \"{args.settings}\"" if args.settings else "") + f"`; {m.get('cpu')}, torch {m.get('torch')}, fp32, one thread.",
             "", "t, cfg, k, p: stage 1's temperature, CFG, top-k, top-p; cfg2: stage 2's CFG (stage 2 greedy). "
             f"{rows[0]['n']} samples, 50 per class.", "",
             "| setting | class accuracy | FD | per class (in the grid's row order) |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['class_accuracy']:.3f} | {r['fd']:.0f} | "
              + " ".join(f"{c.split()[0][:4]} {v:.2f}" for c, v in r.get("per_class_accuracy", {}).items()) + " |"
              for r in rows]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
