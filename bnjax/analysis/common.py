"""Pieces every analysis needs: the loss and its gradient, layers in depth order, layer choices.

Layers are numbered as the paper numbers ResNet-110's: weight layers (every
convolution or Dense layer with a kernel) in the model's depth order, 1 at
the input, L the classifier. An analysis setting that picks layers takes a
number, or a position that fits any model (`resolve_layers`).
"""

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bnjax import errors, forward, train
from bnjax.models import ordered_leaves

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
  ok = finite & jnp.isfinite(value) & jnp.isfinite(train.flat_entries(grads)).all()
  # A cond, not a `where` per leaf: on XLA:CPU the latter took a ResNet-110
  # gradient's compile from 15 s to 80 s.
  grads = jax.lax.cond(ok, lambda g: g, lambda g: jax.tree.map(_nan_like, g), grads)
  return jnp.where(ok, value, jnp.nan), grads


def _nan_like(x: jax.Array) -> jax.Array:
  return jnp.full_like(x, jnp.nan)


# Layer positions that fit any model; a fraction f in (0, 1) is the layer nearest f·L.
POSITIONS = ("first", "middle", "last")
LayerChoice = int | float | str


def layer_choice(default: LayerChoice | tuple[LayerChoice, ...]) -> ml_collections.FieldReference:
  """A config field holding layer choices: a number, a position, or a tuple of them.

  Typed `object`, so that `--config.analysis.histogram_layer=16` and
  `=middle` (and `config.analysis.histogram_layer = 16` in Python) both
  replace a default of either kind.
  """
  return ml_collections.FieldReference(default, field_type=object)


def resolve_layer(choice: LayerChoice, num_layers: int, field: str = "layer",
                  model: str = "this model") -> int:
  """The layer (1..num_layers) that `choice` names in a model of `num_layers` layers.

  `choice` is a layer number, "first" (1), "middle" ((L + 1) // 2), "last"
  (L), or a fraction of depth strictly between 0 and 1: the layer nearest
  f·L, at least 1. ResNet-110's paper layers are positions: 55 is "middle",
  8, 44 and 80 are 0.07, 0.4 and 0.73, so that the same settings fit a
  ResNet-8 or an MLP. Anything else, or a number outside 1..L (which would
  count from the end or fail), is refused with one sentence naming `field`
  and `model`.
  """
  fix = (f"pick a layer from 1 to {num_layers} or a position: first, middle, last, or a"
         " fraction of depth such as 0.4")
  if isinstance(choice, str):
    if choice not in POSITIONS:
      raise errors.ConfigError(f"{field} names {choice!r}, which is no layer position; {fix}.")
    return {"first": 1, "middle": (num_layers + 1) // 2, "last": num_layers}[choice]
  if isinstance(choice, numbers.Real) and not isinstance(choice, numbers.Integral):
    if not 0.0 < choice < 1.0:
      raise errors.ConfigError(f"{field} has the fraction {choice!r}, outside (0, 1); {fix}.")
    return max(1, math.floor(float(choice) * num_layers + 0.5))
  if (isinstance(choice, bool) or not isinstance(choice, numbers.Integral)
      or not 1 <= choice <= num_layers):
    raise errors.ConfigError(f"{field} names layer {choice!r}, and {model} has weight layers"
                             f" 1..{num_layers} only; {fix}.")
  return int(choice)


def resolve_layers(choices: LayerChoice | Sequence[LayerChoice], num_layers: int,
                   field: str = "layers", model: str = "this model") -> tuple[int, ...]:
  """`resolve_layer` of each choice (or of the one choice), in order, each layer once."""
  if isinstance(choices, (str, numbers.Number)):
    choices = (choices,)
  layers = [resolve_layer(c, num_layers, field, model) for c in choices]
  return tuple(dict.fromkeys(layers))


def num_weight_layers(model: nn.Module) -> int:
  """L, the model's number of weight layers (`weight_kernels`), computing nothing."""
  return len(weight_kernels(model, train.abstract_variables(model)["params"]))


def recorded_layers(model: nn.Module, variables: Variables, images_BxHxWxC: jax.Array,
                    kind: str, train_mode: bool = True) -> list[tuple[str, jax.Array]]:
  """[(module path, activation)] of every recorded `kind`, in the model's depth order.

  `kind` is a name the model sows into "intermediates" (conv_out,
  norm_out, branch_out, block_out, logits; see bnjax/models/family.py);
  the module path is "" for the top level. The order is the model's
  (`models.ordered_leaves`): for the ResNet stem, stage1_block00, ...,
  stage3_block17, one entry per block when scanned. Empty when the model
  records no `kind`.
  """
  _, state = model.apply(variables, images_BxHxWxC, train=train_mode,
                         mutable=["intermediates", "batch_stats"])
  found = []
  for path, values in ordered_leaves(model, state["intermediates"]):
    module, _, name = path.rpartition("/")
    if name == kind:
      found.append((module, values[0]))
  return found




def weight_kernels(model: nn.Module, params: Variables) -> list[tuple[str, jax.Array]]:
  """[(module path, kernel)] of every weight layer, in the model's depth order: layers 1..L.

  A weight layer is a module with a leaf called kernel (nn.Conv, nn.Dense):
  for a ResNet-110 its 109 convolutions, then the classifier. Works on
  parameters and on gradients alike (any pytree shaped like params),
  scanned or not.
  """
  found = []
  for path, leaf in ordered_leaves(model, params):
    module, _, name = path.rpartition("/")
    if name == "kernel":
      found.append((module, leaf))
  return found


def conv_kernels(params: Variables, model: nn.Module) -> list[tuple[str, jax.Array]]:
  """[(path, kernel)] of every 2-D convolution, in the model's depth order.

  A convolution's kernel is a 4-D (H, W, C_in, C_out) leaf called kernel;
  its path is that of the module holding the convolution (the ResNet's
  ConvNorm: "stem", "stage1_block00/conv_norm1"). Works on parameters and on
  gradients alike, scanned or not.
  """
  return [("/".join(path.split("/")[:-2]), leaf) for path, leaf in ordered_leaves(model, params)
          if path.rpartition("/")[2] == "kernel" and len(getattr(leaf, "shape", ())) == 4]
