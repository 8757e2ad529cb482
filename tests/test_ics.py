"""Internal covariate shift (Santurkar et al. 2018, definition 2.1): the measurement and its job."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import config as config_lib, experiments
from bnjax.analysis import ics
from conftest import load_config


class TwoLayer(nn.Module):
  """x → x W1 → softmax(x W1 W2): two kernels, no bias, no normalisation."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(10, use_bias=False, name="out")(nn.Dense(4, use_bias=False, name="hidden")(x))


@pytest.fixture(scope="module")
def toy():
  model = TwoLayer()
  images = jax.random.normal(jax.random.PRNGKey(1), (6, 2, 2, 3))
  labels = jnp.arange(6) % 10
  variables = model.init(jax.random.PRNGKey(0), images)
  shift = jax.jit(lambda v, x, y, eta: ics.internal_covariate_shift(model, v, x, y, eta))
  return variables, images, labels, shift


def test_first_layer_and_zero_rate_have_no_shift(toy):
  variables, images, labels, shift = toy
  out = jax.device_get(shift(variables, images, labels, 0.5))
  assert out["l2_L"][0] == 0.0 and out["cosine_L"][0] == pytest.approx(1.0, abs=1e-6)
  assert out["l2_L"][1] > 0 and out["finite"]
  still = jax.device_get(shift(variables, images, labels, 0.0))
  np.testing.assert_array_equal(still["l2_L"], 0.0)
  np.testing.assert_allclose(still["cosine_L"], 1.0, atol=1e-6)


def test_two_layer_network_agrees_with_the_hand_computation(toy):
  variables, images, labels, shift = toy
  eta = 0.5
  x = np.asarray(images, np.float64).reshape(6, -1)
  w1 = np.asarray(variables["params"]["hidden"]["kernel"], np.float64)
  w2 = np.asarray(variables["params"]["out"]["kernel"], np.float64)
  onehot = np.eye(10)[np.asarray(labels)]

  def grads(w1, w2):
    """dL/dW1, dL/dW2 of the mean cross-entropy of softmax(x w1 w2)."""
    z = x @ w1 @ w2
    p = np.exp(z - z.max(1, keepdims=True))
    delta = (p / p.sum(1, keepdims=True) - onehot) / len(x)
    return x.T @ (delta @ w2.T), (x @ w1).T @ delta

  g1, g2 = grads(w1, w2)
  _, g2_moved = grads(w1 - eta * g1, w2)  # layer 2's gradient after layer 1's SGD step
  out = jax.device_get(shift(variables, images, labels, eta))
  cosine = np.sum(g2 * g2_moved) / np.linalg.norm(g2) / np.linalg.norm(g2_moved)
  np.testing.assert_allclose(out["l2_L"][1], np.linalg.norm(g2 - g2_moved), rtol=1e-4)
  np.testing.assert_allclose(out["cosine_L"][1], cosine, rtol=1e-5)
  np.testing.assert_allclose(out["grad_norm_L"], [np.linalg.norm(g1), np.linalg.norm(g2)],
                             rtol=1e-5)


def test_a_bias_goes_with_its_kernel_and_a_norm_with_the_kernel_before_it():
  from bnjax import sweep
  config = load_config("ics", "smoke")
  model = sweep.build_model(sweep.make_arms(config)[0], config)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]
  layers = ics.leaf_layers(model, params)
  assert layers["stem/norm/scale"] == 1 and layers["classifier/bias"] == 8
  assert ics.layer_names(model, params)[-1] == "classifier"


def test_smoke_job_writes_json_and_figure(tmp_path):
  config = load_config("ics", "smoke")
  config.data.synthetic_train_size = 64
  config.data.synthetic_test_size = 16
  config.train.batch_size = 8
  config.analysis.steps = (0,)  # training is the smoke config's own run (41 s)
  config.analysis.num_minibatches = 1
  config_lib.validate(config)
  experiments.get(config.job).run(config, str(tmp_path))
  with open(os.path.join(tmp_path, "analysis", "ics.json")) as f:
    result = json.load(f)
  assert [a["norm"] for a in result["arms"]] == ["batch", "none"]
  for arm in result["arms"]:
    assert [line["step"] for line in arm["lines"]] == [0]
    assert all(line["l2"][0] == 0.0 and len(line["cosine"]) == 8 for line in arm["lines"])
  assert os.path.getsize(os.path.join(tmp_path, "figures", "ics_f5.png")) > 10_000
