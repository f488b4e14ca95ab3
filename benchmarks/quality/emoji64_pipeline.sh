#!/usr/bin/env bash
# The pipeline of docs/usage.md, command by command, on emoji64 at 64 px with 8x8 codes (VQ-64-f8): tokenizer
# (or TOK, one already trained with the same command), reconstructions, codes of the train split (with
# flips) and of the test split, k-means to K/32 clusters, stage 1, stage 2 and the baseline (the same
# preset, batch and steps; trained side by side as one-thread processes), samples of both with the
# library's defaults, a classifier trained on emoji64, FD/KID/class accuracy against the test images.
#
#   benchmarks/quality/emoji64_pipeline.sh OUT [STEPS] [PRESET] [TOK]    # default 1500 steps, GPT-tiny
#
# Every command is printed before it runs (OUT/commands.txt); OUT/report.md collects the numbers and
# OUT/samples_ctf_vs_baseline.png shows CTF (left) beside the baseline (right), one row per class.
set -euo pipefail
OUT=${1:?usage: emoji64_pipeline.sh OUT [STEPS] [PRESET] [TOK]}
STEPS=${2:-1500}
PRESET=${3:-GPT-tiny}
TOK=${4:-$OUT/tok}
C2F=${C2F:-coarse2fine}
PY=${PY:-python3}   # a Python with numpy and Pillow (the venv's)
DATA=(--data emoji64)
mkdir -p "$OUT"
run() { echo "+ $*" | tee -a "$OUT/commands.txt"; /usr/bin/time -f "  (%e s wall, %U s user CPU)" "$@"; }

[ -f "$TOK/model.safetensors" ] || run $C2F train-tokenizer "${DATA[@]}" --vq-preset VQ-64-f8 --out "$TOK"
run $C2F reconstruct --tokenizer "$TOK" "${DATA[@]}" --split test --num-shown 32 --out "$OUT/recon.png" | tee "$OUT/recon.txt"
[ -f "$OUT/codes/meta.json" ] || run $C2F extract-codes --tokenizer "$TOK" "${DATA[@]}" --split train --out "$OUT/codes"
[ -f "$OUT/codes_test/meta.json" ] || run $C2F extract-codes --tokenizer "$TOK" "${DATA[@]}" --split test --no-flip --out "$OUT/codes_test"
[ -f "$OUT/cmap/coarse_map.safetensors" ] || run $C2F cluster --tokenizer "$TOK" --out "$OUT/cmap"
pids=()
for stage in coarse fine baseline; do
  cm=(); [ $stage = baseline ] || cm=(--coarse-map "$OUT/cmap")
  resume=(); [ -f "$OUT/$stage/state.pt" ] && resume=(--resume)
  [ -f "$OUT/$stage/summary.json" ] && continue
  run $C2F train --stage $stage --codes "$OUT/codes" --heldout "$OUT/codes_test" "${cm[@]}" --preset "$PRESET" \
    --steps "$STEPS" --threads 1 --out "$OUT/$stage" --no-progress "${resume[@]}" > "$OUT/$stage.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
run $C2F sample --coarse "$OUT/coarse" --fine "$OUT/fine" --per-class 40 --out "$OUT/samples_ctf"
run $C2F sample --baseline "$OUT/baseline" --per-class 40 --out "$OUT/samples_baseline"
[ -f "$OUT/classifier/config.json" ] || run $C2F train-classifier "${DATA[@]}" --image-size 64 --epochs 12 --out "$OUT/classifier"
for s in ctf baseline; do
  run $C2F eval --samples "$OUT/samples_$s" "${DATA[@]}" --split test --classifier "$OUT/classifier" \
    --json "$OUT/eval_$s.json" | tee "$OUT/eval_$s.txt"
done
$PY - "$OUT" "$PRESET" "$STEPS" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np
from PIL import Image

out, preset, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
L = [f"# The README pipeline on emoji64 (64 px, VQ-64-f8: 8x8 codes), {preset}, {steps} steps", ""]
L += [f"Commands: `commands.txt`. Tokenizer on the test split: {(out / 'recon.txt').read_text().strip()}", ""]
L += ["| model | held-out NLL (nats/token) | held-out acc | final train loss |", "|---|---|---|---|"]
for s in ("coarse", "fine", "baseline"):
    m = json.loads((out / s / "summary.json").read_text())
    L.append(f"| {s} | {m['heldout']['nll']:.3f} | {m['heldout']['acc']:.3f} | {m['loss']:.3f} |")
clf = json.loads((out / "classifier" / "config.json").read_text())["test"]
L += ["", f"Classifier accuracy on real test images: {clf['accuracy']:.3f} ({clf['count']} {clf['split']} images).", ""]
rows = {s: json.loads((out / f"eval_{s}.json").read_text())["rows"] for s in ("ctf", "baseline")}
L += ["| samples | " + " | ".join(r["metric"] for r in rows["ctf"]) + " |", "|---" * (1 + len(rows["ctf"])) + "|"]
for s in ("ctf", "baseline"):
    L.append(f"| {s} | " + " | ".join(f"{r['value']:.4g}" if r["value"] is not None else "-" for r in rows[s]) + " |")
(out / "report.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
# one row per class: 6 CTF samples, a gap, 6 baseline samples
z = {s: np.load(out / f"samples_{s}" / "samples.npz") for s in ("ctf", "baseline")}
lab = {s: z[s]["labels"] if "labels" in z[s] else None for s in z}
imgs = {s: z[s]["arr_0"] if "arr_0" in z[s] else z[s]["images"] for s in z}
rows_img = []
for c in sorted(set(lab["ctf"].tolist())):
    half = [np.concatenate(list(imgs[s][lab[s] == c][:6]), axis=1) for s in ("ctf", "baseline")]
    gap = np.full((half[0].shape[0], 16, 3), 255, np.uint8)
    rows_img.append(np.concatenate([half[0], gap, half[1]], axis=1))
Image.fromarray(np.concatenate(rows_img, axis=0)).save(out / "samples_ctf_vs_baseline.png")
EOF
