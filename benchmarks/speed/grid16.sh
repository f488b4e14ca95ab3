#!/usr/bin/env bash
# The paper's grid on a CPU (issue 32): 16x16 codes, K = 16384, C = 512, batch 64, one thread.
# Every table in benchmarks/results/speed_*grid16*_cpu.md comes from one of these steps; each .md starts
# with its command and machine. About 40 minutes on the shared 2-core dev box.
#
#   benchmarks/speed/grid16.sh [stage2|stage2big|ctf|compile|profile|bound|cfghead|keys|gptb|all] [extra flags for that step]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
# TAG names a second machine's files beside the first's: TAG=_epyc writes speed_ctf_grid16_cpu_epyc.md
TAG=${TAG:-}
export PYTHONPATH=src OMP_NUM_THREADS=1
STEP=${1:-all}
shift || true
GRID=(--grid 16 --codebook-size 16384 --clusters 512)
c2f() { "$PY" -m coarse2fine.cli "$@"; }

run() {
  case "$1" in
  stage2)  # old stage-2 sampler (whole [B, N, K] logits) vs the restricted head; memory per candidate
    "$PY" benchmarks/speed/stage2_head.py --preset GPT-tiny GPT-small --dtype fp32 bf16 --repeats 3 "${@:2}" \
        --json "$OUT/speed_stage2_grid16_cpu${TAG}.json" --md "$OUT/speed_stage2_grid16_cpu${TAG}.md" ;;
  stage2big)  # GPT-B and GPT-L as stage 2, per-call cost at batch 4 (batch 64 would take minutes per candidate here)
    "$PY" benchmarks/speed/stage2_head.py --preset GPT-B GPT-L --dtype fp32 --batch 4 --repeats 2 "${@:2}" \
        --json "$OUT/speed_stage2_grid16_gptb_l_cpu${TAG}.json" --md "$OUT/speed_stage2_grid16_gptb_l_cpu${TAG}.md" ;;
  ctf)  # CTF (stage 2 through the restricted head) vs the baseline; VQ-16 decode timed on 4 images, scaled to 64
    c2f bench sample --preset GPT-tiny GPT-small "${GRID[@]}" --dtype fp32 bf16 --threads 1 --repeats 3 \
        --untimed-rounds 0 --naive-repeats 0 --decode-images 4 "${@:2}" \
        --json "$OUT/speed_ctf_grid16_cpu${TAG}.json" --md "$OUT/speed_ctf_grid16_cpu${TAG}.md" ;;
  compile)  # the decode loop, eager vs torch.compile, against the matmul peak (the first 64 of 256 steps)
    "$PY" benchmarks/speed/decode_compile.py --preset GPT-small --tokens 64 --repeats 3 "${@:2}" \
        --json "$OUT/speed_decode_compile_grid16_cpu${TAG}.json" --md "$OUT/speed_decode_compile_grid16_cpu${TAG}.md" ;;
  profile)  # where a decode step's time goes
    "$PY" benchmarks/speed/decode_profile.py --preset GPT-small --tokens 64 "${@:2}" \
        --md "$OUT/speed_decode_profile_grid16_cpu${TAG}.md" ;;
  bound)  # rooflines at this machine's limits: the matmul peaks per CPU second and the copy bandwidth that
           # the ctf step measured (read from its JSON); stage 2 = the same backbone, and GPT-L as the paper
    for D in fp32 bf16; do
      read -r PEAK BW < <("$PY" -c 'import json, statistics as st, sys
recs = [r for r in json.load(open(sys.argv[1])) if r["bench"]["dtype"] == sys.argv[2]]
print(st.median(p for r in recs for p in r["cpu"]["matmul_peaks"]) / 1e12,
      st.median(r["mem_bandwidth_bytes_per_s"] for r in recs) / 1e9)' "$OUT/speed_ctf_grid16_cpu${TAG}.json" "$D")
      c2f bench bound --preset GPT-tiny GPT-small GPT-B GPT-L --fine-preset "" --grid 16 --dtype "$D" \
          --peak-tflops "$PEAK" --mem-gbps "$BW" "${@:2}" \
          --json "$OUT/speed_bound_grid16_cpu_$D${TAG}.json" --md "$OUT/speed_bound_grid16_cpu_$D${TAG}.md"
      c2f bench bound --preset GPT-B GPT-L --fine-preset GPT-L --grid 16 --dtype "$D" \
          --peak-tflops "$PEAK" --mem-gbps "$BW" "${@:2}" \
          --json "$OUT/speed_bound_grid16_cpu_${D}_l${TAG}.json" --md "$OUT/speed_bound_grid16_cpu_${D}_l${TAG}.md"
    done ;;
  cfghead)  # CFG on the hidden states before the head (today) vs on the 2B rows' logits (before), full loops
    "$PY" benchmarks/speed/cfg_before_head.py --dtype fp32 bf16 --rounds 4 "${@:2}" \
        --md "$OUT/speed_cfg_before_head_grid16_cpu${TAG}.md" ;;
  keys)  # the CPU key cache transposed (today) vs [B, H, L, hd] read through a transposed view (before)
    "$PY" benchmarks/speed/key_layout.py --dtype fp32 bf16 --rounds 4 "${@:2}" \
        --md "$OUT/speed_key_layout_grid16_cpu${TAG}.md" ;;
  gptb)  # GPT-B at the paper's grid: one timed round after the memory probe (each candidate runs minutes)
    c2f bench sample --preset GPT-B "${GRID[@]}" --dtype bf16 --threads 1 --repeats 1 --untimed-rounds 0 \
        --naive-repeats 0 --decode-images 2 "${@:2}" \
        --json "$OUT/speed_ctf_grid16_gptb_cpu${TAG}.json" --md "$OUT/speed_ctf_grid16_gptb_cpu${TAG}.md" ;;
  *) echo "usage: $0 [stage2|stage2big|ctf|compile|profile|bound|cfghead|keys|gptb|all] [extra flags]" >&2; exit 2 ;;
  esac
}

if [ "$STEP" = all ]; then
  for s in stage2 stage2big cfghead keys ctf bound compile profile gptb; do run "$s"; done
else
  run "$STEP" "$@"
fi
