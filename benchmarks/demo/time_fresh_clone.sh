#!/bin/bash
# Time a demo from a fresh clone, install excluded: `benchmarks/demo/time_fresh_clone.sh CLONE TARGET OUT [avx2]`.
#   CLONE  a fresh `git clone` of the commit to time, already `make install`ed (make re-checks the install)
#   TARGET demo | demo-colour (the Makefile target a user runs)
#   OUT    the timing file to write: commit, machine, load before and after, /usr/bin/time -v's times
#   avx2   cap torch to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2): an AVX2-only CPU
#          emulated on an AVX512 one; the demo then chooses fp32
# Run it on an idle box: the demo's one-thread stage processes share the cores with anything else.
set -u
CLONE=$(cd "$1" && pwd); TARGET=$2; OUT=$(realpath -m "$3"); CAP=${4:-}
cd "$CLONE"
{
  echo "commit $(git log --oneline -1)"
  echo "start $(date -u '+%Y-%m-%d %H:%M:%S') uptime: $(uptime)"
  lscpu | grep "Model name"
  grep -o -w 'fma\|avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
} > "$OUT"
if [ "$CAP" = avx2 ]; then export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2; fi
/usr/bin/time -v make "$TARGET" > "$OUT.console" 2> "$OUT.time"
echo "rc $?" >> "$OUT"
echo "end $(date -u '+%Y-%m-%d %H:%M:%S') uptime: $(uptime)" >> "$OUT"
grep -E "User time|System time|Elapsed|Maximum resident" "$OUT.time" >> "$OUT"
rm -f "$OUT.time"
