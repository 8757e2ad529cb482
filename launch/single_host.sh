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
# JAX's persistent compilation cache: a relaunch (after preemption, or the
# next sweep of the same models) loads the compiled train and eval steps, and
# the small programs that initialise the members, instead of compiling them
# again (docs/performance.md, Startup). Point JAX_COMPILATION_CACHE_DIR
# elsewhere to move it, or set it to "" to turn it off.
cache_home="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR-$cache_home/bnjax/jax}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
python -m bnjax.main --config="$config" --workdir="$workdir" "$@" 2>&1 | tee -a "$workdir/log.txt"
