#!/usr/bin/env bash
# The one-shot GPU run (benchmarks/gpu/README.md): at most 10 minutes on one H100/H200.
#
#   benchmarks/gpu/run.sh [--toy] [--out DIR] [more run.py flags]
#
# Python: $PYTHON if set, else the repo's .venv when it has one, else python3 (on the GPU machine:
# the system python3 that holds PyTorch). The sources come from src/ (no install needed).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu/run.py "$@"
