"""Shared fixtures: tiny models and data so the suite runs on a 2-core CPU."""

import fcntl
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# Tests (and the runs they start as subprocesses, which inherit this) compile
# the same tiny programs many times: share one persistent compilation cache.
# Set before JAX is imported. The process that makes the cache (pytest-xdist's controller,
# whose workers inherit it) removes it when the session ends.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bnjax-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Implicit rank promotion ((B,) + (B, K)) is how broadcasting bugs hide: refuse it.
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")

import ml_collections
import pytest

from bnjax import config as config_lib, data, mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The sweep that `trained_sweep` trains with `python -m bnjax.main`, and that
# tests start, stop and resume themselves: ResNet-8, BN and no BN, three rates
# (so that two devices pad each arm from 3 members to 4), 12 steps of batch 8,
# checkpoints every 3 steps.
SWEEP_ARGS = ["--config=configs/lr_sweep.py:smoke", "--config.train.num_steps=12",
              "--config.sweep.lrs=(0.05,0.3,0.7)", "--config.sweep.seeds=(0,)",
              "--config.train.batch_size=8", "--config.data.synthetic_train_size=256",
              "--config.data.synthetic_test_size=64", "--config.eval_batch_size=64",
              "--config.log_every=2", "--config.eval_every=4", "--config.checkpoint.every=3"]
_LAUNCH_VARIABLES = ("BNJAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                     "JAX_PROCESS_ID")


def sweep_env(**variables: str) -> dict[str, str]:
  """A run's environment: one CPU device (XLA:CPU's rounding depends on the device count),
  the session's compilation cache, no multi-process variables but `variables`."""
  env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES}
  env.update(PYTHONPATH=REPO, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1", **variables)
  return env


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of configs/<name>.py, as config_flags would call it."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
  """ResNet-8 on 512 synthetic images, batch 8: seconds per test."""
  config = config_lib.base_config()
  config.model.depth = 8
  config.data.name = "synthetic"
  config.data.synthetic_train_size = 512
  config.data.synthetic_test_size = 64
  config.sweep.lrs = (0.01, 0.1)
  config.sweep.seeds = (0,)
  config.train.batch_size = 8
  config.train.num_steps = 6
  config.train.update(train_overrides)
  config.log_every = 2
  config.eval_every = 3
  config.eval_batch_size = 32
  return config


@pytest.fixture(scope="session")
def tiny_dataset() -> data.Dataset:
  """tiny_config's data, on one device as a run places it, so that steps compiled for it are
  the programs a run of tiny_config compiles (and bench.preflight's): compiled once per suite."""
  return mesh.place_replicated(data.synthetic(0, 512, 64), mesh.single_device_mesh())


@pytest.fixture(scope="session")
def trained_sweep(tmp_path_factory) -> pathlib.Path:
  """The workdir of SWEEP_ARGS trained by `python -m bnjax.main`, once per test run.

  Shared by the test files and by pytest-xdist's workers (the first to ask
  trains it, under a file lock): read it, and copy it before changing it.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's folder, above each worker's
  workdir, done = root / "trained-sweep", root / "trained-sweep.done"
  with open(root / "trained-sweep.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)
      result = subprocess.run([sys.executable, "-m", "bnjax.main", f"--workdir={workdir}",
                               *SWEEP_ARGS], cwd=REPO, env=sweep_env(), capture_output=True,
                              text=True, timeout=600)
      assert result.returncode == 0, result.stderr[-3000:]
      done.touch()
  return workdir


def pytest_sessionfinish(session, exitstatus):  # a hook: under xdist only workers run fixtures
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
