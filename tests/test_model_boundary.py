"""The model boundary: a family registered from outside bnjax is built, validated and analysed.

The analyses get every per-layer result in the model's depth order
(`models.ordered_leaves`), never by sorting names; a deep ResNet keeps
block100 after block99.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bnjax import config as config_lib, data, errors, models, train
from bnjax.analysis import common, gradients as grad, noise
from bnjax.models import family, resnet

# The MLP's layers in the order they run. Neither a string sort (dense1,
# dense10, dense2) nor a numeric one (dense1, dense2, dense10) gives it.
MLP_LAYERS = ("dense2", "dense10", "dense1")


class RecordedDense(nn.Dense):
  """nn.Dense that records its output as "layer_out"."""

  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    y_BxF = super().__call__(x_BxD)
    self.sow("intermediates", "layer_out", y_BxF)
    return y_BxF


class TinyMLP(nn.Module):
  """Flattens images and applies two hidden Dense layers and a classifier."""

  widths: tuple[int, int] = (5, 7)
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    x = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1).astype(self.dtype)
    for name, width in zip(MLP_LAYERS, (*self.widths, self.num_classes)):
      x = RecordedDense(width, dtype=self.dtype, name=name)(x)
      x = nn.relu(x) if name != MLP_LAYERS[-1] else x
    self.sow("intermediates", "logits", x)
    return x


class MLPFamily:
  """The "mlp" family as a researcher's script would write it: defaults, validate and build."""

  @staticmethod
  def defaults() -> dict[str, Any]:
    return {"widths": (5, 7)}

  @staticmethod
  def validate(model_config: Mapping[str, Any]) -> None:
    widths = tuple(model_config.get("widths", ()))
    family.check(len(widths) == 2 and all(isinstance(w, int) and w > 0 for w in widths),
                 f"config.model.widths must be two positive whole numbers, got {widths!r}.")

  @staticmethod
  def build(model_config: Mapping[str, Any], num_classes: int, dtype: Any) -> nn.Module:
    return TinyMLP(widths=tuple(model_config["widths"]), num_classes=num_classes, dtype=dtype)


@pytest.fixture
def mlp():
  """TinyMLP registered as "mlp", built from a config dict, and its variables at init."""
  models.register("mlp", MLPFamily)
  model = models.make_model({"name": "mlp", "widths": (5, 7)})
  yield model, train.init_variables(model, 0)
  del models.FAMILIES["mlp"]


def _mlp_config(widths: tuple, arms: tuple) -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.model = ml_collections.ConfigDict({"name": "mlp", "widths": widths})
  config.sweep.arms = ml_collections.ConfigDict({"widths": arms})
  return config


def test_a_registered_family_is_built_from_its_config(mlp):
  model, variables = mlp
  assert isinstance(model, TinyMLP) and model.widths == (5, 7)
  assert "mlp" in models.FAMILIES and sorted(variables["params"]) == sorted(MLP_LAYERS)
  assert variables["params"]["dense10"]["kernel"].shape == (5, 7)


def test_a_registered_family_validates_its_fields_and_sweep_arms(mlp):
  config_lib.validate(_mlp_config((5, 7), ((5, 7), (3, 3))))
  cases = [(_mlp_config((5, 7), ((5, 7), (0, 3))),
            r"config.model.widths must be two positive whole numbers, got \(0, 3\)"),
           (_mlp_config((5,), ((5,),)), r"config.model.widths must be two .* got \(5,\)")]
  bad_field = _mlp_config((5, 7), ((5, 7),))
  bad_field.model.depth = 20
  cases.append((bad_field, "config.model.depth is not a field of the 'mlp' model"))
  for config, message in cases:
    with pytest.raises(errors.ConfigError, match=message) as info:
      config_lib.validate(config)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_a_family_without_build_is_refused():
  with pytest.raises(TypeError, match="lacks \\['defaults', 'build'\\]"):
    models.register("broken", type("Broken", (), {"validate": staticmethod(lambda c: None)}))
  assert "broken" not in models.FAMILIES


def test_analyses_see_a_registered_model_in_depth_order(mlp, tiny_dataset):
  model, variables = mlp
  images, labels = data.train_batch(tiny_dataset, 0, 0, 4, augmentation=False)
  assert sorted(MLP_LAYERS) != list(MLP_LAYERS)  # names alone would misorder them
  recorded = common.recorded_layers(model, variables, images, "layer_out")
  assert [path for path, _ in recorded] == list(MLP_LAYERS)
  assert [x.shape for _, x in recorded] == [(4, 5), (4, 7), (4, 10)]
  assert [path for path, _ in common.recorded_layers(model, variables, images, "logits")] == [""]
  # Gradients come back with their keys sorted; the order is still the model's.
  _, grads = jax.jit(lambda v: common.loss_and_grad(model, v, images, labels))(variables)
  assert [path for path, _ in common.weight_kernels(model, grads)] == list(MLP_LAYERS)
  norms = grad.weight_gradient_norms(model, grads)
  np.testing.assert_allclose(norms, [np.linalg.norm(grads[n]["kernel"]) for n in MLP_LAYERS],
                             rtol=1e-6)
  params = variables["params"]
  sums = noise.layer_sums(model, params, jnp.square(train.flat_entries(params)))
  assert [path for path, _ in sums] == [f"{n}/{leaf}" for n in MLP_LAYERS
                                        for leaf in ("bias", "kernel")]
  for path, value in sums:
    layer, leaf = path.split("/")
    np.testing.assert_allclose(value, jnp.sum(jnp.square(params[layer][leaf])), rtol=1e-6)


def test_a_resnet_of_depth_608_orders_its_layers_by_depth():
  """101 blocks a stage, built abstractly: block100 follows block99, not block10."""
  model = models.make_model({**config_lib.base_config().model.to_dict(), "depth": 608})
  models.validate({**config_lib.base_config().model.to_dict(), "depth": 608})
  params = train.abstract_variables(model)["params"]
  paths = [path for path, _ in models.ordered_leaves(model, params)]
  assert paths[0].startswith("stem/") and paths[-1].startswith("classifier/")
  blocks = list(dict.fromkeys(p.split("/")[0] for p in paths[1:] if p.startswith("stage")))
  assert blocks == [f"stage{s}_block{b:02d}" for s in (1, 2, 3) for b in range(101)]
  assert blocks.index("stage1_block100") == blocks.index("stage1_block99") + 1
  layers = [path for path, _ in common.weight_kernels(model, params)]
  assert len(layers) == 608 and layers[0] == "stem/conv" and layers[-1] == "classifier"
  assert layers[1:3] == ["stage1_block00/conv_norm1/conv", "stage1_block00/conv_norm2/conv"]


def test_a_scanned_resnet_lists_its_blocks_as_the_unrolled_one_does():
  scanned = models.make_model({**config_lib.base_config().model.to_dict(), "depth": 14,
                               "scan_blocks": True})
  unrolled = scanned.clone(scan_blocks=False)
  shapes = jax.eval_shape(unrolled.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  leaves, treedef = jax.tree.flatten(shapes)  # leaf i filled with i: cheap and tellable apart
  params = jax.tree.unflatten(treedef, [jnp.full(x.shape, i, x.dtype)
                                       for i, x in enumerate(leaves)])
  stacked = resnet.stack_blocks(params)  # what init_variables gives the scanned model
  assert "stage1_blocks" in stacked
  ordered = models.ordered_leaves(scanned, stacked)
  expected = models.ordered_leaves(unrolled, params)
  assert [p for p, _ in ordered] == [p for p, _ in expected]
  for (_, a), (_, b) in zip(ordered, expected):
    np.testing.assert_array_equal(a, b)
  model, per_block = models.unrolled(scanned, {"params": stacked})
  assert model == unrolled
  jax.tree.map(np.testing.assert_array_equal, per_block, {"params": params})


def test_a_model_without_scanned_layers_is_its_own_unrolled_twin(mlp):
  model, variables = mlp
  same_model, same_variables = models.unrolled(model, variables)
  assert same_model is model and same_variables is variables
