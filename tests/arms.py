"""Training one arm of members in tests: compiled once per config, norm and member loop."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections

from bnjax import executor, train
from bnjax.models import make_model


@functools.cache
def compiled_arm(config_json: str, norm: str, loop_members: int | None = None):
  """(model, tx, step_fn, eval_fn) of an arm, built once per config, norm and member loop."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  model = make_model({**config.model.to_dict(), "norm": norm})
  tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
  step_fn = train.make_arm_step(model, tx, config.train.to_dict(), config.data.augmentation,
                                loop_members)
  return model, tx, step_fn, train.make_arm_eval(model, config.eval_batch_size)


def trajectory(config, dataset, norm: str, lrs: list[float], seeds: list[int], chunk: int,
                steps: int, loop_members: int | None = None) -> list:
  """Trains members of one arm; the stacked state (numpy) after each step."""
  model, tx, step_fn, eval_fn = compiled_arm(config.to_json(), norm, loop_members)
  states = train.init_arm(model, tx, tuple(seeds), jnp.asarray(lrs, jnp.float32))
  arm = executor.ArmExecutor.create(step_fn, eval_fn, states, chunk, streams=tuple(seeds))
  snapshots = [jax.device_get(arm.states)]
  for t in range(steps):
    arm.step(dataset, jnp.asarray(t, jnp.int32))
    snapshots.append(jax.device_get(arm.states))  # a copy: the step donates its inputs
  return snapshots


def run_arm(config, dataset, norm: str, lrs: list[float], seeds: list[int], chunk: int, steps: int,
         loop_members: int | None = None):
  """Trains members of one arm for `steps` steps; returns the stacked state."""
  return trajectory(config, dataset, norm, lrs, seeds, chunk, steps, loop_members)[-1]


def assert_close(a, b, rel: float) -> None:
  """Global relative difference of two pytrees is below `rel`."""
  diff = tree_norm(jax.tree.map(jnp.subtract, a, b))
  assert float(diff) <= rel * float(tree_norm(b)), (float(diff), float(tree_norm(b)))


def tree_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32)))
                      for x in jax.tree.leaves(tree)))
