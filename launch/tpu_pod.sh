#!/usr/bin/env bash
# Runs one sweep on every host of a Cloud TPU VM slice (a pod), started from
# your workstation:
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b \
#     launch/tpu_pod.sh configs/lr_sweep.py /home/me/runs/f1 [--config.field=value ...]
#
# What it runs: on every worker at once (gcloud compute tpus tpu-vm ssh
# --worker=all), in REPO_DIR there:
#   python3 -m bnjax.main --distributed --config=CONFIG --workdir=WORKDIR [overrides]
# with JAX's persistent compilation cache on. JAX finds the pod's hosts
# itself (jax.distributed.initialize() reads the TPU metadata); the sweep's
# members are sharded over all of the slice's chips, and --config.mesh.members
# and --config.mesh.data choose the layout. Only process 0 writes metrics,
# members.json, figures and JSON. Every worker's output is printed here.
#
# What to edit: nothing in this file; set in the environment:
#   TPU_NAME  (required) the TPU VM's name (gcloud compute tpus tpu-vm list).
#   ZONE      (required) its zone.
#   PROJECT   (optional) its Google Cloud project, if not gcloud's default.
#   REPO_DIR  (optional) the checkout on the workers, relative to the home
#             directory there or absolute; default: bnjax.
#   PYTHON    (optional) the workers' Python; default: python3.
#   JAX_COMPILATION_CACHE_DIR (optional) the cache on the workers; default
#             ~/.cache/bnjax/jax there; "" turns it off.
#
# WORKDIR is a path on the workers and must be one shared file system that
# every worker mounts at the same path, e.g. a Cloud Storage bucket mounted
# with gcsfuse (below). A gs:// URL is refused: Orbax could write checkpoints
# there, but process 0 writes metrics, members.json and figures with plain
# Python file I/O.
#
# One-time setup, from the workstation, on every worker with the same
# --worker=all ssh (rerun the copy step after changing the code):
#   gcloud compute tpus tpu-vm scp --recurse . "$TPU_NAME":bnjax --zone="$ZONE" --worker=all
#   (or --command='git clone YOUR_REPO_URL bnjax' with the ssh below)
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
#     --command='pip install -e ~/bnjax "jax[tpu]"'
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
#     --command='mkdir -p ~/runs && gcsfuse --implicit-dirs YOUR_BUCKET ~/runs'
#
# The run lasts as long as this ssh session: start it inside tmux or screen.
# On SIGTERM (a preempted spot TPU) every process saves a checkpoint and exits
# with status 143; rerun the same command to resume from it.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: TPU_NAME=NAME ZONE=ZONE $0 CONFIG[:VARIANT] WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
if [ -z "${TPU_NAME:-}" ]; then
  echo "error: TPU_NAME is not set; set it to the TPU VM's name" \
       "(gcloud compute tpus tpu-vm list)." >&2
  exit 2
fi
if [ -z "${ZONE:-}" ]; then
  echo "error: ZONE is not set; set it to the zone of TPU VM $TPU_NAME." >&2
  exit 2
fi
config="$1"; workdir="$2"; shift 2
if [[ "$workdir" == gs://* ]]; then
  echo "error: WORKDIR $workdir is a gs:// URL; mount the bucket with gcsfuse on every" \
       "worker and pass the mounted path." >&2
  exit 2
fi
if ! command -v gcloud >/dev/null; then
  echo "error: gcloud is not installed here; install the Google Cloud CLI to reach the TPU VM." >&2
  exit 2
fi

# The command every worker runs, each argument quoted for the workers' shell.
if [ -n "${JAX_COMPILATION_CACHE_DIR+set}" ]; then
  cache="$(printf %q "$JAX_COMPILATION_CACHE_DIR")"
else
  cache='"$HOME/.cache/bnjax/jax"'
fi
remote="cd $(printf %q "${REPO_DIR:-bnjax}") && JAX_COMPILATION_CACHE_DIR=$cache"
remote+=" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 $(printf %q "${PYTHON:-python3}")"
remote+=" -m bnjax.main --distributed"
for arg in "--config=$config" "--workdir=$workdir" "$@"; do
  remote+=" $(printf %q "$arg")"
done

project=()
if [ -n "${PROJECT:-}" ]; then
  project=(--project="$PROJECT")
fi
echo "bnjax: on every worker of $TPU_NAME: $remote" >&2
status=0
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker=all \
  --command="$remote" || status=$?
if [ "$status" -ne 0 ]; then
  echo "bnjax: exit status $status; after a SIGTERM (143 on the workers) a checkpoint was" \
       "saved: rerun the same command to resume." >&2
fi
exit "$status"
