"""Layer analyses: known answers (BN's gradient identities, the quarter-circle law), and the jobs end to end."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import config as config_lib, data, errors, experiments, plots, sweep, train
from bnjax.analysis import activations as act, common, gradients as grad, random_matrix as rm
from bnjax.experiments import _members, activations as activations_experiment
from bnjax.experiments import gradients as gradients_experiment
from bnjax.models import make_model, resnet

from conftest import REPO, load_config, tiny_config


def _model(norm: str, depth: int = 8) -> nn.Module:
  return make_model(dict(name="resnet", depth=depth, norm=norm, shortcut="A",
                         initializer="he_normal"))


@pytest.fixture(scope="module")
def batch(tiny_dataset):
  return data.train_batch(tiny_dataset, 0, 0, 8, augmentation=False)


def test_bn_input_gradient_sums_to_zero_and_is_orthogonal_to_x_hat():
  kx, kg = jax.random.split(jax.random.key(0))
  x = 3.0 + 2.0 * jax.random.normal(kx, (8, 4, 4, 5))
  cotangent = jax.random.normal(kg, x.shape)
  out = jax.jit(grad.bn_input_gradient)(x, cotangent)
  scale = float(jnp.max(jnp.abs(out["grad_x"]))) * x[..., 0].size
  np.testing.assert_allclose(jnp.sum(out["grad_x"], axis=(0, 1, 2)), 0.0, atol=1e-5 * scale)
  np.testing.assert_allclose(jnp.sum(out["grad_x"] * out["x_hat"], axis=(0, 1, 2)), 0.0,
                             atol=1e-4 * scale)
  # The same holds for Flax's BatchNorm (with its learned scale and shift) in train mode.
  layer = nn.BatchNorm(use_running_average=False, epsilon=1e-5)
  variables = layer.init(jax.random.key(1), x)
  f = lambda xx: jnp.sum(layer.apply(variables, xx, mutable=["batch_stats"])[0] * cotangent)
  np.testing.assert_allclose(jnp.sum(jax.jit(jax.grad(f))(x), axis=(0, 1, 2)), 0.0, atol=1e-5 * scale)


class _ConvBN(nn.Module):
  """A conv, BN and a classifier: the smallest model with a conv weight before BN."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(8, (3, 3), use_bias=False, name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, epsilon=1e-5, name="norm")(x))
    return nn.Dense(10, name="classifier")(jnp.mean(x, axis=(1, 2)))


def test_conv_followed_by_bn_is_scale_invariant(batch):
  model = _ConvBN()
  images, labels = batch
  variables = model.init(jax.random.key(0), images)

  @jax.jit
  def loss_of(kernel):
    params = {**variables["params"], "conv": {"kernel": kernel}}
    return common.loss(model, {**variables, "params": params}, images, labels)

  w = variables["params"]["conv"]["kernel"]
  grad_of = jax.jit(jax.grad(loss_of))
  g = grad_of(w)
  np.testing.assert_allclose(loss_of(3.0 * w), loss_of(w), rtol=1e-5)
  cosine = jnp.vdot(g, w) / (jnp.linalg.norm(g) * jnp.linalg.norm(w))
  assert abs(float(cosine)) < 1e-4
  np.testing.assert_allclose(jnp.linalg.norm(grad_of(3.0 * w)), jnp.linalg.norm(g) / 3.0, rtol=1e-3)


def test_gaussian_spectra_follow_the_quarter_circle_and_spread_with_k():
  spectra = jax.jit(lambda key: rm.product_spectra(key, 200, (1, 3, 5), trials=2))(jax.random.key(0))
  one = np.asarray(spectra["k1"])
  assert one.min() >= 0.0 and one.max() <= 2.0 + 0.1  # support [0, 2], finite-N slack
  # E s^2 = tr(P^T P) / N = 1 for every product length.
  for s in spectra.values():
    np.testing.assert_allclose(np.mean(np.square(s)), 1.0, atol=0.1)
  tops = [float(np.max(spectra[f"k{k}"])) for k in (1, 3, 5)]
  smalls = [float(np.mean(spectra[f"k{k}"] < 0.1)) for k in (1, 3, 5)]
  assert tops[0] < tops[1] < tops[2] and smalls[0] < smalls[1] < smalls[2]


def test_channel_moments_match_numpy():
  x = np.random.default_rng(0).normal(1.0, 2.0, (6, 5, 4, 3)).astype(np.float32)
  out = act.channel_moments(jnp.asarray(x))
  np.testing.assert_allclose(out["mean_C"], x.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(out["var_C"], x.var(axis=(0, 1, 2)), rtol=1e-4)
  np.testing.assert_allclose(out["rms"], np.sqrt(np.mean(x ** 2)), rtol=1e-5)


def test_input_independence_scalars():
  constant = jnp.tile(jnp.asarray([[0.3, -0.1, 0.5, -0.7]]), (16, 1))
  out = grad.input_independence(constant)
  np.testing.assert_allclose(out["same_class_share"], 1.0)
  np.testing.assert_allclose(out["mean_cosine"], 1.0, rtol=1e-6)
  varied = grad.input_independence(jnp.eye(4))  # every row its own class, orthogonal
  np.testing.assert_allclose(varied["same_class_share"], 0.25)
  np.testing.assert_allclose(varied["mean_cosine"], 0.0, atol=1e-7)


def test_layer_functions_on_a_tiny_resnet(batch):
  images, labels = batch
  model = _model("none")
  variables = train.init_variables(model, 0)

  @jax.jit
  def everything(v, x, y):
    return (act.numbered_layers(model, v, x), act.layer_statistics(model, v, x),
            act.signal_propagation(model, v, x),
            act.diverging_update_moments(model, v, x, y, 1e-3, jnp.asarray([0.0, 1.0]), (2, 8)))

  layers, stats, signal, update = everything(variables, images, labels)
  assert len(layers) == 8  # ResNet-8: 7 convs and the classifier are layers 1..8
  assert len(stats["conv_out"]) == 7 and stats["norm_out"] == [] and len(stats["block_out"]) == 3
  np.testing.assert_allclose(signal["var_N"], [jnp.mean(s["var_C"]) for s in stats["block_out"]],
                             rtol=1e-5)
  # At fraction 0 the step is not applied yet: the moments are those of the network itself.
  np.testing.assert_allclose(update["mean_2"][0], jnp.mean(layers[1], axis=(0, 1, 2)), rtol=1e-4,
                             atol=1e-6)
  assert update["var_8"].shape == (2, 10) and bool(jnp.all(update["var_8"][1] != update["var_8"][0]))


def test_layer_numbers_outside_1_to_L_are_refused(batch):
  """Layer 0 or -1 would silently count from the end; past L would fail obscurely."""
  images, labels = batch
  model = _model("none")
  variables = train.init_variables(model, 0)
  params = variables["params"]  # shaped like a gradient, which is all layer_gradient_values needs
  np.testing.assert_array_equal(grad.layer_gradient_values(model, params, 1),
                                common.conv_kernels(params, model)[0][1].ravel())
  # ResNet-8: 7 convs, then the classifier (10 x 64 ... its kernel is 64 x 10) as layer 8.
  assert grad.layer_gradient_values(model, params, 8).shape == (64 * 10,)
  for layer in (0, -1, 9, "deepest", 1.5):
    with pytest.raises(errors.ConfigError, match=r"pick a layer from 1 to 8"):
      grad.layer_gradient_values(model, params, layer)
  update = lambda layers: jax.eval_shape(lambda v: act.diverging_update_moments(
      model, v, images, labels, 1e-3, jnp.asarray([0.0]), layers), variables)
  assert update((1, 8))["var_8"].shape == (1, 10)
  for layers in ((0,), (2, -1), (9,)):
    with pytest.raises(errors.ConfigError, match=r"weight layers 1\.\.8 only"):
      update(layers)


def test_layer_positions_fit_any_depth_and_keep_the_papers_layers():
  """ResNet-110's paper layers (55 for F3; 8, 44, 80 for F5) are the defaults' positions."""
  paper = _model("batch", depth=110)
  assert common.num_weight_layers(paper) == act.num_numbered_layers(paper) == 110
  assert common.resolve_layer(gradients_experiment.defaults().histogram_layer, 110) == 55
  assert common.resolve_layers(activations_experiment.defaults().update_layers, 110) == (8, 44, 80)
  # The same settings on a ResNet-8 (8 weight layers) and a 3-layer MLP (4).
  assert common.resolve_layers(("first", "middle", "last", 0.5), 8) == (1, 4, 8)
  assert common.resolve_layers((0.07, 0.4, 0.73), 8) == (1, 3, 6)
  assert common.resolve_layers((0.07, 0.4, 0.73, "middle"), 4) == (1, 2, 3)
  with pytest.raises(errors.ConfigError, match=r"config.analysis.update_layers has the fraction"
                                               r" 1.5, outside \(0, 1\)") as info:
    common.resolve_layers((0.4, 1.5), 8, "config.analysis.update_layers")
  assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_importing_analyze_keeps_the_matplotlib_backend():
  """plots builds Figure objects, so a notebook's backend survives `import bnjax.analyze`."""
  code = "import bnjax.analyze, matplotlib; print(matplotlib.get_backend())"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": REPO}, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "svg"


def _tiny(name: str):
  config = load_config(name, "smoke")
  config.model.depth = 8
  config.data.synthetic_train_size = 64
  config.data.synthetic_test_size = 16
  config.train.batch_size = 8
  config.sweep.seeds = (0,)
  return config


def _strict_json(path: str) -> dict:
  def refuse(constant):
    raise ValueError(f"{constant} in {path}")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


@pytest.mark.parametrize("name, figures, overrides", [
    ("activations", ("activations_f6_depth", "activations_f5_update", "activations_signal"),
     dict(update_layers=(2, 4, 7), num_fractions=3)),
    ("gradients", ("gradients_f7_heatmap", "gradients_f3_histogram"), dict(histogram_layer=4)),
    ("random_matrix", ("random_matrix_f8",),
     dict(matrix_size=32, trials=1, jacobian_batch=2, chunk=20)),
])
def test_smoke_job_writes_json_and_figures(tmp_path, name, figures, overrides):
  config = _tiny(name)
  config.analysis.update(overrides)
  config_lib.validate(config)
  experiments.get(config.job).run(config, str(tmp_path))
  results = _strict_json(os.path.join(tmp_path, "analysis", f"{name}.json"))
  assert results
  for figure in figures:
    assert os.path.getsize(os.path.join(tmp_path, "figures", f"{figure}.png")) > 10_000


@pytest.mark.parametrize("name", ["activations", "gradients", "random_matrix"])
def test_default_configs_are_the_papers_sizes(name):
  config = load_config(name)
  config_lib.validate(config)
  assert config.job == name and config.model.depth == 110 and config.data.name == "cifar10"
  assert config.train.batch_size == 128 and tuple(config.sweep.arms.norm) == ("batch", "none")


def test_analyses_vmap_over_members(batch):
  images, labels = batch
  model = _model("batch")
  members = [train.init_variables(model, seed) for seed in (0, 1)]

  def analysis(v):
    return (act.signal_propagation(model, v, images),
            grad.input_independence(grad.output_gradient(model, v, images, labels)))

  stacked = jax.jit(jax.vmap(analysis))(sweep.stack(members))
  for i, v in enumerate(members):
    one = jax.jit(analysis)(v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6), stacked, one)


def test_layers_stay_in_depth_order_with_a_hundred_blocks_per_stage():
  """ResNet-608 has 101 blocks per stage: block100 must follow block99, not block10."""
  model = _model("none", depth=608)
  params = train.abstract_variables(model)["params"]
  paths = [path for path, _ in common.conv_kernels(params, model)]
  expected = ["stem"] + [f"stage{s}_block{b:02d}/conv_norm{c}"
                         for s in (1, 2, 3) for b in range(101) for c in (1, 2)]
  assert paths == expected
  names = ["classifier/kernel", "stage1_block100/conv_norm1/conv/kernel",
           "stage1_block10/conv_norm1/conv/kernel", "stem/conv/kernel"]
  ordered = sorted(names, key=lambda n: resnet.depth_key(n.rsplit("/", 2)[0]))
  assert ordered == [names[3], names[2], names[1], names[0]]


def test_members_of_a_trained_sweep_get_one_panel_and_heatmap_per_rate(tiny_dataset):
  """From a checkpoint an arm's members differ by rate: each gets its panel and F7 heatmap."""
  config = tiny_config()
  config.sweep.arms.norm = ("batch",)
  config.sweep.seeds = (0, 1)
  config.analysis = gradients_experiment.defaults()
  at_init = list(_members.at_init(config))
  initial = gradients_experiment.measure(config, at_init, tiny_dataset, 0)
  assert list(plots.by_arm(initial["members"])) == ["norm=batch"]  # one panel, both seeds
  assert [m.get("output_grad") is not None for m in initial["members"]] == [True, False]
  trained = [dataclasses.replace(at_init[0], lr=lr) for lr in (0.01, 0.1)]
  result = gradients_experiment.measure(config, trained, tiny_dataset, 0)
  assert list(plots.by_arm(result["members"])) == ["norm=batch, lr 0.01", "norm=batch, lr 0.1"]
  assert all(m.get("output_grad") is not None for m in result["members"])
