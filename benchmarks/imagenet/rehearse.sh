#!/usr/bin/env bash
# The ImageNet run book (docs/imagenet.md) rehearsed end to end at toy size on a CPU.
#
#   benchmarks/imagenet/rehearse.sh --work DIR      (DIR new or empty; a few GB)
#   benchmarks/imagenet/rehearse.sh --work DIR --plan   (print the commands, run nothing)
#
# Python: $PYTHON if set, else the repo's .venv when it has one, else python3; its bin directory
# must hold `coarse2fine` and `torchrun` (pip install -e . puts them there). The sources come from src/.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
exec "$PYTHON" benchmarks/imagenet/rehearse.py "$@"
