#!/usr/bin/env bash
# Runs an experiment on this host's accelerators (or CPU).
#
#   launch/single_host.sh configs/lr_sweep.py runs/f1 [--config.field=value ...]
#
# On an NVIDIA GPU host, install JAX's CUDA build first:
#   pip install -e . "jax[cuda12]"
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:VARIANT] WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config="$1"; workdir="$2"; shift 2
mkdir -p "$workdir"
python -m bnjax.main --config="$config" --workdir="$workdir" "$@" 2>&1 | tee -a "$workdir/log.txt"
