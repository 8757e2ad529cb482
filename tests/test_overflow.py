"""An overflowing forward pass is divergent everywhere: train step, F2–F8, never a finite loss.

The network: a no-BN ResNet-14 whose He-normal weights are scaled by 3000,
so that its activations pass float32's range within the first stage. On
XLA:CPU a compiled program may turn the NaNs that follow into zero logits
(a ReLU computed as a vectorised max drops NaN) and report the loss ln 10 ≈
2.3026: for this network `jit(loss)` did, while the same pass run op by op
gives NaN logits. Every measurement must see through that.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import data, forward, train
from bnjax.analysis import activations, common, gradients, landscape, noise, random_matrix
from bnjax.experiments import divergence
from bnjax.models import make_model

SCALE = 3000.0


@pytest.fixture(scope="module")
def overflowing():
  """(model, variables, images (4, 32, 32, 3), labels (4,)) of a network that overflows."""
  model = make_model(dict(name="resnet", depth=14, norm="none", shortcut="A",
                          initializer="he_normal"))
  variables = train.init_variables(model, 0)
  variables = {**variables, "params": jax.tree.map(lambda p: SCALE * p, variables["params"])}
  images, labels = data.train_batch(data.synthetic(0, 64, 8), 0, 0, 4, augmentation=False)
  with jax.disable_jit():  # op by op, nothing is fused away: the overflow shows
    logits = model.apply(variables, images)
  assert not np.isfinite(np.asarray(logits)).any()
  return model, variables, images, labels


def _not_finite(tree) -> bool:
  return not any(np.isfinite(np.asarray(x)).any() for x in jax.tree.leaves(tree))


def test_forward_flags_the_overflow_that_compiled_logits_hide(overflowing):
  model, variables, images, _ = overflowing
  logits, _, finite = jax.jit(lambda v: forward.apply(model, v, images, train=False))(variables)
  assert not finite
  assert logits.shape == (4, 10)


def test_train_step_marks_the_member_diverged_and_logs_no_loss(overflowing):
  model, variables, images, labels = overflowing
  tx = train.make_optimizer(0.9, 1e-4)
  state = train.init_member(model, tx, 0, 1e-4)
  state = state.replace(params=variables["params"])
  train_config = {"num_steps": 10, "lr_boundaries": (), "lr_decay": 0.1, "warmup_steps": 0,
                  "warmup_factor": 0.1, "max_loss": np.inf}
  step = jax.jit(functools.partial(train.member_step, model, tx, train_config))
  new_state, metrics = step(state, images, labels, jnp.asarray(3, jnp.int32))
  assert bool(new_state.diverged) and int(new_state.diverged_step) == 3
  assert not np.isfinite(metrics["train_loss"]) and not np.isfinite(metrics["train_accuracy"])
  jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)


def test_losses_and_gradients_are_nan(overflowing):
  model, variables, images, labels = overflowing
  assert not np.isfinite(jax.jit(lambda v: common.loss(model, v, images, labels))(variables))
  assert not np.isfinite(jax.jit(
      lambda v: common.loss(model, v, images, labels, train_mode=False))(variables))
  loss, grads = jax.jit(lambda v: common.loss_and_grad(model, v, images, labels))(variables)
  assert _not_finite(loss) and _not_finite(grads)


def test_f4_line_is_divergent_at_every_step_size(overflowing):
  model, variables, images, labels = overflowing
  found = divergence.along_gradient_host(model, variables, images, labels, (0.0, 1e-6, 1e-3))
  assert float(found["max_stable_eta"]) == 0.0
  assert _not_finite(found["loss_E"]) and _not_finite(found["relative_loss_E"])


def test_f4_summary_counts_a_non_finite_gradient_change_as_divergent():
  found = landscape.summarize(jnp.asarray(2.0), jnp.asarray(1.0), jnp.asarray([0.0, 1e-3, 1e-2]),
                              jnp.asarray([2.0, 2.0, 2.3]), jnp.asarray([0.0, 0.1, jnp.nan]))
  assert float(found["max_stable_eta"]) == pytest.approx(1e-3)
  assert np.isnan(found["relative_loss_E"][2])


def test_f3_f7_gradients_report_no_finite_number(overflowing):
  model, variables, images, labels = overflowing
  out = jax.jit(lambda v: gradients.gradient_summary(model, v, images, labels, 3))(variables)
  assert not out["finite"]
  assert _not_finite(out["loss"]) and _not_finite(out["output_grad_BxK"])
  assert _not_finite(out["layer_grad_values"]) and _not_finite(out["weight_grad_norms_L"])


def test_f5_f6_moments_flag_the_overflow(overflowing):
  model, variables, images, labels = overflowing
  moments = jax.jit(lambda v: activations.moments_vs_depth(model, v, images))(variables)
  assert not moments["finite"]
  update = jax.jit(lambda v: activations.diverging_update_moments(
      model, v, images, labels, 1e-3, jnp.asarray([0.0, 1.0]), (2,)))(variables)
  assert not np.asarray(update["finite_S"]).any() and _not_finite(update["loss_S"])


def test_f2_per_example_and_train_mode_gradients_are_nan(overflowing):
  model, variables, images, labels = overflowing
  per_example = jax.jit(lambda v: noise.per_example_grads(
      noise.separable_loss(model, v), v["params"], images, labels))(variables)
  assert _not_finite(per_example)
  assert _not_finite(jax.jit(lambda v: noise.train_mode_grad(model, v, images, labels))(variables))


def test_f8_jacobian_is_nan(overflowing):
  model, variables, images, _ = overflowing
  jacobian = jax.jit(lambda v: random_matrix.network_jacobian(model, v, images[:1], 10))(variables)
  assert _not_finite(jacobian)
