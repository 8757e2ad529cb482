"""The CIFAR ResNet: exact parameter counts, shapes, options, recorded layers."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import errors, models
from bnjax.models import init_variables, make_model, resnet
from bnjax.models.resnet import CifarResNet, stack_blocks, unscan


def _param_count(model) -> int:
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("scan_blocks", [False, True])
@pytest.mark.parametrize("depth, expected", [(20, 269_722), (110, 1_727_962)])
def test_parameter_counts_match_the_paper(depth, expected, scan_blocks):
  model = CifarResNet(depth=depth, norm="batch", shortcut="A", scan_blocks=scan_blocks)
  assert _param_count(model) == expected


@pytest.mark.parametrize("depth", [32, 44, 56])
def test_parameter_counts_of_other_depths(depth):
  # About 0.46M, 0.66M, 0.85M (He et al. 2016, table 6).
  expected = {32: 0.46e6, 44: 0.66e6, 56: 0.85e6}[depth]
  assert abs(_param_count(CifarResNet(depth=depth)) - expected) < 0.01e6


def test_without_bn_convs_carry_biases_and_no_batch_stats():
  shapes = jax.eval_shape(CifarResNet(depth=8, norm="none").init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert "batch_stats" not in shapes
  assert "bias" in shapes["params"]["stem"]["conv"]
  with_bn = jax.eval_shape(CifarResNet(depth=8, norm="batch").init, jax.random.key(0),
                           jnp.zeros((1, 32, 32, 3)))
  assert "bias" not in with_bn["params"]["stem"]["conv"]


def test_shortcut_b_uses_projections():
  shapes = jax.eval_shape(CifarResNet(depth=8, shortcut="B").init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert "projection" in shapes["params"]["stage2_block00"]
  assert "projection" not in shapes["params"]["stage1_block00"]


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_output_shape_and_train_mode_updates_batch_stats(norm):
  model = CifarResNet(depth=8, norm=norm)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert ("batch_stats" in updates) == (norm == "batch")


def test_intermediates_are_recorded_only_when_asked():
  model = CifarResNet(depth=8, norm="batch")
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  assert set(variables) == {"params", "batch_stats"}
  logits, state = model.apply(variables, x, mutable=["intermediates"])
  flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
  names = set(flat)
  # ResNet-8: stem + 3 blocks x 2 convs = 7 convs, each with conv_out and norm_out.
  assert sum(k.endswith("conv_out") for k in names) == 7
  assert sum(k.endswith("norm_out") for k in names) == 7
  assert sum(k.endswith("block_out") for k in names) == 3
  np.testing.assert_array_equal(flat["logits"][0], logits)


def test_bad_depth_and_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="6n\\+2"):
    _param_count(CifarResNet(depth=21))
  with pytest.raises(ValueError, match="Unknown model"):
    make_model({"name": "no_such_family", "depth": 20})
  with pytest.raises(ValueError, match="Unknown norm"):
    _param_count(CifarResNet(depth=8, norm="instance"))


@pytest.mark.parametrize("field, value, message", [
    ("depth", 21, "config.model.depth: ResNet depth 21 is not of the form 6n\\+2"),
    ("depth", "20", "config.model.depth must be a whole number 6n\\+2"),
    ("norm", "instance", "Unknown norm 'instance' \\(config.model.norm\\)"),
    ("shortcut", "C", "Unknown shortcut option 'C' \\(config.model.shortcut\\)"),
    ("initializer", "zeros", "Unknown initializer 'zeros' \\(config.model.initializer\\)"),
    ("scan_blocks", 1, "config.model.scan_blocks must be true or false"),
    ("width", 4, "config.model.width is not a field of the 'resnet' model"),
])
def test_the_resnet_family_rejects_a_bad_field_in_one_sentence(field, value, message):
  config = dict(name="resnet", depth=20, norm="batch", shortcut="A", initializer="he_normal")
  models.validate(config)
  with pytest.raises(errors.ConfigError, match=message) as info:
    models.validate({**config, field: value})
  assert "\n" not in str(info.value) and str(info.value).endswith(".")


@pytest.mark.parametrize("norm, shortcut", [("batch", "A"), ("none", "B"), ("fixup", "A"),
                                            ("skipinit", "B"), ("layer", "A"),
                                            ("batch_last", "B")])
def test_scanned_blocks_compute_the_unrolled_function(norm, shortcut):
  """unscan(scanned variables) in the unrolled model gives the same logits,
  BN statistics and recorded layers, under the same names."""
  scanned = CifarResNet(depth=14, norm=norm, shortcut=shortcut, scan_blocks=True)
  unrolled = scanned.clone(scan_blocks=False)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  # Moved off the initial values, so that Fixup and SkipInit branches are not zero.
  variables = jax.tree.map(lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size)).reshape(a.shape),
                           scanned.init(jax.random.key(0), x))
  assert variables["params"]["stage2_blocks"]["block"]["conv_norm1"]["conv"]["kernel"].shape == (
      1, 3, 3, 32, 32)
  per_block = unscan(variables)
  assert jax.tree.structure(per_block) == jax.tree.structure(
      jax.eval_shape(unrolled.init, jax.random.key(0), x))
  mutable = ["batch_stats", "intermediates"]
  logits_s, state_s = scanned.apply(variables, x, train=True, mutable=mutable)
  logits_u, state_u = unrolled.apply(per_block, x, train=True, mutable=mutable)
  np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-5)
  flat_s = flax.traverse_util.flatten_dict(unscan(state_s), sep="/")
  flat_u = flax.traverse_util.flatten_dict(state_u, sep="/")
  assert flat_s.keys() == flat_u.keys()
  assert "intermediates/stage3_block01/conv_norm2/conv_out" in flat_u
  for key in flat_u:
    np.testing.assert_allclose(flat_s[key][0] if key.startswith("inter") else flat_s[key],
                               flat_u[key][0] if key.startswith("inter") else flat_u[key],
                               rtol=1e-5, atol=1e-5, err_msg=key)


def test_unscan_leaves_unrolled_trees_alone():
  variables = jax.eval_shape(CifarResNet(depth=8).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert jax.tree.structure(unscan(variables)) == jax.tree.structure(variables)


def test_scanning_blocks_changes_no_initial_value():
  scanned = CifarResNet(depth=14, scan_blocks=True)
  x = jnp.zeros((1, 32, 32, 3))
  variables = init_variables(scanned, jax.random.key(3), x)
  unrolled = scanned.clone(scan_blocks=False).init(jax.random.key(3), x)
  jax.tree.map(np.testing.assert_array_equal, unscan(variables), unrolled)
  assert jax.tree.structure(stack_blocks(unrolled)) == jax.tree.structure(variables)
