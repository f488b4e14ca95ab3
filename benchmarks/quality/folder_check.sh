#!/usr/bin/env bash
# The pipeline of docs/usage.md, command by command and with its defaults, on a plain class folder of your own
# images (ROOT/<class>/<image>): tokenizer, codes (the seeded 5% held-out split as `val`), clusters,
# stage 1, stage 2, the baseline, samples of both, then held-out NLL and image scores.
#
#   benchmarks/quality/folder_check.sh ROOT OUT [PRESET] [VQ_PRESET]
#
# PRESET: the transformers' preset (default GPT-tiny, minutes on a CPU). VQ_PRESET: the tokenizer's
# (default VQ-tiny, 32 px). A 64-px VQ preset (VQ-64-f8, VQ-64-f4) runs the 64-px colour path of
# docs/usage.md: the preset's own tokenizer recipe, the Lite0-probe classifier at 64 px trained on the images
# and on their reconstructions by OUT/tok (what samples look like), and samples at the colour demo's
# measured setting (temperature 0.9, CFG 5; SAMPLE_ARGS overrides it).
#
# Every command is printed before it runs; OUT/folder_check.md collects the numbers.
set -euo pipefail
ROOT=${1:?usage: folder_check.sh ROOT OUT [PRESET]}
OUT=${2:?usage: folder_check.sh ROOT OUT [PRESET]}
PRESET=${3:-GPT-tiny}
VQ_PRESET=${4:-VQ-tiny}
TOK=(); CLF=(); SAMPLE=()
if [ "$VQ_PRESET" != VQ-tiny ]; then TOK=(--vq-preset "$VQ_PRESET"); fi
case "$VQ_PRESET" in
  VQ-64-*) CLF=(--image-size 64 --backbone lite0-probe --tokenizer "$OUT/tok"); SAMPLE=(--temperature 0.9 --cfg 5) ;;
esac
if [ -n "${SAMPLE_ARGS:-}" ]; then read -r -a SAMPLE <<< "$SAMPLE_ARGS"; fi
C2F=${C2F:-coarse2fine}
DATA=(--data folder --data-root "$ROOT")
mkdir -p "$OUT"
run() { echo "+ $*" | tee -a "$OUT/commands.txt"; /usr/bin/time -f "  (%e s wall, %U s user CPU)" "$@"; }

[ -f "$OUT/tok/model.safetensors" ] || run $C2F train-tokenizer "${DATA[@]}" "${TOK[@]}" --out "$OUT/tok"
run $C2F reconstruct --tokenizer "$OUT/tok" "${DATA[@]}" --split val --out "$OUT/recon.png" | tee "$OUT/recon.txt"
[ -f "$OUT/codes/meta.json" ] || run $C2F extract-codes --tokenizer "$OUT/tok" "${DATA[@]}" --split train --out "$OUT/codes"
[ -f "$OUT/codes_val/meta.json" ] || run $C2F extract-codes --tokenizer "$OUT/tok" "${DATA[@]}" --split val --no-flip --out "$OUT/codes_val"
[ -f "$OUT/cmap/coarse_map.safetensors" ] || run $C2F cluster --tokenizer "$OUT/tok" --out "$OUT/cmap"
for stage in coarse fine baseline; do
  cm=(); [ $stage = baseline ] || cm=(--coarse-map "$OUT/cmap")
  [ -f "$OUT/$stage/summary.json" ] || run $C2F train --stage $stage --codes "$OUT/codes" --heldout "$OUT/codes_val" \
    "${cm[@]}" --preset "$PRESET" --out "$OUT/$stage" --no-progress > "$OUT/$stage.log"
done
run $C2F sample --coarse "$OUT/coarse" --fine "$OUT/fine" --per-class 20 "${SAMPLE[@]}" --out "$OUT/samples_ctf"
run $C2F sample --baseline "$OUT/baseline" --per-class 20 "${SAMPLE[@]}" --out "$OUT/samples_baseline"
[ -f "$OUT/classifier/config.json" ] || run $C2F train-classifier "${DATA[@]}" "${CLF[@]}" --out "$OUT/classifier"
for s in ctf baseline; do
  run $C2F eval --samples "$OUT/samples_$s" "${DATA[@]}" --split train --classifier "$OUT/classifier" \
    --json "$OUT/eval_$s.json" | tee "$OUT/eval_$s.txt"
done
python3 - "$OUT" "$ROOT" "$PRESET $VQ_PRESET" <<'EOF'
import json, sys
from pathlib import Path
out, root, preset = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
L = [f"# README pipeline with its defaults on `{root}` ({preset})", ""]
L += ["| model | held-out NLL (nats/token) | held-out acc | final train loss |", "|---|---|---|---|"]
for s in ("coarse", "fine", "baseline"):
    m = json.loads((out / s / "summary.json").read_text())
    L.append(f"| {s} | {m['heldout']['nll']:.3f} | {m['heldout']['acc']:.3f} | {m['loss']:.3f} |")
clf = json.loads((out / "classifier" / "config.json").read_text())["test"]
rec = json.loads((out / "classifier" / "config.json").read_text()).get("test_reconstructed")
L += ["", f"Classifier held-out accuracy {clf['accuracy']:.3f} on {clf['count']} {clf['split']} images"
      + (f", {rec['accuracy']:.3f} on the same images through the tokenizer." if rec else "."), ""]
L += ["| samples | " + " | ".join(r["metric"] for r in json.loads((out / "eval_ctf.json").read_text())["rows"]) + " |"]
L += ["|---" * (1 + len(json.loads((out / "eval_ctf.json").read_text())["rows"])) + "|"]
for s in ("ctf", "baseline"):
    rows = json.loads((out / f"eval_{s}.json").read_text())["rows"]
    L.append(f"| {s} | " + " | ".join(f"{r['value']:.4g}" if r["value"] is not None else "-" for r in rows) + " |")
(out / "folder_check.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
EOF
