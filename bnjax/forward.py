"""The forward pass with an honest verdict on overflow.

A network whose activations overflow float32 cannot be trusted to report a
non-finite loss. Once an activation is inf, a later sum gives NaN, and
XLA:CPU may compute a ReLU as a vectorised max that returns 0 for NaN: the
NaN is dropped, the logits come out 0 and the loss ln 10 ≈ 2.3026, a
plausible number. Whether that happens depends on how XLA fuses the
program: measured on a no-BN ResNet-110 along −η·g, `jit(loss)` gave NaN
while `jit(value_and_grad(loss))` of the same parameters gave ≈ 2.3026; on
a no-BN ResNet-14 with overflowing weights even `jit(loss)` gave 2.3026.
The logits and the gradient can lie the same way.

What cannot lie is an activation the program writes out before any ReLU
sees it. `apply` therefore asks the model for every activation it records
with `sow` (for the CIFAR ResNets: every convolution's output before its
normalisation and ReLU, each block output, the logits) and checks that all
of them are finite. Every loss, gradient and moment in bnjax decides
divergence from that flag, not from the finiteness of the loss alone.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def all_finite(tree: Any) -> jax.Array:
  """() bool: every entry of every leaf of `tree` is finite (True for an empty tree)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def apply(model: nn.Module, variables: Any, images_BxHxWxC: jax.Array, train: bool,
          mutable: Sequence[str] = ()) -> tuple[jax.Array, dict[str, Any], jax.Array]:
  """`model.apply` that also says whether the pass stayed finite.

  Returns (logits_BxK, the updated `mutable` collections, finite), where
  `finite` is a () bool that is False when any recorded activation or any
  logit is inf or NaN. The recorded activations are reduced to that one
  flag inside the program, so they cost one read each and are never
  returned. A model that records nothing is judged by its logits alone.
  """
  logits_BxK, state = model.apply(variables, images_BxHxWxC, train=train,
                                  mutable=[*mutable, "intermediates"])
  state = dict(state)
  recorded = state.pop("intermediates", {})
  return logits_BxK, state, all_finite(recorded) & all_finite(logits_BxK)
