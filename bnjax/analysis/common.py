"""Pieces every analysis needs: the loss and its gradient, recorded layers in depth order."""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import forward, train
from bnjax.models import ordered_leaves, resnet

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
  """[(module path, activation)] of every recorded `kind`, in the model's depth order.

  `kind` is a name the model sows into "intermediates" (the ResNet's:
  conv_out, norm_out, branch_out, block_out, logits; see
  bnjax/models/resnet.py); the module path is "" for the top level. The
  order is the model's (`models.ordered_leaves`): for the ResNet stem,
  stage1_block00, ..., stage3_block17, one entry per block when scanned.
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


def conv_kernels(params: Variables, model: nn.Module | None = None
                 ) -> list[tuple[str, jax.Array]]:
  """[(path, kernel)] of every 2-D convolution, in depth order (the ResNet's layers 1..L-1).

  A convolution's kernel is a 4-D (H, W, C_in, C_out) leaf called kernel;
  its path is that of the module holding the convolution (the ResNet's
  ConvNorm: "stem", "stage1_block00/conv_norm1"). Works on parameters and on
  gradients alike, scanned or not. Without `model`, the order is a ResNet's.
  """
  model = resnet.CifarResNet() if model is None else model
  return [("/".join(path.split("/")[:-2]), leaf) for path, leaf in ordered_leaves(model, params)
          if path.rpartition("/")[2] == "kernel" and len(getattr(leaf, "shape", ())) == 4]
