"""Internal covariate shift as Santurkar et al. (2018) measure it (section 2.2, definition 2.1).

The ICS of layer i at a step is the change of its gradient G_i = ∇_{W_i} L(W_1..W_k; x, y)
when the layers before it take this step's SGD update first:
G'_i = ∇_{W_i} L(W'_1..W'_{i-1}, W_i..W_k; x, y), W'_j = W_j − η G_j, on the same batch.
It is reported as the ℓ2 distance ‖G_i − G'_i‖ and the cosine between them.

A layer is a weight kernel (`common.weight_kernels`: a ResNet's convolutions,
then its classifier) together with the other parameters of its module (a
bias) and the leaves that follow it in depth order up to the next kernel (the
BN scale and shift after a convolution). W' updates every parameter of layers
1..i-1 with plain SGD (no momentum, no weight decay), as the definition has it;
layer i and those after it keep their values. BN normalises with the batch's
statistics (train mode), as the optimizer sees it. Everything here is pure
and jittable.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import models
from bnjax.analysis import common


def leaf_layers(model: nn.Module, params: common.Variables) -> dict[str, int]:
  """{leaf path: the number (1..L) of the weight layer it belongs to}, for an unrolled model.

  A leaf belongs to the kernel of its own module when there is one (a
  Dense's bias), else to the last kernel before it in depth order (a BN after
  its convolution), else, before any kernel, to layer 1.
  """
  kernels = common.weight_kernels(model, params)
  if not kernels:
    raise ValueError("This model has no weight kernel, so it has no layers to measure ICS of.")
  number = {module: k for k, (module, _) in enumerate(kernels, start=1)}
  layers, current = {}, 1
  for path, _ in models.ordered_leaves(model, params):
    module, _, name = path.rpartition("/")
    if name == "kernel":
      current = number[module]
    layers[path] = number.get(module, current)
  return layers


def internal_covariate_shift(model: nn.Module, variables: common.Variables,
                             images_BxHxWxC: jax.Array, labels_B: jax.Array,
                             eta: float | jax.Array) -> dict[str, jax.Array]:
  """Per weight layer i (depth order): l2_L ‖G_i − G'_i‖, cosine_L, grad_norm_L ‖G_i‖.

  Also "loss" (of the unchanged weights) and "finite": False when a pass
  overflowed, where the numbers are NaN. Layer 1's G' is G by construction
  (nothing before it changes): both come from the same program on the same
  inputs, so its l2 is exactly 0; with η = 0 every layer's is. Costs L + 1
  backward passes, run one after the other (`lax.scan`).
  """
  model, variables = models.unrolled(model, variables)
  params = variables["params"]
  layer_of = leaf_layers(model, params)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  layer_P = {path: jnp.int32(layer_of[path]) for path in flat}
  kernels = [module + "/kernel" for module, _ in common.weight_kernels(model, params)]

  def gradient_after(i: jax.Array, g_flat: dict[str, jax.Array]
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss and flat gradient with layers 1..i-1 moved by −η g (i = 0, 1: nothing moves)."""
    moved = {p: jnp.where(layer_P[p] < i, w - eta * g_flat[p], w) for p, w in flat.items()}
    loss, grads = common.loss_and_grad(
        model, variables, images_BxHxWxC, labels_B,
        flax.traverse_util.unflatten_dict(moved, sep="/"))
    return loss, flax.traverse_util.flatten_dict(grads, sep="/")

  def body(carry, i):
    g_flat, _ = carry
    loss, now = gradient_after(i, g_flat)
    g_flat = jax.tree.map(lambda first, old: jnp.where(i == 0, first, old), now, g_flat)
    dots = jnp.stack([jnp.vdot(g_flat[k], now[k]) for k in kernels])
    norms_g = jnp.stack([jnp.linalg.norm(g_flat[k].ravel()) for k in kernels])
    norms_now = jnp.stack([jnp.linalg.norm(now[k].ravel()) for k in kernels])
    dists = jnp.stack([jnp.linalg.norm((g_flat[k] - now[k]).ravel()) for k in kernels])
    cosines = dots / (norms_g * norms_now)
    loss0 = jnp.where(i == 0, loss, carry[1])
    return (g_flat, loss0), (dists, cosines, norms_g)

  zeros = jax.tree.map(jnp.zeros_like, flat)
  num = len(kernels)
  (_, loss), (dists_IxL, cos_IxL, norms_IxL) = jax.lax.scan(
      body, (zeros, jnp.float32(0.0)), jnp.arange(num + 1))
  # Row i (i = 1..L) was measured with layers 1..i-1 moved: its entry i is layer i's.
  diag = jnp.arange(num)
  return {"l2_L": dists_IxL[diag + 1, diag], "cosine_L": cos_IxL[diag + 1, diag],
          "grad_norm_L": norms_IxL[0], "loss": loss, "finite": jnp.isfinite(loss)}


def layer_names(model: nn.Module, params: common.Variables) -> list[str]:
  """The module paths of the weight layers `internal_covariate_shift` measures, in its order."""
  model, params = models.unrolled(model, params)
  return [module for module, _ in common.weight_kernels(model, params)]
