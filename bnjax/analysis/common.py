"""Pieces every analysis needs: the loss, recorded layers in depth order, members at init."""

import re
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bnjax import data, forward, sweep, train
from bnjax.models import init_variables as init_model_variables, make_model, resnet

Variables = Mapping[str, Any]


def loss(model: nn.Module, variables: Variables, images_BxHxWxC: jax.Array,
         labels_B: jax.Array, train_mode: bool = True) -> jax.Array:
  """Mean cross-entropy of a batch; in train mode BN uses batch statistics.

  Train mode is what the optimizer sees, so it is the default for the
  gradient analyses. The updated BN statistics are discarded. NaN when any
  activation overflowed (`bnjax.forward`), whatever number XLA computed.
  """
  mutable = ["batch_stats"] if train_mode else []
  logits, _, finite = forward.apply(model, variables, images_BxHxWxC, train_mode, mutable)
  return jnp.where(finite, train.cross_entropy(logits, labels_B), jnp.nan)


def loss_and_grad(model: nn.Module, variables: Variables, images_BxHxWxC: jax.Array,
                  labels_B: jax.Array, params: Any = None) -> tuple[jax.Array, Any]:
  """The optimizer's view: train-mode minibatch loss and its gradient ∂L/∂θ.

  Taken at `params` (default: `variables["params"]`), BN normalising with
  the batch's statistics and its running averages left untouched. When an
  activation overflowed or the gradient is not finite, the loss and every
  gradient entry are NaN, so that no caller can mistake the pass for a
  finite one.
  """
  params = variables["params"] if params is None else params
  def loss_fn(p):
    logits, _, finite = forward.apply(model, {**variables, "params": p}, images_BxHxWxC,
                                      train=True, mutable=["batch_stats"])
    return train.cross_entropy(logits, labels_B), finite
  (value, finite), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  ok = finite & jnp.isfinite(value) & forward.all_finite(grads)
  # A cond, not a `where` per leaf: on XLA:CPU the latter took a ResNet-110
  # gradient's compile from 15 s to 80 s.
  grads = jax.lax.cond(ok, lambda g: g, lambda g: jax.tree.map(_nan_like, g), grads)
  return jnp.where(ok, value, jnp.nan), grads


def _nan_like(x: jax.Array) -> jax.Array:
  return jnp.full_like(x, jnp.nan)


def check_layers(layers: tuple[int, ...], num_layers: int, kind: str) -> None:
  """Refuses layer numbers outside 1..num_layers, which would index from the end or fail.

  `kind` names what is counted ("weight", "conv") in the one-sentence error.
  """
  bad = [k for k in layers if not 1 <= k <= num_layers]
  if bad:
    raise ValueError(f"Layers {bad} do not exist: this model's {kind} layers are"
                     f" 1..{num_layers}, so pick layers in that range.")


def recorded_layers(model: nn.Module, variables: Variables, images_BxHxWxC: jax.Array,
                    kind: str, train_mode: bool = True) -> list[tuple[str, jax.Array]]:
  """[(module path, activation)] of every recorded `kind`, in depth order.

  `kind` is one of conv_out, norm_out, branch_out, block_out, logits (see
  bnjax/models/resnet.py). Module names carry their position, so sorting
  by path gives depth order (stem, stage1_block00, ..., stage3_block17),
  for scanned models too (`resnet.unscan`).
  """
  _, state = model.apply(variables, images_BxHxWxC, train=train_mode,
                         mutable=["intermediates", "batch_stats"])
  flat = flax.traverse_util.flatten_dict(resnet.unscan(state["intermediates"]), sep="/")
  found = [(path.rsplit("/", 1)[0] if "/" in path else "", values[0])
           for path, values in flat.items() if path.rsplit("/", 1)[-1] == kind]
  return sorted(found, key=lambda item: depth_key(item[0]))


def depth_key(path: str) -> tuple:
  """Sort key of a module path in depth order, the classifier last.

  stem < stage1_block00/conv_norm1 < .../conv_norm2 < .../projection <
  stage1_block01 < ... < stage1_block100 < ... < stage2_block00 ... <
  classifier. Numbers in names compare as numbers, so that stages of 100
  or more blocks (ResNet-608 and deeper) stay in order.
  """
  order = {"stem": 0, "conv_norm1": 1, "conv_norm2": 2, "projection": 3, "classifier": 8, "": 9}
  return tuple((order.get(p, 5), _natural(p)) for p in path.split("/"))


def _natural(name: str) -> tuple:
  """"stage1_block100" -> ("stage", 1, "_block", 100, ""): digit runs compare as integers."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def arm_models(config: ml_collections.ConfigDict) -> list[tuple[sweep.Arm, nn.Module]]:
  """Every arm of the config with its Flax model."""
  return [(arm, make_model(arm.model_config, num_classes=data.NUM_CLASSES,
                           dtype=config.train.compute_dtype))
          for arm in sweep.make_arms(config)]


def init_variables(model: nn.Module, seed: int) -> dict[str, Any]:
  """A member's variables at initialisation ({params, batch_stats})."""
  variables = init_model_variables(model, jax.random.key(seed), jnp.zeros((1, *data.IMAGE_SHAPE)),
                                   train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def conv_kernels(params: Variables) -> list[tuple[str, jax.Array]]:
  """[(module path, kernel)] of every convolution, in depth order (layers 1..L-1).

  Works on parameters and on gradients alike (any pytree shaped like params),
  scanned or not.
  """
  flat = flax.traverse_util.flatten_dict(resnet.unscan(params), sep="/")
  found = [(path.rsplit("/", 2)[0], value) for path, value in flat.items()
           if path.endswith("conv/kernel")]
  return sorted(found, key=lambda item: depth_key(item[0]))
