#!/usr/bin/env bash
# The GPU table of docs/performance.md in one command that ends within its budget:
#
#   bench/gpu.sh OUT [--budget_s=480] [--tiny] [--only=PATTERN,...] [--dry_run] [--cache_dir=DIR]
#
# The preflight (python -m bench.preflight), then the rows of bench/gpu_grid.py
# in the order of what they decide (ResNet-110 at M = 18 on every executor in
# float32 and bfloat16, the PyTorch baseline, ResNet-20, the M sweep,
# compile-only times, startup, then what else fits), each killed with its
# process group when its share of --budget_s runs out. OUT ends with four
# files: log.txt, manifest.json, results.json and table.md; caches and the
# synthetic data stay outside it. --tiny runs the same on a CPU in minutes.
# Installing on a GPU host without internet, and the command for one: bench/GPU.md.
# The Python that runs everything: $PYTHON (default python3).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m bench.gpu_grid "$@"
