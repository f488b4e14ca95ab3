#!/usr/bin/env python3
"""Score one finished demo's models with the paper's sampling defaults and with the demo's sharper
ones, on the same trained runs: how much of the class accuracy is the sampling's.

    PYTHONPATH=src python benchmarks/demo/sampling.py DEMO_DIR [--per-class 50]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from coarse2fine.apps.demo import DemoPlan
from coarse2fine.apps.demo_report import evaluate_both
from coarse2fine.distributed import configure_threads
from coarse2fine.pipeline import ARPipeline, CTFPipeline
from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, StageSampling

_D = DemoPlan()  # the demo's sampling, from its one home
SETTINGS = {
    f"paper (tau {CTF_COARSE_DEFAULT.temperature}, CFG {CTF_COARSE_DEFAULT.cfg_scale}; stage 2 tau "
    f"{CTF_FINE_DEFAULT.temperature} from all codes; baseline tau {BASELINE_DEFAULT.temperature}, CFG "
    f"{BASELINE_DEFAULT.cfg_scale})":
        (CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, BASELINE_DEFAULT),
    f"demo (tau {_D.temperature}, CFG {_D.cfg_scale}; stage 2 greedy; baseline tau {_D.temperature}, CFG "
    f"{_D.cfg_scale})":
        (StageSampling(temperature=_D.temperature, cfg_scale=_D.cfg_scale), StageSampling(top_k=_D.fine_top_k),
         StageSampling(temperature=_D.temperature, cfg_scale=_D.cfg_scale)),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("demo", type=Path)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "demo")
    args = ap.parse_args()
    configure_threads()
    ctf, base = CTFPipeline.from_runs(args.demo / "coarse", args.demo / "fine"), ARPipeline.from_runs(args.demo / "baseline")
    labels = torch.arange(ctf.num_classes).repeat_interleave(args.per_class)
    rows = []
    for name, (s1, s2, sb) in SETTINGS.items():
        ev = evaluate_both(DemoPlan(), {"ctf": ctf(labels, s1, s2, seed=0), "baseline": base(labels, sb, seed=0)},
                           log=lambda m: None)
        rows.append({"sampling": name, **{k: {m: ev[k][m] for m in ("fd", "kid", "class_accuracy")}
                                          for k in ("ctf", "baseline")}})
        print(rows[-1], flush=True)
    md = ["# Sampling settings on the same trained demo models", "",
          f"Models: {args.demo} (the emulated AVX2 fp32 run of runs.md); {len(labels)} samples per model, seed 0.", "",
          "| sampling | CTF class acc | CTF FD | CTF KID | baseline class acc | baseline FD | baseline KID |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        c, b = r["ctf"], r["baseline"]
        md.append(f"| {r['sampling']} | {c['class_accuracy']:.3f} | {c['fd']:.0f} | {c['kid']:.3f} | "
                  f"{b['class_accuracy']:.3f} | {b['fd']:.0f} | {b['kid']:.3f} |")
    (args.out / "sampling.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "sampling.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
