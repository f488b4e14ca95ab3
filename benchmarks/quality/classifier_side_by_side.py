"""The old and the new emoji64 class-accuracy instrument on the same samples, once (issue 29), so that
tables scored with the small CNN (test accuracy 0.688) can be read beside ones scored with the Lite0
probe (0.789).

    .venv/bin/python benchmarks/quality/classifier_side_by_side.py --old CLF_DIR --new CLF_DIR \\
        --ctf COARSE_RUN FINE_RUN --baseline BASELINE_RUN [--n 450]

Samples n class-balanced images from each pipeline (their own sampling defaults, seed 0, one thread) and
scores them with both classifiers; the real test images are scored too. Writes
benchmarks/results/classifier_emoji64/side_by_side.md + .json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    from coarse2fine.data.registry import build_dataset
    from coarse2fine.eval.classifier import load_classifier, predict_probs
    from coarse2fine.pipeline import ARPipeline, CTFPipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the classifier the earlier tables used")
    ap.add_argument("--new", type=Path, required=True, help="the Lite0 probe")
    ap.add_argument("--ctf", nargs=2, type=Path, metavar=("COARSE", "FINE"), required=True)
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--n", type=int, default=450)
    ap.add_argument("--label", default="", help="what the runs are, for the report")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "classifier_emoji64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    clfs = {name: load_classifier(d) for name, d in (("old", args.old), ("new", args.new))}
    test = build_dataset("emoji64", 64, "test")
    sets = {"real test images": (np.stack([test.get_raw(i) for i in range(len(test))]), np.asarray(test.labels))}
    labels = torch.arange(9).repeat(args.n // 9)
    pipes = {"CTF": CTFPipeline.from_runs(*args.ctf), "baseline": ARPipeline.from_runs(args.baseline)}
    for name, pipe in pipes.items():
        images = np.concatenate([pipe(labels[lo:lo + 150], seed=i).images.numpy()
                                 for i, lo in enumerate(range(0, len(labels), 150))])
        sets[f"{name} samples"] = (images, labels.numpy())
    rows = {}
    for what, (x, y) in sets.items():
        rows[what] = {c: float((predict_probs(m, x).argmax(1) == y).mean()) for c, (m, _) in clfs.items()}
    out = {"rows": rows, "n": args.n, "label": args.label,
           "old": {"dir": str(args.old), "test_accuracy": clfs["old"][1]["test"]["accuracy"]},
           "new": {"dir": str(args.new), "test_accuracy": clfs["new"][1]["test"]["accuracy"]},
           "runs": {"ctf": [str(p) for p in args.ctf], "baseline": str(args.baseline)}}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "side_by_side.json").write_text(json.dumps(out, indent=1))
    lines = ["# Old and new emoji64 classifier on the same images (issue 29)", "",
             f"`benchmarks/quality/classifier_side_by_side.py`: {args.n} class-balanced samples per pipeline "
             f"({args.label}), each pipeline's own sampling defaults, seed 0; class accuracy = the share "
             "classified as the class asked for.", "",
             f"| images | old: {clfs['old'][1]['arch'].get('type', 'cnn')} (test {out['old']['test_accuracy']:.3f}) | "
             f"new: {clfs['new'][1]['arch'].get('type', 'cnn')} (test {out['new']['test_accuracy']:.3f}) |",
             "|---|---|---|"]
    lines += [f"| {what} | {r['old']:.3f} | {r['new']:.3f} |" for what, r in rows.items()]
    (args.results / "side_by_side.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
