"""Known answers of the F4 (landscape) and F2 (noise) analyses, and their jobs end to end."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import config as config_lib, data, experiments, train, workdir as workdir_lib
from bnjax.experiments import divergence, sgd_noise
from bnjax.analysis import common, landscape, noise
from bnjax.models import make_model

from conftest import load_config

def _linear_problem(n: int = 8, features: int = 5, classes: int = 3, seed: int = 0):
  """A softmax regression: per-example losses, params, inputs (N, F), labels (N,)."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, (n, features))
  y = jax.random.randint(k2, (n,), 0, classes)
  params = {"w": 0.5 * jax.random.normal(k3, (features, classes)), "b": jnp.zeros(classes)}
  def losses(p, x_B, y_B):
    return optax.softmax_cross_entropy_with_integer_labels(x_B @ p["w"] + p["b"][None], y_B)
  return losses, params, x, y


def _resnet8(norm: str):
  model = make_model(dict(name="resnet", depth=8, norm=norm, shortcut="A", initializer="he_normal"))
  return model, train.init_variables(model, 0)


def _batch(size: int):
  dataset = data.synthetic(0, 64, 8)
  return data.train_batch(dataset, 0, 0, size, augmentation=False)


def test_per_example_grads_average_to_batch_gradient_linear():
  losses, params, x, y = _linear_problem()
  grads_NxP = noise.per_example_grads(losses, params, x, y)
  batch_grad = train.flat_entries(jax.grad(lambda p: losses(p, x, y).mean())(params))
  np.testing.assert_allclose(grads_NxP.mean(0), batch_grad, rtol=1e-5, atol=1e-7)


def test_per_example_grads_average_to_batch_gradient_resnet_without_bn():
  model, variables = _resnet8("none")
  images, labels = _batch(2)
  grads_NxP = jax.jit(lambda v: noise.per_example_grads(
      noise.separable_loss(model, v), v["params"], images, labels))(variables)
  loss_fn = lambda p: common.loss(model, {**variables, "params": p}, images, labels)
  batch_grad = train.flat_entries(jax.jit(jax.grad(loss_fn))(variables["params"]))
  np.testing.assert_allclose(grads_NxP.mean(0), batch_grad, rtol=1e-4,
                             atol=1e-5 * float(jnp.abs(batch_grad).max()))


def test_pool_statistics_make_eval_mode_equal_train_mode_on_the_pool():
  model, variables = _resnet8("batch")
  images, labels = _batch(8)
  fixed = jax.jit(lambda v: noise.pool_statistics(model, v, images))(variables)
  losses = jax.jit(lambda v: noise.separable_loss(model, v)(v["params"], images, labels))
  separable = losses(fixed).mean()
  np.testing.assert_allclose(separable, common.loss(model, variables, images, labels), rtol=1e-4)


def test_pool_statistics_are_exact_when_the_pre_bn_variance_is_huge():
  """Stem kernel scaled by 3e3: pre-BN variance ~1e7, where inferring the
  statistics from BN's momentum update loses most of their precision."""
  model, variables = _resnet8("batch")
  params = variables["params"]
  stem = {**params["stem"], "conv": {"kernel": 3e3 * params["stem"]["conv"]["kernel"]}}
  variables = {**variables, "params": {**params, "stem": stem}}
  images, _ = _batch(8)
  _, state = model.apply(variables, images, train=True, mutable=["intermediates", "batch_stats"])
  conv_out_NxHxWxC = np.asarray(state["intermediates"]["stem"]["conv_out"][0], np.float64)
  var_C = conv_out_NxHxWxC.var(axis=(0, 1, 2))
  assert var_C.max() > 1e6
  stats = jax.jit(lambda v: noise.pool_statistics(model, v, images))(variables)["batch_stats"]
  np.testing.assert_allclose(stats["stem"]["norm"]["mean"], conv_out_NxHxWxC.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-4 * np.sqrt(var_C.max()))
  np.testing.assert_allclose(stats["stem"]["norm"]["var"], var_C, rtol=1e-4)


def test_measured_noise_respects_bound_when_every_minibatch_is_enumerated():
  """N=8, |B|=2. With replacement (all 64 ordered pairs, equally likely) the
  mean noise equals α²C/|B|; without replacement (all 28 pairs of distinct
  examples) it equals α²C/|B|·(N−|B|)/(N−1), below the bound."""
  losses, params, x, y = _linear_problem()
  grads_NxP = noise.per_example_grads(losses, params, x, y)
  stats = noise.noise_statistics(grads_NxP, tuple(noise.leaf_sizes(params)))
  lr, n, b = 0.3, 8, 2
  with_rep = jnp.asarray(list(itertools.product(range(n), repeat=b)))
  without = jnp.asarray(list(itertools.combinations(range(n), b)))
  measured_with = lr**2 * noise.minibatch_noise(stats["gram_NxN"], with_rep).mean()
  measured_without = lr**2 * noise.minibatch_noise(stats["gram_NxN"], without).mean()
  bound = noise.sgd_noise_bound(lr, stats["C"], b)
  np.testing.assert_allclose(measured_with, bound, rtol=1e-5)
  np.testing.assert_allclose(
      measured_without, noise.expected_noise_without_replacement(lr, stats["C"], b, n), rtol=1e-5)
  assert measured_without < bound
  # The Gram shortcut is the noise of the minibatch's actual gradient.
  for idx in without[:5]:
    g_batch = train.flat_entries(jax.grad(lambda p: losses(p, x[idx], y[idx]).mean())(params))
    np.testing.assert_allclose(noise.minibatch_noise(stats["gram_NxN"], idx[None])[0],
                               jnp.sum(jnp.square(g_batch - stats["mean_grad_P"])), rtol=1e-4)
  np.testing.assert_allclose(stats["C_L"].sum(), stats["C"], rtol=1e-5)


def test_two_batch_estimator_matches_per_example_noise_scale():
  """Enumerating every with-replacement minibatch of sizes 2 and 4 makes the
  mean squared gradient norms exact expectations, where the estimator is exact."""
  losses, params, x, y = _linear_problem()
  grads_NxP = noise.per_example_grads(losses, params, x, y)
  stats = noise.noise_statistics(grads_NxP, tuple(noise.leaf_sizes(params)))
  def mean_sq_norm(size):
    idx = jnp.asarray(list(itertools.product(range(8), repeat=size)))
    return jnp.mean(jnp.sum(jnp.square(grads_NxP[idx].mean(1)), -1))
  est = noise.two_batch_noise_scale(mean_sq_norm(2), mean_sq_norm(4), 2, 4)
  np.testing.assert_allclose(est["grad_sq_norm"], stats["grad_sq_norm"], rtol=1e-3)
  np.testing.assert_allclose(est["trace_sigma"], stats["C"], rtol=1e-3)
  np.testing.assert_allclose(est["b_simple"], stats["b_simple"], rtol=1e-3)


def test_relative_loss_is_one_at_zero_and_first_order_for_small_steps():
  model, variables = _resnet8("none")
  images, labels = _batch(8)
  etas = (0.0, 1e-6, 3e-6)
  found = divergence.along_gradient_host(model, variables, images, labels, etas)
  rel = np.asarray(found["relative_loss_E"])
  assert rel[0] == 1.0 and float(found["grad_change_E"][0]) == 0.0
  linear = np.asarray(landscape.first_order_relative_loss(
      found["loss"], found["grad_norm"], found["eta_E"]))
  assert np.all(rel[1:] < 1.0)
  np.testing.assert_allclose(1.0 - rel[1:], 1.0 - linear[1:], rtol=0.05)
  # The jittable lax.map version gives the same numbers.
  mapped = jax.jit(lambda v: landscape.along_gradient(model, v, images[:2], labels[:2],
                                                      etas[:2]))(variables)
  host = divergence.along_gradient_host(model, variables, images[:2], labels[:2], etas[:2])
  np.testing.assert_allclose(mapped["loss_E"], host["loss_E"], rtol=1e-5)


def test_largest_stable_eta_stops_at_the_first_divergence():
  etas = jnp.asarray([1e-3, 1e-2, 1e-1, 1.0])
  stable = lambda rel: float(landscape.largest_stable_eta(etas, jnp.asarray(rel)))
  assert stable([1.0, 2e3, 1.0, 1.0]) == pytest.approx(1e-3)
  assert stable([1.0, 2.0, jnp.nan, 1.0]) == pytest.approx(1e-2)
  assert stable([1.0, 1.0, 1.0, 1.0]) == 1.0
  assert stable([jnp.inf] * 4) == 0.0


def _straightforward_f2(config, model, variables, images, labels, lr: float,
                       train_mode_noise) -> dict:
  """F2's numbers by their definitions: one example, then one minibatch, at a time, in numpy.

  `train_mode_noise` is `noise.train_mode_noise` of `model`: one backward pass per minibatch.
  """
  a, batch = config.analysis, config.train.batch_size
  n, params = labels.shape[0], variables["params"]
  loss = noise.separable_loss(model, noise.pool_statistics(model, variables, images))
  grad = jax.jit(lambda x, y: train.flat_entries(jax.grad(lambda p: loss(p, x, y)[0])(params)))
  grads_NxP = np.stack([grad(images[i:i + 1], labels[i:i + 1]) for i in range(n)]).astype(np.float64)
  mean_P = grads_NxP.mean(0)
  c, grad_sq = np.mean(np.sum((grads_NxP - mean_P) ** 2, 1)), np.sum(mean_P ** 2)
  idx = {k: np.asarray(v) for k, v in sgd_noise.minibatches(
      n, batch, a.num_batches, a.num_train_batches, a.big_batch, a.seed).items()}
  sgd = lambda rows: np.mean([np.sum((grads_NxP[r].mean(0) - mean_P) ** 2) for r in rows])
  train_mode = lambda rows: np.asarray([train_mode_noise(
      variables, images[r], labels[r], mean_P.astype(np.float32)) for r in rows])
  k = a.num_train_batches
  without, small, big = (train_mode(rows) for rows in
                         (idx["without"][:k], idx["with"][:k], idx["big"]))
  big_batch = idx["big"].shape[1]
  g_sq = (big_batch * big[:, 1].mean() - batch * small[:, 1].mean()) / (big_batch - batch)
  trace = (small[:, 1].mean() - big[:, 1].mean()) / (1 / batch - 1 / big_batch)
  return {"C": c, "grad_sq_norm": grad_sq, "bound": lr**2 * c / batch,
          "expected_without_replacement": lr**2 * c / batch * (n - batch) / (n - 1),
          "measured": lr**2 * sgd(idx["without"]),
          "measured_with_replacement": lr**2 * sgd(idx["with"]),
          "measured_train_mode": lr**2 * without[:, 0].mean(), "b_simple": c / grad_sq,
          "b_simple_two_batch_train_mode": trace / g_sq}


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_sgd_noise_measure_equals_the_straightforward_computation(norm):
  """Chunked per-example gradients, the Gram shortcuts and (without BN) the train-mode noise
  taken from them give F2's numbers as computed one example and one minibatch at a time."""
  config = load_config("sgd_noise", "smoke")
  config.train.batch_size = 4
  config.analysis.update(pool_size=16, num_batches=8, num_train_batches=3, big_batch=8, chunk=4)
  model, variables = _resnet8(norm)
  images, labels = _batch(16)
  lr, programs = 0.05, sgd_noise.Programs(model)
  measured = jax.device_get(sgd_noise.measure(config, programs, variables, (images, labels), lr))
  expected = _straightforward_f2(config, model, variables, images, labels, lr,
                                 programs.train_noise)
  assert measured["finite"]
  for name, value in expected.items():
    np.testing.assert_allclose(measured[name], value, rtol=2e-4, err_msg=name)
  assert len(measured["layer_C"]) == len(measured["layers"])
  np.testing.assert_allclose(sum(measured["layer_C"]), expected["C"], rtol=2e-4)


def _strict_json(path: str):
  def reject(constant):
    raise ValueError(f"non-strict JSON constant {constant}")
  with open(path) as f:
    return json.load(f, parse_constant=reject)


@pytest.mark.parametrize("name", ["divergence", "sgd_noise"])
def test_smoke_job_writes_json_and_figure(name, tmp_path, caplog):
  """The smoke config, shrunk further (ResNet-8, fewer points) to keep the suite fast."""
  config = load_config(name, "smoke")
  config.model.depth = 8
  if name == "divergence":
    config.analysis.num_etas = 4
    config.analysis.minibatches = (1, 2)
    config.train.batch_size = 8
  else:
    config.sweep.lrs = (1e-3, 1e-1)
    config.analysis.update(pool_size=32, num_train_batches=2, big_batch=16, train_steps=2)
    config.train.batch_size = 8
  config_lib.validate(config)
  workdir = str(tmp_path)
  with caplog.at_level("INFO"):
    experiments.get(config.job).run(config, workdir)
  measured = 2 * (2 if name == "sgd_noise" else len(config.analysis.minibatches))
  assert f"{name} {measured}/{measured} (" in caplog.text  # progress, out of the total
  result = _strict_json(os.path.join(workdir, "analysis", f"{name}.json"))
  assert os.path.getsize(os.path.join(workdir, "figures", f"{name}.png")) > 10_000
  assert [arm["norm"] for arm in result["arms"]] == ["batch", "none"]
  if name == "sgd_noise":
    for member in result["arms"][0]["members"]:
      assert member["measured"] <= member["bound"]


def test_jsonable_turns_non_finite_into_null():
  value = {"a": np.asarray([1.0, np.inf, np.nan]), "b": float("-inf")}
  out = json.dumps(workdir_lib.jsonable(value), allow_nan=False)
  assert json.loads(out) == {"a": [1.0, None, None], "b": None}
