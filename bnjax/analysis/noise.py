"""SGD noise (F2) and the gradient noise scale (McCandlish et al. 2018).

F2 of Bjorck et al.: with the full loss ℓ = (1/N) Σ_i ℓ_i and the SGD step
α∇_SGD = (α/|B|) Σ_{i∈B} ∇ℓ_i,

    E ‖α∇ℓ − α∇_SGD‖² ≤ (α²/|B|) C,   C = E_i ‖∇ℓ_i − ∇ℓ‖².

Here the "full" set is a fixed pool of N training examples. For minibatches
drawn with replacement the bound holds with equality in expectation; drawn
without replacement (as the training data stream does within an epoch) the
expectation is (α²C/|B|)·(N − |B|)/(N − 1), strictly below it.

How batch norm's batch coupling is handled. A BN network's loss on a batch
is not a sum of per-example losses: each example's output depends on the
whole batch through the statistics, so ∇ℓ_i is not defined by the network
alone. The per-example losses here are taken with the BN statistics held
fixed at those of the whole pool at the current parameters (`pool_statistics`
puts them in `batch_stats`; the model is then applied in eval mode). Why:
with statistics held fixed the loss is separable, so ∇ℓ = mean_i ∇ℓ_i
exactly and the bound is a theorem about the quantities measured; the pool
statistics are the population values that each minibatch's statistics
estimate; and eval mode with the stale running averages (zero mean, unit
variance at initialisation) would measure a different network. What the
optimizer actually steps with, the train-mode minibatch gradient (statistics
of that minibatch, gradient through them), is measured next to it by
`train_mode_noise`, so the cost of the approximation is visible. Without BN
both are the same function.

Functions taking per-example gradients use a flat (N, P) matrix `grads_NxP`
(`per_example_grads`); the Gram matrix of centred gradients then gives any
minibatch's noise exactly, since ∇_SGD − ∇ℓ is the mean of the centred
per-example gradients of the batch.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import flatten_util

from bnjax import forward, models, train
from bnjax.analysis import common

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, x_B..., y_B) -> losses (B,)


def pool_statistics(model: nn.Module, variables: common.Variables,
                    images_NxHxWxC: jax.Array) -> common.Variables:
  """`variables` with batch_stats replaced by the batch statistics of the pool.

  One train-mode pass on the pool in which every BatchNorm in train mode
  writes the mean and biased variance of its input (float32, two-pass:
  mean of squared deviations) into its batch_stats, so eval mode on the pool
  then normalises as train mode does. Computed directly rather than inferred
  from BN's momentum update, which loses precision when the variance is
  large. Any module tree works, scanned blocks included. A model without BN
  is returned unchanged.
  """
  if not variables.get("batch_stats"):
    return variables
  def write_input_stats(next_fun: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any], context: Any) -> Any:
    out = next_fun(*args, **kwargs)
    bn = context.module
    if not isinstance(bn, nn.BatchNorm) or context.method_name != "__call__":
      return out
    use_running_average = nn.merge_param(
        "use_running_average", bn.use_running_average,
        args[1] if len(args) > 1 else kwargs.get("use_running_average"))
    if use_running_average or not bn.is_mutable_collection("batch_stats"):
      return out
    x = args[0] if args else kwargs["x"]
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    feature_axes = {a % x.ndim for a in ((bn.axis,) if isinstance(bn.axis, int) else bn.axis)}
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    for name, stat in (("mean", jnp.mean(x, reduction_axes)), ("var", jnp.var(x, reduction_axes))):
      bn.put_variable("batch_stats", name, stat.astype(bn.get_variable("batch_stats", name).dtype))
    return out
  with nn.intercept_methods(write_input_stats):
    _, state = model.apply(variables, images_NxHxWxC, train=True, mutable=["batch_stats"])
  return {**variables, "batch_stats": state["batch_stats"]}


def separable_loss(model: nn.Module, variables: common.Variables) -> LossFn:
  """Per-example cross-entropies (B,) in eval mode with `variables`' BN statistics.

  All NaN when the forward pass overflowed (`bnjax.forward`).
  """
  def losses(params: Any, images_BxHxWxC: jax.Array, labels_B: jax.Array) -> jax.Array:
    logits, _, finite = forward.apply(model, {**variables, "params": params}, images_BxHxWxC,
                                      train=False)
    losses_B = jax.vmap(train.cross_entropy)(logits[:, None], labels_B[:, None])
    return jnp.where(finite, losses_B, jnp.nan)
  return losses


def per_example_grads(loss_fn: LossFn, params: Any, x_N: jax.Array, y_N: jax.Array) -> jax.Array:
  """∇ℓ_i for each of N examples, flattened to (N, P) in `train.flat_entries` order.

  An example whose loss or gradient is not finite gets a row of NaN.
  """
  def one(x, y):
    value, grad = jax.value_and_grad(lambda p: loss_fn(p, x[None], y[None])[0])(params)
    grad_P = train.flat_entries(grad)
    return jnp.where(jnp.isfinite(value) & jnp.all(jnp.isfinite(grad_P)), grad_P, jnp.nan)
  return jax.vmap(one)(x_N, y_N)


def leaf_sizes(tree: Any) -> list[int]:
  return [x.size for x in jax.tree.leaves(tree)]


def layer_sums(model: nn.Module, params: Any, values_P: jax.Array) -> list[tuple[str, jax.Array]]:
  """[(leaf path, () sum of values_P over that leaf)] in the model's depth order.

  `values_P` is a vector in `train.flat_entries` order of `params`, e.g.
  `noise_statistics(...)["C_P"]`, whose sums are the per-leaf C. The model
  orders the leaves (`models.ordered_leaves`): a ResNet's stem first, the
  classifier last, one entry per block when its blocks are scanned.
  """
  _, unflatten = flatten_util.ravel_pytree(params)
  return [(path, jnp.sum(v)) for path, v in models.ordered_leaves(model, unflatten(values_P))]


def noise_statistics(grads_NxP: jax.Array, sizes: tuple[int, ...]) -> dict[str, jax.Array]:
  """C, ‖∇ℓ‖², per-leaf C and B_simple from per-example gradients.

  Returns:
    mean_grad_P       ∇ℓ = mean_i ∇ℓ_i,
    grad_sq_norm      () ‖∇ℓ‖²,
    C                 () E_i ‖∇ℓ_i − ∇ℓ‖² (= tr Σ, the per-example covariance
                      over the pool, normalised by N),
    C_P               E_i (∇ℓ_i − ∇ℓ)² per coordinate (P,); `layer_sums` gives
                      its per-leaf sums (the C_L) in depth order,
    C_L               per-leaf C (L = len(sizes)), in `train.flat_entries` order,
    b_simple          () tr Σ / ‖∇ℓ‖² (McCandlish et al.'s simple noise scale),
    gram_NxN          ⟨∇ℓ_i − ∇ℓ, ∇ℓ_j − ∇ℓ⟩,
    mean_dot_N        ⟨∇ℓ_i − ∇ℓ, ∇ℓ⟩.
  """
  mean_P = jnp.mean(grads_NxP, axis=0)
  centred_NxP = grads_NxP - mean_P[None]
  sq_P = jnp.mean(jnp.square(centred_NxP), axis=0)
  bounds = [0]
  for s in sizes:
    bounds.append(bounds[-1] + s)
  c_L = jnp.stack([jnp.sum(sq_P[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
  grad_sq = jnp.sum(jnp.square(mean_P))
  c = jnp.sum(sq_P)
  return {"mean_grad_P": mean_P, "grad_sq_norm": grad_sq, "C": c, "C_P": sq_P, "C_L": c_L,
          "b_simple": c / grad_sq, "gram_NxN": centred_NxP @ centred_NxP.T,
          "mean_dot_N": centred_NxP @ mean_P}


def minibatch_noise(gram_NxN: jax.Array, idx_KxB: jax.Array) -> jax.Array:
  """‖∇_SGD − ∇ℓ‖² of each of K minibatches (K,), given by their indices.

  Exact for a separable loss: ∇_SGD − ∇ℓ = (1/B) Σ_{i∈B} (∇ℓ_i − ∇ℓ).
  Repeated indices (sampling with replacement) count as often as they occur.
  """
  batch = idx_KxB.shape[1]
  block_KxBxB = gram_NxN[idx_KxB[:, :, None], idx_KxB[:, None, :]]
  return jnp.sum(block_KxBxB, axis=(1, 2)) / batch**2


def separable_minibatch_noise(stats: dict[str, jax.Array], idx_KxB: jax.Array
                              ) -> tuple[jax.Array, jax.Array]:
  """(‖g_B − ∇ℓ‖², ‖g_B‖²) (K,) each, of K minibatches of a separable loss, from the pool.

  When the loss is a mean of per-example losses (a model without BN, whose
  train mode is the same function), the minibatch gradient is
  g_B = ∇ℓ + mean_{i∈B} c_i with c_i = ∇ℓ_i − ∇ℓ, so `train_mode_noise` of
  every minibatch follows from `noise_statistics` without a backward pass:
  ‖g_B − ∇ℓ‖² is `minibatch_noise`, and
  ‖g_B‖² = ‖∇ℓ‖² + 2 mean_{i∈B} ⟨c_i, ∇ℓ⟩ + ‖g_B − ∇ℓ‖².
  """
  noise_K = minibatch_noise(stats["gram_NxN"], idx_KxB)
  cross_K = jnp.mean(stats["mean_dot_N"][idx_KxB], axis=1)
  return noise_K, stats["grad_sq_norm"] + 2 * cross_K + noise_K


def sgd_noise_bound(lr: float | jax.Array, c: jax.Array, batch_size: int) -> jax.Array:
  """α²C/|B|: F2's bound, and the expected noise with replacement."""
  return lr**2 * c / batch_size


def expected_noise_without_replacement(lr: float | jax.Array, c: jax.Array,
                                       batch_size: int, pool_size: int) -> jax.Array:
  """E‖α∇ℓ − α∇_SGD‖² for minibatches drawn without replacement from N."""
  return sgd_noise_bound(lr, c, batch_size) * (pool_size - batch_size) / (pool_size - 1)


def sample_without_replacement(key: jax.Array, pool_size: int, batch_size: int,
                               num_batches: int) -> jax.Array:
  """Indices (K, B): each row distinct examples of the pool, rows independent."""
  keys = jax.random.split(key, num_batches)
  return jax.vmap(lambda k: jax.random.permutation(k, pool_size)[:batch_size])(keys)


def two_batch_noise_scale(sq_norm_small: jax.Array, sq_norm_big: jax.Array,
                          b_small: int, b_big: int) -> dict[str, jax.Array]:
  """McCandlish et al.'s estimator of ‖G‖², tr Σ and B_simple from two batch sizes.

  `sq_norm_*` are mean squared norms of minibatch gradients at each size.
  Unbiased for ‖G‖² and tr Σ when the minibatches are drawn with replacement
  (E‖G_B‖² = ‖G‖² + tr Σ / B); B_simple is their ratio.
  """
  g_sq = (b_big * sq_norm_big - b_small * sq_norm_small) / (b_big - b_small)
  trace = (sq_norm_small - sq_norm_big) / (1.0 / b_small - 1.0 / b_big)
  return {"grad_sq_norm": g_sq, "trace_sigma": trace, "b_simple": trace / g_sq}


def train_mode_grad(model: nn.Module, variables: common.Variables,
                    images_BxHxWxC: jax.Array, labels_B: jax.Array) -> jax.Array:
  """The optimizer's minibatch gradient (train-mode BN), flattened (P,); NaN on overflow."""
  return train.flat_entries(common.loss_and_grad(model, variables, images_BxHxWxC, labels_B)[1])


def train_mode_noise(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                     labels_B: jax.Array, mean_grad_P: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(‖g_B − ∇ℓ‖², ‖g_B‖²) for the train-mode minibatch gradient g_B.

  ∇ℓ is the pool gradient with statistics held fixed (`noise_statistics`).
  """
  g_P = train_mode_grad(model, variables, images_BxHxWxC, labels_B)
  return jnp.sum(jnp.square(g_P - mean_grad_P)), jnp.sum(jnp.square(g_P))

