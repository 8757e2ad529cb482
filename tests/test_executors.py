"""Executors: every way of sharing the device gives the same members, and isolates divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import executor

from arms import assert_close, run_arm
from conftest import tiny_config


def test_sequential_chunked_and_map_executors_agree_with_vmap(tiny_dataset):
  config = tiny_config(num_steps=100)
  lrs, seeds = [0.01, 0.02, 0.05, 0.1], [0, 1, 2, 3]
  vmapped = run_arm(config, tiny_dataset, "batch", lrs, seeds, chunk=4, steps=2)
  # Chunks of 3 and 1 (a ragged last chunk, and the sequential executor's
  # one-member program).
  others = [run_arm(config, tiny_dataset, "batch", lrs, seeds, chunk=3, steps=2)]
  # The map executor: one call, the members looped inside it one at a time. (k > 1 vmapped
  # per iteration is lax.map's batch_size, whose ragged remainder JAX itself tests.)
  others.append(run_arm(config, tiny_dataset, "batch", lrs, seeds, chunk=4, steps=2,
                        loop_members=1))
  for other in others:
    assert_close(other.params, vmapped.params, 1e-5)
    np.testing.assert_array_equal(other.diverged, vmapped.diverged)


def test_map_executor_runs_every_member_in_one_call():
  assert executor.chunk_size("map", 5, 2) == 5
  assert executor.loop_members("map", 1) == 1 and executor.loop_members("vmap", 1) is None
  assert executor.loop_members("auto", 1, backend="cpu") is None


@pytest.mark.parametrize("chunk, loop_members", [(1, None), (3, None), (3, 1)])
def test_diverged_member_is_frozen_and_does_not_touch_the_others(chunk, loop_members,
                                                                  tiny_dataset):
  config = tiny_config(num_steps=100)
  run = lambda lrs, seeds: run_arm(config, tiny_dataset, "none", lrs, seeds, chunk, 4, loop_members)
  bad = run([0.01, 0.05, 1e4], [0, 1, 2])
  assert bad.diverged.tolist() == [False, False, True]
  assert 0 <= int(bad.diverged_step[2]) < 4
  assert bad.diverged_step[:2].tolist() == [-1, -1]
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(bad.params))
  # Bit-identical survivors: against the same program with a healthy third
  # member, and (one member per call) against a sweep without it.
  benign = run([0.01, 0.05, 0.02], [0, 1, 2])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[:2], b[:2]), bad, benign)
  if chunk == 1:
    without = run([0.01, 0.05], [0, 1])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[:2], b), bad, without)
