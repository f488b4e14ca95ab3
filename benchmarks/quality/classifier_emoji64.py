"""How strong can emoji64's class-accuracy instrument be? (issue 29) The small CNN the studies trained
(12 epochs at 64 px, as benchmarks/quality/study_core.py's emoji64 plan) against linear probes on frozen
EfficientNet-Lite0 features at 64, 128 and 224 px. Each is trained on the 5,145 training images and
scored on the 573 test images; one thread.

    .venv/bin/python benchmarks/quality/classifier_emoji64.py [--out runs/classifier_emoji64]

Writes benchmarks/results/classifier_emoji64/report.md + results.json. Trained classifiers resume
(a finished one is reused).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
CANDIDATES = {  # name -> train_classifier arguments
    "cnn-12ep": dict(backbone="cnn", epochs=12),
    "lite0-probe-64": dict(backbone="lite0-probe", feature_resolution=64),
    "lite0-probe-128": dict(backbone="lite0-probe", feature_resolution=128),
    "lite0-probe-224": dict(backbone="lite0-probe", feature_resolution=224),
}


def main() -> int:
    from coarse2fine.eval.classifier import train_classifier
    from tokenizer_study import cpu_flags, cpu_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "classifier_emoji64")
    ap.add_argument("--only", help="comma list of candidates (default: all)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "classifier_emoji64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.results.mkdir(parents=True, exist_ok=True)
    res_path = args.results / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    for name, kw in CANDIDATES.items():
        if (args.only and name not in args.only.split(",")) or name in results:
            continue
        c0 = time.process_time()
        cfg = train_classifier("emoji64", 64, args.out / name, **kw)
        results[name] = {"test_accuracy": cfg["test"]["accuracy"], "balanced": cfg["test"]["balanced"],
                         "per_class": cfg["test"]["per_class"], "train": cfg["train"],
                         "cpu_s": round(time.process_time() - c0, 1), "machine": f"{cpu_model()}; {cpu_flags()}",
                         "command": f"benchmarks/quality/classifier_emoji64.py --only {name}"}
        res_path.write_text(json.dumps(results, indent=1))
    lines = ["# The emoji64 class-accuracy instrument (issue 29)", "",
             "`benchmarks/quality/classifier_emoji64.py`: each classifier trained on the 5,145 emoji64 training "
             "images at 64 px and scored on the 573 test images (9 classes, chance 0.11), fp32, one thread.", "",
             "| classifier | test accuracy | balanced | train CPU-min |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['test_accuracy']:.3f} | {r['balanced']:.3f} | {r['cpu_s'] / 60:.1f} |")
    probes = {n: r for n, r in results.items() if "val_accuracy" in r["train"]}
    if probes:
        best = max(probes, key=lambda n: probes[n]["train"]["val_accuracy"])
        lines += ["", f"Chosen by validation accuracy (a tenth of the training split, never the test split): **{best}** "
                  f"(validation {probes[best]['train']['val_accuracy']:.3f}, test {probes[best]['test_accuracy']:.3f}). "
                  "The probes' L2 penalty is chosen the same way, from "
                  + ", ".join(sorted({k for r in probes.values() for k in r['train']['val_scores']}, key=float)) + "."]
    lines += ["", f"Machine: {next(iter(results.values()))['machine']}, other jobs sharing the two cores." if results else ""]
    (args.results / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
