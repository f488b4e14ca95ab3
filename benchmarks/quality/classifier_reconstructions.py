"""Does the class-accuracy instrument see what the tokenizer can show? emoji64's classifiers scored on the
real test images, on the same images encoded and decoded by the colour demo's tokenizer, and on samples
of trained colour-curve points at the demo's sampling setting, side by side (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/quality/classifier_reconstructions.py \\
        --clf "originals only=OLD_DIR" --clf "with reconstructions=NEW_DIR" \\
        --points /work/c2f_colour/curve/GPT-tiny_1000_s0 ... [--tokenizer DIR]

--tokenizer defaults to the shipped demo_emoji64 tokenizer; each point folder holds coarse/, fine/ and
baseline/ runs (colour_curve.py's work folder; the seed is the folder's _sN suffix). Writes
benchmarks/results/classifier_emoji64/reconstructions.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
CLASSES_SHORT = ("Activ", "Animals", "Flags", "Food", "Objects", "People", "Smileys", "Symbols", "Travel")


def main(argv=None) -> int:
    from coarse2fine.bench.speed import machine_info
    from coarse2fine.data.builtin import demo_asset_dir
    from coarse2fine.data.registry import build_dataset
    from coarse2fine.eval.classifier import load_classifier, predict_probs, round_trip
    from coarse2fine.pipeline import ARPipeline, CTFPipeline
    from coarse2fine.sampling import StageSampling

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clf", action="append", required=True, metavar="NAME=DIR", help="a classifier run, named")
    ap.add_argument("--points", nargs="+", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, default=demo_asset_dir("emoji64") / "tokenizer")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "classifier_emoji64")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    clfs = {}
    for spec in args.clf:
        name, _, d = spec.partition("=")
        clfs[name] = load_classifier(d)
    test = build_dataset("emoji64", 64, "test")
    x_te, y_te = np.stack([test.get_raw(i) for i in range(len(test))]), np.asarray(test.labels)
    sets = {"real test images": (x_te, y_te), "the same through the tokenizer": (round_trip(args.tokenizer, x_te, 64), y_te)}
    labels = torch.arange(9).repeat_interleave(args.per_class)
    stage1 = StageSampling(temperature=args.temperature, cfg_scale=args.cfg)
    for p in args.points:
        seed = int(p.name.rsplit("_s", 1)[1])
        t = time.process_time()
        ctf = CTFPipeline.from_runs(p / "coarse", p / "fine")(labels, stage1, StageSampling(top_k=1), seed=seed)
        base = ARPipeline.from_runs(p / "baseline")(labels, stage1, seed=seed)
        sets[f"CTF, {p.name}"] = (ctf.images.numpy(), labels.numpy())
        sets[f"baseline, {p.name}"] = (base.images.numpy(), labels.numpy())
        print(f"{p.name}: sampled in {time.process_time() - t:.0f} CPU-s", flush=True)
    rows: dict = {}
    for what, (x, y) in sets.items():
        rows[what] = {}
        for name, (m, _) in clfs.items():
            pred = predict_probs(m, x).argmax(1)
            rows[what][name] = {"accuracy": float((pred == y).mean()),
                                "per_class": [float((pred[y == c] == c).mean()) for c in range(9)]}
    mi = machine_info()
    out = {"rows": rows, "per_class": args.per_class, "temperature": args.temperature, "cfg": args.cfg,
           "tokenizer": str(args.tokenizer), "classifiers": {n: str(d) for n, d in (s.partition("=")[::2] for s in args.clf)},
           "machine": mi}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "reconstructions.json").write_text(json.dumps(out, indent=1) + "\n")
    names = list(clfs)
    lines = ["# emoji64's class-accuracy instruments on originals, reconstructions and samples (issue 29)", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/quality/classifier_reconstructions.py "
             f"{' '.join(sys.argv[1:])}`", "",
             "Classifiers: 'originals only' is the emoji64 classifier shipped before commit 2248567 (a Lite0 probe "
             "trained on the real training images; `git worktree add /tmp/old 1469797` puts it in "
             "/tmp/old/src/coarse2fine/data/assets/demo_emoji64/classifier); 'with reconstructions' is the one "
             "shipped since, trained on the training images and on the shipped tokenizer's reconstructions of them "
             "(`scripts/make_demo_assets.py --data emoji64 --classifier-only`).", "",
             f"Machine: {mi.get('cpu')}, torch {mi.get('torch')}, fp32, one thread. Samples: {args.per_class} per "
             f"class at the colour demo's setting (stage 1 temperature {args.temperature}, CFG {args.cfg}; stage 2 "
             "greedy), the point's own seed. Class accuracy = the share classified as the class asked for.", "",
             "| images | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
    lines += [f"| {what} | " + " | ".join(f"{r[n]['accuracy']:.3f}" for n in names) + " |" for what, r in rows.items()]
    lines += ["", "Per class (" + ", ".join(CLASSES_SHORT) + "):", "",
              "| images | classifier | " + " | ".join(CLASSES_SHORT) + " |", "|---|---" + "|---" * 9 + "|"]
    for what, r in rows.items():
        for n in names:
            lines.append(f"| {what} | {n} | " + " | ".join(f"{v:.2f}" for v in r[n]["per_class"]) + " |")
    (args.results / "reconstructions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
