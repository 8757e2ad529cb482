"""The loss landscape along the minibatch gradient (F4, and Santurkar et al. 2018).

At parameters θ with minibatch gradient g, the optimizer's next point for a
step size η is θ' = θ − η·g. Along that line this module measures

* the relative loss L(θ')/L(θ) (Bjorck et al., F4 "divergence along the
  gradient"), and the largest η of the grid before it first passes the
  divergence threshold (1e3 in the paper);
* loss Lipschitzness (Santurkar et al.): the range max L(θ') − min L(θ')
  over the grid;
* gradient predictiveness (Santurkar et al.): ‖∇L(θ') − g‖ per η;
* effective β-smoothness (Santurkar et al.): max over η of
  ‖∇L(θ') − g‖ / ‖η·g‖.

Effective β-smoothness is a property of the grid as well as of the network:
a ReLU network's gradient jumps where a step crosses a ReLU's kink, by an
amount that does not shrink with η, so at small steps (below about 1e-4)
‖∇L(θ') − g‖ / ‖η·g‖ grows as η falls and a grid reaching down there has
its maximum at its smallest step. Santurkar et al. step from 0.5 to 4 times
the learning rate; `bnjax.experiments.smoothness` uses that range and
reports smaller steps apart.

BN mode: every loss and gradient is taken in train mode, i.e. batch norm
normalises with the statistics of the same minibatch, recomputed at each θ'.
That is the function the optimizer descends; the running averages are
neither used nor updated. The loss is the cross-entropy alone (no weight
decay term), as in the paper.

Every function is pure and jittable; `model` and `etas` are static Python
values, so jit them with `functools.partial`. They take one member's
variables and can be vmapped over members. (`bnjax.experiments.divergence`
runs the η loop on the host instead where that is faster: on a CPU.)
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnjax.analysis import common

DIVERGENCE_THRESHOLD = 1e3


def log_grid(low: float = 1e-5, high: float = 1e-1, num: int = 25) -> np.ndarray:
  """Step sizes η, log-spaced from `low` to `high` (F4's horizontal axis)."""
  return np.geomspace(low, high, num)


def largest_stable_eta(etas_E: jax.Array, relative_loss_E: jax.Array,
                       threshold: float = DIVERGENCE_THRESHOLD) -> jax.Array:
  """The largest η of the grid before the relative loss first exceeds `threshold`.

  A non-finite relative loss counts as divergent (an overflowing point's
  loss is NaN, see `common.loss_and_grad`). Returns 0 if already the
  smallest η diverges, and the largest η if none does.
  """
  divergent_E = ~(relative_loss_E <= threshold)  # NaN and inf are divergent
  stable_prefix_E = jnp.cumsum(divergent_E) == 0
  return jnp.max(jnp.where(stable_prefix_E, etas_E, 0.0))


def line_point(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
               labels_B: jax.Array, g: Any, eta: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(L(θ − η·g), ‖∇L(θ − η·g) − g‖) on the minibatch: one point of the line.

  Both are NaN where the forward pass at θ − η·g overflows, which the
  summaries count as divergent.
  """
  moved = jax.tree.map(lambda p, d: p - eta * d, variables["params"], g)
  loss, grad = common.loss_and_grad(model, variables, images_BxHxWxC, labels_B, moved)
  return loss, jnp.sqrt(optax.tree.norm(jax.tree.map(jnp.subtract, grad, g), squared=True))


def summarize(loss: jax.Array, grad_norm: jax.Array, eta_E: jax.Array, loss_E: jax.Array,
              grad_change_E: jax.Array, threshold: float = DIVERGENCE_THRESHOLD
              ) -> dict[str, jax.Array]:
  """The measures of `along_gradient` from the line's points (see there).

  A point whose loss or gradient change is not finite is divergent: its
  loss is reported as NaN, whatever number it carried.
  """
  finite_loss = jnp.isfinite(loss_E) & jnp.isfinite(grad_change_E)
  loss_E = jnp.where(finite_loss, loss_E, jnp.nan)
  beta_E = jnp.where(eta_E > 0, grad_change_E / (eta_E * grad_norm), jnp.nan)
  relative_E = loss_E / loss
  return {
      "eta_E": eta_E,
      "loss": loss,
      "grad_norm": grad_norm,
      "loss_E": loss_E,
      "relative_loss_E": relative_E,
      "grad_change_E": grad_change_E,
      "beta_E": beta_E,
      "beta_smoothness": jnp.max(jnp.where(jnp.isfinite(beta_E), beta_E, -jnp.inf)),
      "loss_range": (jnp.max(jnp.where(finite_loss, loss_E, -jnp.inf))
                     - jnp.min(jnp.where(finite_loss, loss_E, jnp.inf))),
      "max_stable_eta": largest_stable_eta(eta_E, relative_E, threshold),
  }


def along_gradient(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                   labels_B: jax.Array, etas: Sequence[float],
                   threshold: float = DIVERGENCE_THRESHOLD) -> dict[str, jax.Array]:
  """Loss and gradient at θ − η·g for every η of `etas` (E values).

  Returns a dict of arrays:
    eta_E                the step sizes,
    loss                 () L(θ), the train-mode minibatch loss,
    grad_norm            () ‖g‖,
    loss_E               L(θ − η·g) on the same minibatch,
    relative_loss_E      L(θ − η·g) / L(θ)  (F4),
    grad_change_E        ‖∇L(θ − η·g) − g‖  (gradient predictiveness),
    beta_E               ‖∇L(θ − η·g) − g‖ / ‖η·g‖,
    beta_smoothness      () max of beta_E over finite values (effective
                         β-smoothness),
    loss_range           () max − min of loss_E over finite values (loss
                         Lipschitzness),
    max_stable_eta       () largest η before the relative loss first
                         exceeds `threshold`.
  η = 0 is allowed in the grid (relative loss exactly 1); its β is NaN.
  The η values are evaluated one after another (`lax.map`), so memory is
  that of one gradient. XLA:CPU runs convolution gradients inside a loop
  body tens of times slower than outside one; on a CPU
  `bnjax.experiments.divergence` loops over η on the host instead.
  """
  loss, g = common.loss_and_grad(model, variables, images_BxHxWxC, labels_B)
  eta_E = jnp.asarray(etas, jnp.float32)
  point = lambda eta: line_point(model, variables, images_BxHxWxC, labels_B, g, eta)
  loss_E, change_E = jax.lax.map(point, eta_E)
  return summarize(loss, optax.tree.norm(g), eta_E, loss_E, change_E, threshold)


def first_order_relative_loss(loss: jax.Array, grad_norm: jax.Array,
                              eta_E: jax.Array) -> jax.Array:
  """1 − η‖g‖²/L: the relative loss a linear model of L predicts for small η."""
  return 1.0 - eta_E * grad_norm**2 / loss
