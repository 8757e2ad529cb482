"""Shared fixtures: tiny models and data so the suite runs on a 2-core CPU."""

import importlib.util
import os
import shutil
import tempfile

# Tests (and the runs they start as subprocesses, which inherit this) compile
# the same tiny programs many times: share one persistent compilation cache.
# Set before JAX is imported.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="bnjax-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Implicit rank promotion ((B,) + (B, K)) is how broadcasting bugs hide: refuse it.
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")

import ml_collections
import pytest

from bnjax import config as config_lib, data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  return data.synthetic(0, 512, 64)


@pytest.fixture(scope="session", autouse=True)
def _remove_compilation_cache():
  yield
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
