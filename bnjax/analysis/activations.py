"""Layer statistics: how activations grow with depth, with and without BN.

Bjorck et al. (2018) explain why networks without BN diverge at large rates
by the size of their activations: at initialisation the channel means and
standard deviations grow with depth (their figure 6, "channel moments vs
depth"), and a large SGD step makes them blow up layer after layer (figure
5, "activations during a diverging update"). Brock, De & Smith (2021) sum up
the same propagation at every residual block in "signal propagation plots".

Every function here is a pure, jittable function of (model, variables,
batch) returning a pytree of arrays; vmap it over stacked members to get a
leading member axis.

"Layer k" counts weight layers as the paper does: the convolutions in depth
order (k = 1 is the stem), then the classifier, so that ResNet-110's 109
convolutions and one dense layer are layers 1..110.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import forward, models, train
from bnjax.analysis import common

Stats = dict[str, jax.Array]


def channel_moments(x: jax.Array) -> Stats:
  """Per-channel mean and (biased) variance over all but the last axis.

  For a conv activation x_BxHxWxC that is the batch and space; for logits
  x_BxK the batch. Returns {"mean_C", "var_C", "rms"} where rms is the root
  mean square over every entry (one number for the whole layer).
  """
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  return {"mean_C": jnp.mean(x, axis=axes), "var_C": jnp.var(x, axis=axes),
          "rms": jnp.sqrt(jnp.mean(jnp.square(x)))}


def layer_statistics(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                     kinds: tuple[str, ...] = ("conv_out", "norm_out", "block_out"),
                     train_mode: bool = True) -> dict[str, list[Stats]]:
  """`channel_moments` of every recorded layer of each kind, in depth order.

  conv_out is a convolution's output before normalisation, norm_out after it
  (BN arms only; the list is empty without BN), block_out a residual block's
  output. In train mode BN normalises with the batch's own statistics, as
  during training.
  """
  return {kind: [channel_moments(x) for _, x in
                 common.recorded_layers(model, variables, images_BxHxWxC, kind, train_mode)]
          for kind in kinds}


def numbered_layers(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                    train_mode: bool = True) -> list[jax.Array]:
  """Outputs of weight layers 1..L: every conv_out in depth order, then the logits."""
  record = lambda kind: [x for _, x in common.recorded_layers(
      model, variables, images_BxHxWxC, kind, train_mode)]
  return record("conv_out") + record("logits")


def num_numbered_layers(model: nn.Module) -> int:
  """L of `numbered_layers`: the conv_out layers the model records and its logits."""
  counts = models.recordings(model)
  return counts.get("conv_out", 0) + counts.get("logits", 0)


def moments_vs_depth(model: nn.Module, variables: common.Variables,
                     images_BxHxWxC: jax.Array) -> dict[str, list[jax.Array]]:
  """F6, "channel moments vs depth": per-channel |mean| and std of layers 1..L.

  Measured on each weight layer's output before normalisation, so that BN
  and no-BN networks are compared at the same place. Returns lists (one
  entry per layer, layer k at index k-1) of abs_mean_C and std_C, and
  "finite", whether every layer's output was finite (moments of an
  overflowed layer are inf or NaN, never clipped).
  """
  outputs = numbered_layers(model, variables, images_BxHxWxC)
  stats = [channel_moments(x) for x in outputs]
  return {"abs_mean_C": [jnp.abs(s["mean_C"]) for s in stats],
          "std_C": [jnp.sqrt(s["var_C"]) for s in stats],
          "finite": forward.all_finite(outputs)}


def signal_propagation(model: nn.Module, variables: common.Variables,
                       images_BxHxWxC: jax.Array) -> dict[str, jax.Array]:
  """Brock, De & Smith (2021) signal propagation plot, one value per block.

  At every residual block output: "mean_sq_N", the average over channels of
  the squared channel mean; "var_N", the average channel variance; and
  "branch_var_N", the average channel variance of the residual branch
  (branch_out, before the skip is added). N is the number of blocks. A
  model that records no block_out (an MLP, a plain VGG) has no blocks: its
  entries are left out, and {} without branch_out either.
  """
  def summarise(kind: str) -> list[Stats]:
    return [channel_moments(x) for _, x in
            common.recorded_layers(model, variables, images_BxHxWxC, kind)]
  blocks, branches = summarise("block_out"), summarise("branch_out")
  out = {}
  if blocks:
    out["mean_sq_N"] = jnp.stack([jnp.mean(jnp.square(s["mean_C"])) for s in blocks])
    out["var_N"] = jnp.stack([jnp.mean(s["var_C"]) for s in blocks])
  if branches:
    out["branch_var_N"] = jnp.stack([jnp.mean(s["var_C"]) for s in branches])
  return out


def sgd_direction(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                  labels_B: jax.Array, lr: float | jax.Array) -> common.Variables:
  """Δθ = −lr·g, the plain SGD step of the batch-mean loss (params only; NaN on overflow)."""
  _, grads = common.loss_and_grad(model, variables, images_BxHxWxC, labels_B)
  return jax.tree.map(lambda g: -lr * g, grads)


def diverging_update_moments(model: nn.Module, variables: common.Variables,
                             images_BxHxWxC: jax.Array, labels_B: jax.Array,
                             lr: float | jax.Array, fractions_S: jax.Array,
                             layers: Sequence[common.LayerChoice]) -> dict[str, jax.Array]:
  """F5, "activations during a diverging update": moments along θ + s·Δθ.

  Δθ = −lr·g is the SGD step on this batch (`sgd_direction`); for each
  fraction s in `fractions_S` (e.g. a grid from 0 to 1) the network with
  parameters θ + s·Δθ is run on the same batch. For each weight layer k
  that `layers` names (numbers as in `numbered_layers`, 1-based, or
  positions: `common.resolve_layers`) returns "mean_k" and "var_k" of shape
  (S, C_k): per-channel mean and variance over batch and space; plus
  "loss_S", the loss along the way (NaN where any weight layer's output
  overflowed), and "finite_S", whether every weight layer's output was
  finite. Fractions are visited one at a time (`lax.map`) to keep memory at
  one forward pass. A layer outside 1..L is refused (`errors.ConfigError`)
  rather than counted from the end.
  """
  layers = common.resolve_layers(layers, num_numbered_layers(model))
  step = sgd_direction(model, variables, images_BxHxWxC, labels_B, lr)

  def at_fraction(s: jax.Array) -> dict[str, jax.Array]:
    params = jax.tree.map(lambda p, d: p + s * d, variables["params"], step)
    moved = {**variables, "params": params}
    outputs = numbered_layers(model, moved, images_BxHxWxC)
    finite = forward.all_finite(outputs)
    result = {"loss": jnp.where(finite, train.cross_entropy(outputs[-1], labels_B), jnp.nan),
              "finite": finite}
    for k in layers:
      moments = channel_moments(outputs[k - 1])
      result[f"mean_{k}"], result[f"var_{k}"] = moments["mean_C"], moments["var_C"]
    return result

  out = jax.lax.map(at_fraction, jnp.asarray(fractions_S, jnp.float32))
  out["loss_S"], out["finite_S"] = out.pop("loss"), out.pop("finite")
  return out
