"""Gradients at initialisation: at the output, at every layer, through BN.

Bjorck et al. (2018) show that without BN the gradient at the output layer
hardly depends on the input (figure 7, "output-layer gradient heatmap": the
network predicts one class for every image), and that a deep layer's weight
gradients are about 100x larger than with BN (figure 3, "gradient histogram
at initialisation"). Everything here is a pure, jittable function of
(model, variables, batch) returning arrays, usable per member or under vmap.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import forward, train
from bnjax.analysis import common


def output_gradient(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                    labels_B: jax.Array) -> jax.Array:
  """F7: ∂L/∂logits (B, K) of the batch-mean cross-entropy, per example and class.

  Row i is (softmax(logits_i) − onehot(label_i)) / B; its largest positive
  entry is the class the network predicts most strongly for image i (among
  the wrong ones). BN uses the batch's statistics, as in training. All NaN
  when the forward pass overflowed (`bnjax.forward`).
  """
  logits_BxK, _, finite = forward.apply(model, variables, images_BxHxWxC, train=True,
                                        mutable=["batch_stats"])
  g_BxK = jax.grad(train.cross_entropy)(logits_BxK, labels_B)
  return jnp.where(finite, g_BxK, jnp.nan)


def input_independence(g_BxK: jax.Array) -> dict[str, jax.Array]:
  """How little the rows of an output gradient depend on the example.

  same_class_share: the share of rows whose largest entry falls in the most
    common such column (1 when one class column is positive for every
    image, about 1/K when the columns vary).
  mean_cosine: the mean cosine similarity between distinct rows (1 when all
    rows are the same direction, near 0 for unrelated rows).
  Both are 1 for a matrix whose rows are all equal.
  """
  batch, classes = g_BxK.shape
  top_B = jnp.argmax(g_BxK, axis=1)
  counts_K = jnp.sum(jax.nn.one_hot(top_B, classes), axis=0)
  unit_BxK = g_BxK / jnp.maximum(jnp.linalg.norm(g_BxK, axis=1, keepdims=True), 1e-30)
  cos_BxB = unit_BxK @ unit_BxK.T
  off_diagonal = (jnp.sum(cos_BxB) - jnp.trace(cos_BxB)) / (batch * (batch - 1))
  return {"same_class_share": jnp.max(counts_K) / batch, "mean_cosine": off_diagonal}


def weight_gradient_norms(model: nn.Module, grads: common.Variables) -> jax.Array:
  """(L,) Frobenius norms of every weight layer's kernel gradient (`common.weight_kernels`)."""
  return jnp.stack([jnp.linalg.norm(g.ravel()) for _, g in common.weight_kernels(model, grads)])


def layer_gradient_values(model: nn.Module, grads: common.Variables, layer: int) -> jax.Array:
  """F3: every entry of weight layer `layer`'s kernel gradient, flattened.

  Layers are numbered from 1 in `model`'s depth order (`common.weight_kernels`:
  for a ResNet the convolutions, then the classifier; the paper's figure 3
  uses layer 55 of ResNet-110, a 3x3x32x32 kernel in stage 2). A layer
  outside 1..L is refused (`common.resolve_layer`) rather than counted from
  the end, as Python's negative indices would.
  """
  kernels = common.weight_kernels(model, grads)
  return kernels[common.resolve_layer(layer, len(kernels)) - 1][1].ravel()


def gradient_summary(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                     labels_B: jax.Array, layer: common.LayerChoice) -> dict[str, jax.Array]:
  """Everything figures 3 and 7 show, for one member at one batch.

  output_grad_BxK (F7), its input-independence scalars, the gradient
  entries of weight layer `layer` (a number or a position,
  `common.resolve_layer`; F3) and that layer's number, every weight
  layer's gradient norm against depth, the loss, and "finite": False when
  the forward pass overflowed or the gradient is not finite, in which case
  every other entry is NaN.
  """
  g_BxK = output_gradient(model, variables, images_BxHxWxC, labels_B)
  loss, grads = common.loss_and_grad(model, variables, images_BxHxWxC, labels_B)
  number = common.resolve_layer(layer, len(common.weight_kernels(model, grads)))
  return {"output_grad_BxK": g_BxK, **input_independence(g_BxK), "layer": number,
          "layer_grad_values": layer_gradient_values(model, grads, number),
          "weight_grad_norms_L": weight_gradient_norms(model, grads),
          "loss": loss, "finite": jnp.isfinite(loss)}


def bn_input_gradient(x_BxHxWxC: jax.Array, cotangent_BxHxWxC: jax.Array,
                      eps: float = 1e-5) -> dict[str, jax.Array]:
  """The gradient that batch norm (no affine part) passes to its input.

  For y = x̂ = (x − mean) / sqrt(var + eps) over batch and space, and the
  gradient `cotangent` arriving at y, returns {"grad_x", "x_hat"}. Ioffe &
  Szegedy (2015): per channel, grad_x sums to zero and is orthogonal to x̂
  (up to eps), which is why BN's input gradient carries no mean or scale.
  """
  def normalise(x):
    axes = tuple(range(x.ndim - 1))
    mean, var = jnp.mean(x, axes, keepdims=True), jnp.var(x, axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps)
  x_hat, vjp = jax.vjp(normalise, x_BxHxWxC)
  return {"grad_x": vjp(cotangent_BxHxWxC)[0], "x_hat": x_hat}
