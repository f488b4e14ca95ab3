#!/usr/bin/env bash
# Speed benchmarks of coarse2fine sampling (CTF vs the LlamaGen-style baseline) and training.
#
#   benchmarks/speed/run.sh            quick: GPT-small only, fp32 + bf16, 3 rounds (a few minutes on 2 cores)
#   benchmarks/speed/run.sh full       what benchmarks/results/speed_*.md hold (CPU: ~30-60 min on a shared 2-core box)
#   benchmarks/speed/run.sh gpu        on a CUDA machine: paper-sized models, bf16, eager / compiled / CUDA graphs
#                                      (the prepared 10-minute GPU run, with tests and training: benchmarks/gpu/run.sh)
#
# Extra arguments after the mode go to every `coarse2fine bench` call (e.g. --threads 2).
# Results: benchmarks/results/speed_<name>.{md,json}; each .md starts with its command and machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/results}
MODE=${1:-quick}
shift || true
mkdir -p "$OUT"
c2f() { "$BIN/coarse2fine" "$@"; }

case "$MODE" in
quick)
  c2f bench sample --device cpu --preset GPT-small --repeats 3 --naive-repeats 1 "$@" \
      --json "$OUT/speed_quick.json" --md "$OUT/speed_quick.md"
  ;;
full)
  # 1 thread: on a CPU shared with other jobs two OpenMP threads stall each other (measured 20x slower
  # small matmuls at load 5 on 2 cores); the matmul peak is measured with the same thread count.
  c2f bench sample --device cpu --preset GPT-tiny GPT-small GPT-medium --threads 1 --repeats 5 --naive-repeats 1 "$@" \
      --json "$OUT/speed_sample_cpu.json" --md "$OUT/speed_sample_cpu.md"
  c2f bench sample --device cpu --preset GPT-small --compile default --threads 1 --repeats 5 --naive-repeats 0 "$@" \
      --json "$OUT/speed_sample_cpu_compile.json" --md "$OUT/speed_sample_cpu_compile.md"
  # GPT-B shapes with random weights, 8x8 tokens (64 instead of 256), K=16384, C=512; the VQ-16
  # decoder (128 px here) is timed on 4 images and scaled to 64 (identical for both methods)
  c2f bench sample --device cpu --preset GPT-B --grid 8 --dtype bf16 --threads 1 --repeats 5 --naive-repeats 0 \
      --decode-images 4 "$@" --json "$OUT/speed_sample_gptb_cpu.json" --md "$OUT/speed_sample_gptb_cpu.md"
  c2f bench sample --device cpu --preset GPT-B --fine-preset GPT-L --grid 8 --dtype bf16 --threads 1 --repeats 5 \
      --naive-repeats 0 --decode-images 4 "$@" \
      --json "$OUT/speed_sample_gptb_l_cpu.json" --md "$OUT/speed_sample_gptb_l_cpu.md"
  c2f bench train --device cpu --preset GPT-small --vq-preset VQ-tiny --threads 1 --repeats 5 "$@" \
      --json "$OUT/speed_train_cpu.json" --md "$OUT/speed_train_cpu.md"
  ;;
gpu)
  # the paper's setting: 256 tokens, batch 64, CFG 2.0, stage 2 = GPT-L; --mem-gbps: HBM bandwidth
  # of the card for the bandwidth bound (A100 80GB 2039, H100 SXM 3350, H200 4800)
  for P in GPT-B GPT-L GPT-XL; do
    c2f bench sample --device cuda --preset "$P" --fine-preset GPT-L --dtype bf16 --repeats 5 \
        --naive-repeats 1 "$@" --json "$OUT/speed_sample_gpu_$P.json" --md "$OUT/speed_sample_gpu_$P.md"
    c2f bench sample --device cuda --preset "$P" --fine-preset GPT-L --dtype bf16 --repeats 5 \
        --naive-repeats 0 --cuda-graphs "$@" \
        --json "$OUT/speed_sample_gpu_${P}_graphs.json" --md "$OUT/speed_sample_gpu_${P}_graphs.md"
  done
  c2f bench train --device cuda --preset GPT-B --vq-preset VQ-16 --batch-size 64 --dtype bf16 fp32 "$@" \
      --json "$OUT/speed_train_gpu.json" --md "$OUT/speed_train_gpu.md"
  ;;
*)
  echo "usage: $0 [quick|full|gpu] [extra coarse2fine bench flags]" >&2
  exit 2
  ;;
esac
