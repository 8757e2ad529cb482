"""The `divergence` (F4) and `sgd_noise` (F2) jobs of `python -m bnjax.main`.

Each job trains one member per (arm, rate) from its seed with the normal SGD
step (`train.member_step`, momentum and weight decay included, at a constant
rate), measures it with the pure functions of `landscape` or `noise`, and
writes DIR/analysis/<name>.json (strict JSON, non-finite numbers as null)
and DIR/figures/<name>.png.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from bnjax import data, forward, plots, train, workdir as workdir_lib
from bnjax.analysis import common, landscape, noise


def constant_rate(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The train config with no schedule: the member's rate at every step."""
  return {**config.train.to_dict(), "lr_boundaries": (), "warmup_steps": 0}


def _use_host_loop(choice: str) -> bool:
  return choice == "host" or (choice == "auto" and jax.default_backend() == "cpu")


# ---------------------------------------------------------------- F4


def divergence_member(config: ml_collections.ConfigDict, dataset: data.Dataset, model,
                      lr: float, seed: int) -> list[dict[str, Any]]:
  """Trains one member at `lr`, measuring the line before each chosen update."""
  a = config.analysis
  tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
  step_fn = jax.jit(functools.partial(train.member_step, model, tx, constant_rate(config)))
  etas = tuple(float(e) for e in landscape.log_grid(a.eta_low, a.eta_high, a.num_etas))
  if _use_host_loop(a.eta_loop):
    measure = functools.partial(landscape.along_gradient_host, model, etas=etas,
                                threshold=a.threshold)
  else:
    measure = jax.jit(functools.partial(landscape.along_gradient, model, etas=etas,
                                        threshold=a.threshold))
  state, results = train.init_member(model, tx, seed, lr), []
  for step in range(max(a.minibatches)):
    images, labels = data.train_batch(dataset, config.train.data_seed, step,
                                      config.train.batch_size, config.data.augmentation)
    if step + 1 in a.minibatches:  # minibatch k is update k-1, measured before it
      found = jax.device_get(measure(train.model_variables(state), images, labels))
      results.append({"minibatch": step + 1, "step": step, **found})
      logging.info("divergence lr=%g minibatch %d: loss %.3g, max stable eta %.3g",
                   lr, step + 1, found["loss"], found["max_stable_eta"])
    state, _ = step_fn(state, images, labels, jnp.asarray(step, jnp.int32))
  return results


def divergence(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """F4: relative loss along the gradient at chosen minibatches, BN vs no BN."""
  dataset = data.load(config.data)
  workdir_lib.prepare(workdir, config)
  seed = int(config.sweep.seeds[0])
  arms = []
  for arm, model in common.arm_models(config):
    lr = float(config.analysis.lr_by_norm[arm.model_config["norm"]])
    arms.append({**arm.model_config, "lr": lr, "seed": seed,
                 "minibatches": divergence_member(config, dataset, model, lr, seed)})
  result = {"name": "divergence", "threshold": config.analysis.threshold,
            "bn_mode": "train (batch statistics of the minibatch)", "arms": arms}
  workdir_lib.write_analysis(workdir, "divergence", result)
  plots.divergence_figure(workdir_lib.jsonable(result), workdir_lib.figure_path(workdir, "divergence"))
  return result


# ---------------------------------------------------------------- F2


class NoiseProgram:
  """The jitted pieces of training and measuring members of one model."""

  def __init__(self, config: ml_collections.ConfigDict, model):
    self.model = model
    self.tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
    self.step = jax.jit(functools.partial(train.member_step, model, self.tx, constant_rate(config)))
    self.pool_stats = jax.jit(functools.partial(noise.pool_statistics, model))
    self.per_example = jax.jit(
        lambda v, x, y: noise.per_example_grads(noise.separable_loss(model, v), v["params"], x, y))
    self.statistics = jax.jit(noise.noise_statistics, static_argnums=1)
    self.train_noise = jax.jit(functools.partial(noise.train_mode_noise, model))


def trained_member(config, program: NoiseProgram, dataset: data.Dataset, lr: float,
                   seed: int) -> train.State:
  """The member after `analysis.train_steps` updates at constant rate `lr`."""
  state = train.init_member(program.model, program.tx, seed, lr)
  for step in range(config.analysis.train_steps):
    images, labels = data.train_batch(dataset, config.train.data_seed, step,
                                      config.train.batch_size, config.data.augmentation)
    state, _ = program.step(state, images, labels, jnp.asarray(step, jnp.int32))
  return state


def noise_member(config, program: NoiseProgram, state: train.State, pool: tuple,
                 lr: float) -> dict[str, Any]:
  """Every F2 number for one trained member on the pool (images, labels)."""
  a, batch = config.analysis, config.train.batch_size
  images, labels = pool
  size = labels.shape[0]
  variables = train.model_variables(state)
  fixed = program.pool_stats(variables, images)
  grads = jnp.concatenate([program.per_example(fixed, images[i:i + a.chunk], labels[i:i + a.chunk])
                           for i in range(0, size, a.chunk)])
  params = variables["params"]
  stats = program.statistics(grads, tuple(noise.leaf_sizes(params)))
  key_without, key_small, key_big = jax.random.split(jax.random.key(a.seed), 3)
  idx_without = noise.sample_without_replacement(key_without, size, batch, a.num_batches)
  idx_with = jax.random.randint(key_small, (a.num_batches, batch), 0, size)
  # Train-mode gradients cost one backward pass each: fewer batches.
  k = a.num_train_batches
  idx_small = idx_with[:k]
  idx_big = jax.random.randint(key_big, (k, a.big_batch), 0, size)
  train_noise = lambda idx: np.asarray([program.train_noise(variables, images[i], labels[i],
                                                            stats["mean_grad_P"]) for i in idx])
  trained_without = train_noise(idx_without[:k])
  small_sq, big_sq = train_noise(idx_small)[:, 1].mean(), train_noise(idx_big)[:, 1].mean()
  c = stats["C"]
  return {
      "lr": lr, "finite": forward.all_finite(grads), "C": c, "grad_sq_norm": stats["grad_sq_norm"],
      "bound": noise.sgd_noise_bound(lr, c, batch),
      "expected_without_replacement": noise.expected_noise_without_replacement(lr, c, batch, size),
      "measured": lr**2 * noise.minibatch_noise(stats["gram_NxN"], idx_without).mean(),
      "measured_with_replacement":
          lr**2 * noise.minibatch_noise(stats["gram_NxN"], idx_with).mean(),
      "measured_train_mode": lr**2 * trained_without[:, 0].mean(),
      "b_simple": stats["b_simple"],
      "b_simple_two_batch_train_mode": noise.two_batch_noise_scale(
          small_sq, big_sq, batch, a.big_batch)["b_simple"],
      "layer_C": _depth_ordered(noise.leaf_names(params), np.asarray(stats["C_L"]).tolist()),
  }


def _depth_ordered(names: list[str], values: list[float]) -> dict[str, float]:
  """{leaf path: value} in depth order (stem first, classifier last)."""
  module = lambda name: name.rsplit("/", 2)[0]
  return dict(sorted(zip(names, values), key=lambda item: common.depth_key(module(item[0]))))


def sgd_noise(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """F2: C, the bound α²C/|B| and the measured SGD noise for every (arm, rate)."""
  dataset = data.load(config.data)
  workdir_lib.prepare(workdir, config)
  n = config.analysis.pool_size
  pool = (data.normalize(dataset.train.images_Nx32x32x3[:n], dataset), dataset.train.labels_N[:n])
  seed = int(config.sweep.seeds[0])
  arms = []
  for arm, model in common.arm_models(config):
    program, members = NoiseProgram(config, model), []
    for lr in config.sweep.lrs:
      state = trained_member(config, program, dataset, float(lr), seed)
      record = {"lr": float(lr), "diverged": bool(state["diverged"])}
      if not record["diverged"]:
        record.update(jax.device_get(noise_member(config, program, state, pool, float(lr))))
      logging.info("sgd_noise %s lr=%g: %s", arm.model_config["norm"], lr,
                   {k: v for k, v in record.items() if k != "layer_C"})
      members.append(record)
    arms.append({**arm.model_config, "seed": seed, "members": members})
  result = {"name": "sgd_noise", "batch_size": config.train.batch_size, "pool_size": n,
            "train_steps": config.analysis.train_steps,
            "bn_mode": "per-example gradients with BN statistics of the pool held fixed;"
                       " measured_train_mode uses train-mode minibatch gradients",
            "arms": arms}
  workdir_lib.write_analysis(workdir, "sgd_noise", result)
  plots.sgd_noise_figure(workdir_lib.jsonable(result), workdir_lib.figure_path(workdir, "sgd_noise"))
  return result
