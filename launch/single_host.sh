#!/usr/bin/env bash
# Runs an experiment on this host's accelerators (or CPU), as one process.
#
#   launch/single_host.sh configs/lr_sweep.py runs/f1 [--config.field=value ...]
#
# What it runs: python -m bnjax.main --config=CONFIG --workdir=WORKDIR [overrides],
# with JAX's persistent compilation cache on, everything printed also
# appended to WORKDIR/log.txt. Rerunning the same command on the same
# WORKDIR resumes from the latest checkpoint; exit status 143 means the run
# was stopped by SIGTERM after saving one.
#
# What to edit: nothing in this file. Pick the experiment with CONFIG (a file
# in configs/, optionally with ":variant"), where its outputs go with
# WORKDIR, and change any config field on the command line with
# --config.field=value.
#
# Devices: the one process uses all of this host's GPUs. The sweep's members
# are sharded over all local devices by default; --config.mesh.members and
# --config.mesh.data choose the layout (how many devices split the members,
# how many split each batch). To run on a subset of the GPUs, set
# CUDA_VISIBLE_DEVICES=0,1 in front of the command. On a CPU-only host,
#   XLA_FLAGS=--xla_force_host_platform_device_count=4 launch/single_host.sh ...
# gives 4 host devices, to try a sharded layout without accelerators.
#
# On an NVIDIA GPU host, install JAX's CUDA build first:
#   pip install -e . "jax[cuda12]"
# For several hosts, see launch/slurm.sbatch and launch/tpu_pod.sh.
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
