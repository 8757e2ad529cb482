"""Multi-process start-up: one process per host (or per GPU) joins one JAX run.

`initialize` must run before any other JAX call touches devices (jax.devices,
an array, a compiled step): JAX fixes the set of devices when its backend
starts. With no arguments `jax.distributed.initialize()` finds the processes
of a SLURM job, an Open MPI launch or a Cloud TPU pod itself; anywhere else
the launcher sets, in every process:

  JAX_COORDINATOR_ADDRESS  host:port of process 0, reachable from every host
  JAX_NUM_PROCESSES        how many processes join the run
  JAX_PROCESS_ID           this process's index, 0 .. JAX_NUM_PROCESSES - 1

JAX reads JAX_COORDINATOR_ADDRESS (and JAX_LOCAL_DEVICE_IDS,
JAX_COORDINATOR_PORT, JAX_COORDINATOR_BIND_ADDRESS) itself but not the
other two, so `initialize` reads those and passes them on.

Every process runs the same program on its own devices. In a sweep
(`loop.train_sweep`) every process fetches what is logged (`mesh.fetch`, a
collective) and saves and restores its share of each checkpoint, but only
the writer (process 0, `is_writer`) claims the workdir (`workdir.claim`: its
checks and its lock; every process stops with its refusal, `first_message`)
and writes config.json, members.json, metrics.jsonl, figures and JSON.
bnjax notes SIGTERM and SIGINT itself and agrees on them over the processes
(`any_process`), so `initialize` turns JAX's preemption service off: its
SIGTERM handler would swallow a signal that arrives outside the training
loop.
"""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from bnjax import errors

ENV_FLAG = "BNJAX_DISTRIBUTED"

# The fix for a failed start-up, by a phrase of JAX's message; _CLUSTER_FIX otherwise.
_CLUSTER_FIX = (
    "start it under SLURM (srun), Open MPI or on a TPU pod, or set JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES and JAX_PROCESS_ID in every process, or drop --distributed and "
    f"{ENV_FLAG} for a single-process run")
_FIXES = {
    "must be called before": "call bnjax.distributed.initialize before anything touches JAX",
}


def requested_by_env() -> bool:
  """Whether BNJAX_DISTRIBUTED asks for a multi-process run ("1" yes; unset, "" or "0" no)."""
  value = os.environ.get(ENV_FLAG, "").strip()
  if value not in ("", "0", "1"):
    raise errors.ConfigError(
        f"{ENV_FLAG}={value!r} is not 0 or 1; set {ENV_FLAG}=1 to join a multi-process run.")
  return value == "1"


def _env_int(name: str) -> int | None:
  """The integer in environment variable `name`, or None when it is unset or empty."""
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise errors.ConfigError(
        f"{name}={value!r} is not an integer; set it to one, or unset it where SLURM, "
        "Open MPI or a TPU pod is detected.") from None


def _explicit_args() -> dict[str, str | int]:
  """jax.distributed.initialize's arguments that the launcher set in JAX_* variables."""
  args = {
      "coordinator_address": os.environ.get("JAX_COORDINATOR_ADDRESS", "").strip() or None,
      "num_processes": _env_int("JAX_NUM_PROCESSES"),
      "process_id": _env_int("JAX_PROCESS_ID"),
  }
  return {name: value for name, value in args.items() if value is not None}


def _first_sentence(error: Exception) -> str:
  """The first sentence of `error`'s message, without its full stop, or its type's name."""
  lines = str(error).strip().splitlines()
  text = lines[0].strip() if lines else ""
  return text.split(". ")[0].rstrip(".") or type(error).__name__


def initialize(requested: bool) -> None:
  """Joins a multi-process run when `requested` or BNJAX_DISTRIBUTED=1; else does nothing.

  Call it first, before anything touches JAX's devices. A failure (no cluster
  detected, a coordinator that cannot be reached, JAX's backend already started)
  raises ConfigError naming the cause and the fix.
  """
  if not (requested_by_env() or requested):  # checks BNJAX_DISTRIBUTED either way
    return
  if jax.distributed.is_initialized():
    return
  jax.config.update("jax_enable_preemption_service", False)  # see the module docstring
  try:
    jax.distributed.initialize(**_explicit_args())
  except (RuntimeError, ValueError, TypeError) as e:
    fix = next((fix for phrase, fix in _FIXES.items() if phrase in str(e)), _CLUSTER_FIX)
    raise errors.ConfigError(
        f"joining the multi-process run failed ({_first_sentence(e)}): {fix}.") from e


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 (always, in a one-process run)."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """Whether `flag` is set in any process: a collective, so every process must call it."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


_MESSAGE_BYTES = 2048


def first_message(message: str | None) -> str | None:
  """The `message` of the lowest-numbered process that has one (None if none has).

  A collective, so every process must call it: the processes agree, say,
  on why the writer refused a workdir, and all stop with its sentence
  (truncated to 2 KiB of UTF-8).
  """
  if jax.process_count() == 1:
    return message
  encoded = (message or "").encode()[:_MESSAGE_BYTES]
  buffer = np.zeros(_MESSAGE_BYTES, np.uint8)
  buffer[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  for row in np.asarray(multihost_utils.process_allgather(buffer)):
    text = bytes(row).rstrip(b"\0").decode(errors="ignore")
    if text:
      return text
  return None


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier `name` (nothing in a one-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
