#!/usr/bin/env bash
# The GPU table of docs/performance.md in one command, within 10 minutes on one H100:
#
#   bench/gpu.sh [--tiny] [OUT] [--budget_s=570] [--only=PATTERN,...] [--dry_run]
#
# Runs the grid of bench/gpu_grid.py (ResNet-110 and ResNet-20, M in {1, 4, 18, 32},
# every executor, float32 with JAX's default precision (TF32 on a GPU), full float32
# and bfloat16, scanned blocks on and off, compile-only times, and the PyTorch
# baseline) in order of importance, printing each row's time estimate first and
# skipping, with the reason, what does not fit in the budget. Writes to OUT
# (default bench/results/gpu-YYYY-MM-DD):
#
#   <row>.json     one bench.throughput result per row
#   log.txt        everything printed (appended to by later runs)
#   manifest.json  every row: done, skipped or failed, why, estimated and actual seconds
#   results.json   all rows' records merged; table.md: their Markdown tables
#   cache/         compilation caches and the synthetic data, shared by the rows
#
# Running it again on the same OUT keeps the rows already measured and tries the
# others. --tiny runs the same grid on a CPU in minutes (ResNet-14 and ResNet-8,
# M in {2, 1}, batch 8, 2 timed steps). Installing on a GPU machine without
# internet access: bench/GPU.md.
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=--notiny
if [ "${1:-}" = "--tiny" ]; then tiny=--tiny; shift; fi
out="bench/results/gpu-$(date +%Y-%m-%d)"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out="$1"; shift; fi
python="${PYTHON:-python3}"
mkdir -p "$out"
set -o pipefail
{
  echo "# bench/gpu.sh $tiny $out $*  ($(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname))"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  fi
  PYTHONUNBUFFERED=1 "$python" -m bench.gpu_grid --out="$out" "$tiny" --python="$python" "$@"
} 2>&1 | tee -a "$out/log.txt"
