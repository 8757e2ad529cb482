"""The ResNet's norms beyond BN and none: layer, group, Fixup, SkipInit and partial BN.

Each trains, has the parameters its paper gives it, keeps the recorded
layers the analyses read, runs scanned as unrolled, and Fixup and SkipInit
blocks start as their shortcut. The "batch" and "none" models are what they
were before these norms existed.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import config as config_lib, errors
from bnjax.analysis import activations, common
from bnjax.models import layers, resnet
from bnjax.models.resnet import BasicBlock, ConvNorm, CifarResNet

NEW_NORMS = ("layer", "group", "fixup", "skipinit", "batch_first", "batch_last",
             "batch_except_last", "batch_head")
# ResNet-8, shortcut A: the ConvNorms whose normalisation is a layer, stem first.
CONV_NORMS = ("stem", "stage1_block00/conv_norm1", "stage1_block00/conv_norm2",
              "stage2_block00/conv_norm1", "stage2_block00/conv_norm2",
              "stage3_block00/conv_norm1", "stage3_block00/conv_norm2")
NORMALISED = {"batch": CONV_NORMS, "layer": CONV_NORMS, "group": CONV_NORMS,
              "none": (), "fixup": (), "skipinit": (), "batch_first": CONV_NORMS[:3],
              "batch_last": CONV_NORMS[5:], "batch_except_last": CONV_NORMS[:5],
              "batch_head": ("head_norm",)}
BLOCKS = ("stage1_block00", "stage2_block00", "stage3_block00")


def _images(batch: int = 4, seed: int = 1) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (batch, 32, 32, 3))


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def test_every_norm_is_a_value_of_config_model_norm():
  assert set(layers.NORMS) == {"batch", "none", *NEW_NORMS}
  config = config_lib.base_config()
  config.sweep.arms.norm = ("batch", "none", "fixup", "skipinit")
  config_lib.validate(config)
  for norm in layers.NORMS:
    resnet.validate({"name": "resnet", "depth": 20, "norm": norm})


def test_an_unknown_norm_is_rejected_in_one_sentence_listing_the_valid_ones():
  with pytest.raises(errors.ConfigError, match="Unknown norm 'instance'") as info:
    resnet.validate({"name": "resnet", "depth": 20, "norm": "instance"})
  message = str(info.value)
  assert "\n" not in message and message.endswith(".")
  assert all(repr(norm) in message for norm in layers.NORMS)
  with pytest.raises(ValueError, match="Unknown norm 'instance'"):
    CifarResNet(depth=8, norm="instance").init(jax.random.key(0), _images(1))


@pytest.mark.parametrize("norm", NEW_NORMS)
def test_every_norm_trains_one_step_without_nan(norm):
  model = CifarResNet(depth=8, norm=norm)
  images, labels = _images(), jnp.arange(4)
  variables = model.init(jax.random.key(0), images)

  def loss_fn(params, batch_stats):
    logits, state = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, state.get("batch_stats", {})

  @jax.jit
  def step(params, batch_stats):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), batch_stats, loss, grads

  params, stats = variables["params"], variables.get("batch_stats", {})
  new_params, new_stats, loss, grads = step(params, stats)
  after, _ = jax.jit(loss_fn)(new_params, new_stats)
  for tree in (loss, grads, new_params, new_stats, after):
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)), norm
  assert not np.allclose(_flat(new_params)["classifier/kernel"],
                         _flat(params)["classifier/kernel"])
  if norm == "fixup":  # every logit starts at 0: the loss is log K
    np.testing.assert_allclose(loss, np.log(10), rtol=1e-6)


@pytest.mark.parametrize("norm", ["batch", "none", *NEW_NORMS])
def test_each_norm_has_its_normalisation_layers_and_records(norm):
  """Scale and shift per channel wherever a norm normalises, conv biases elsewhere."""
  model = CifarResNet(depth=8, norm=norm)
  variables = model.init(jax.random.key(0), _images(2))
  params = _flat(variables["params"])
  normalised = NORMALISED[norm]
  for path in (*CONV_NORMS, "head_norm"):
    width = 64 if path.startswith(("stage3", "head")) else 32 if path.startswith("stage2") else 16
    if path in normalised:
      assert params[f"{path}/norm/scale"].shape == (width,), path
      assert params[f"{path}/norm/bias"].shape == (width,), path
    else:
      assert not any(k.startswith(f"{path}/norm/") for k in params), path
    if path != "head_norm":
      has_bias = path not in normalised and norm != "fixup"
      assert (f"{path}/conv/bias" in params) == has_bias, path
  batch_normalised = normalised if "batch" in norm else ()
  stats = _flat(variables.get("batch_stats", {}))
  assert sorted(stats) == sorted(f"{p}/norm/{s}" for p in batch_normalised for s in ("mean", "var"))
  _, state = model.apply(variables, _images(2), train=True, mutable=["batch_stats",
                                                                     "intermediates"])
  recorded = _flat(state["intermediates"])
  assert sorted(k[:-len("/norm_out")] for k in recorded if k.endswith("norm_out")) == sorted(
      normalised)
  for kind, count in (("conv_out", 7), ("branch_out", 3), ("block_out", 3)):
    assert sum(k.endswith(kind) for k in recorded) == count, kind
  # The analyses' layers 1..L: 7 convolutions, then the classifier.
  kernels = [path for path, _ in common.weight_kernels(model, variables["params"])]
  assert kernels == [*(f"{p}/conv" for p in CONV_NORMS), "classifier"]
  assert len(activations.numbered_layers(model, variables, _images(2))) == 8


def test_layer_norm_normalises_each_example_and_group_norm_groups_of_channels():
  """LayerNorm over (H, W, C) per example; GroupNorm in groups of 2 channels at widths 16-64."""
  x = _images(2)
  for norm in ("layer", "group"):
    model = CifarResNet(depth=8, norm=norm)
    variables = model.init(jax.random.key(0), x)
    _, state = model.apply(variables, x, mutable=["intermediates"])
    stem = state["intermediates"]["stem"]["norm_out"][0]
    stage3 = state["intermediates"]["stage3_block00"]["conv_norm1"]["norm_out"][0]
    if norm == "layer":
      for y in (stem, stage3):
        np.testing.assert_allclose(jnp.mean(y, axis=(1, 2, 3)), 0, atol=1e-5)
        np.testing.assert_allclose(jnp.var(y, axis=(1, 2, 3)), 1, rtol=1e-3)
        assert float(jnp.max(jnp.abs(jnp.mean(y, axis=(1, 2))))) > 1e-2  # not per channel
    else:
      # 16 channels in 8 groups, 64 in 32: adjacent pairs, never one channel on its own.
      for y, groups in ((stem, 8), (stage3, 32)):
        pairs = y.reshape(*y.shape[:3], groups, 2)
        np.testing.assert_allclose(jnp.mean(pairs, axis=(1, 2, 4)), 0, atol=1e-5)
        np.testing.assert_allclose(jnp.var(pairs, axis=(1, 2, 4)), 1, rtol=1e-3)
        assert float(jnp.max(jnp.abs(jnp.mean(y, axis=(1, 2))))) > 1e-2  # not per channel


def test_group_norm_keeps_wu_and_he_32_groups_and_never_a_group_of_one_channel():
  assert [layers.num_groups(c) for c in (16, 32, 64, 128, 256)] == [8, 16, 32, 32, 32]
  for channels in range(2, 300):
    groups = layers.num_groups(channels)
    assert 1 <= groups <= layers.GROUPS and channels % groups == 0, channels
    assert channels // groups >= 2, channels


def test_fixup_parameters_follow_the_paper():
  """Zhang, Dauphin & Ma (2019): scalar biases 0, multipliers 1, conv2 and classifier 0,
  conv1 He-normal times L^(-1/2), no conv biases."""
  depth = 20
  num_blocks = 3 * resnet.blocks_per_stage(depth)  # L = 9
  model = CifarResNet(depth=depth, norm="fixup", shortcut="B", initializer="glorot_uniform")
  params = _flat(model.init(jax.random.key(0), _images(1))["params"])
  assert params["stem_bias"].shape == () and params["head_bias"].shape == ()
  blocks = sorted({k.split("/")[0] for k in params if k.startswith("stage")})
  assert len(blocks) == num_blocks
  for block in blocks:
    for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
      assert params[f"{block}/{name}"].shape == () and params[f"{block}/{name}"] == 0
    assert params[f"{block}/scale"].shape == () and params[f"{block}/scale"] == 1
    assert not np.any(params[f"{block}/conv_norm2/conv/kernel"])
  assert not any(k.endswith("/bias") and "/conv/" in k for k in params)
  assert not np.any(params["classifier/kernel"]) and not np.any(params["classifier/bias"])
  for path, fan_in, scale in (("stage3_block01/conv_norm1", 9 * 64, num_blocks ** -0.5),
                              ("stem", 9 * 3, 1.0), ("stage3_block00/projection", 32, 1.0)):
    kernel = params[f"{path}/conv/kernel"]
    np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / fan_in) * scale, rtol=0.1,
                               err_msg=path)


def test_skipinit_adds_one_zero_scalar_per_block_and_keeps_conv_biases():
  none = _flat(CifarResNet(depth=8, norm="none").init(jax.random.key(0), _images(1))["params"])
  skip = _flat(CifarResNet(depth=8, norm="skipinit").init(jax.random.key(0), _images(1))["params"])
  assert sorted(set(skip) - set(none)) == [f"{b}/alpha" for b in BLOCKS]
  for block in BLOCKS:
    assert skip[f"{block}/alpha"].shape == () and skip[f"{block}/alpha"] == 0
  for path in none:  # the same initial values elsewhere
    np.testing.assert_array_equal(skip[path], none[path], err_msg=path)


def _block_calls(model: nn.Module, variables, x: jax.Array) -> tuple[dict, dict]:
  """{block path: (input, output)} of every BasicBlock call in a train-mode model.apply,
  and the state it recorded."""
  calls = {}
  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, BasicBlock) and context.method_name == "__call__":
      calls["/".join(context.module.path)] = (args[0], out)
    return out
  with nn.intercept_methods(record):
    _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"])
  return calls, state


def _shortcut(x: jax.Array, features: int, option: str, projection, use_bias: bool) -> jax.Array:
  """The shortcut alone, written out again: identity, option A, or the 1x1 projection."""
  if x.shape[-1] == features:
    return x
  if option == "A":
    x = x[:, ::2, ::2, :]
    extra = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  conv = ConvNorm(features, "none", nn.initializers.zeros, strides=2, kernel_size=1,
                  use_bias=use_bias)
  return conv.apply({"params": projection}, x, False)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("norm", ["fixup", "skipinit"])
def test_fixup_and_skipinit_blocks_start_as_their_shortcut(norm, shortcut):
  """At initialisation every residual branch outputs exactly zero, so each block
  outputs relu(shortcut(input)) and the network is its shortcut path."""
  model = CifarResNet(depth=14, norm=norm, shortcut=shortcut, initializer="he_normal")
  x = _images(2)
  variables = model.init(jax.random.key(0), x)
  calls, state = _block_calls(model, variables, x)
  assert len(calls) == 6
  params = variables["params"]
  for path, (block_in, block_out) in calls.items():
    features = block_out.shape[-1]
    expected = _shortcut(block_in, features, shortcut, params[path].get("projection"),
                         use_bias=norm == "skipinit")
    np.testing.assert_array_equal(state["intermediates"][path]["branch_out"][0], 0, path)
    np.testing.assert_array_equal(block_out, jax.nn.relu(expected), path)
  if shortcut == "A":  # the blocks pass the stem's output through unchanged, subsampled
    last = calls["stage3_block01"][1]
    stem = jax.nn.relu(state["intermediates"]["stem"]["conv_out"][0])
    assert float(jnp.max(jnp.abs(last))) > 0
    np.testing.assert_array_equal(last[..., 24:40], stem[:, ::4, ::4, :])
  logits = state["intermediates"]["logits"][0]
  if norm == "fixup":
    np.testing.assert_array_equal(logits, 0)
  else:
    assert float(jnp.max(jnp.abs(logits))) > 0


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_a_fixup_shortcut_that_is_no_identity_takes_the_input_plus_bias1a(shortcut):
  """As in the authors' code: downsample(x + bias1a); identity shortcuts take x itself."""
  model = CifarResNet(depth=14, norm="fixup", shortcut=shortcut)
  x = _images(2)
  variables = model.init(jax.random.key(0), x)
  params = flax.traverse_util.unflatten_dict(
      {k: v + 0.5 if k.endswith("/bias1a") else v for k, v in _flat(variables["params"]).items()},
      sep="/")
  calls, state = _block_calls(model, {"params": params}, x)
  for path, (block_in, block_out) in calls.items():
    features = block_out.shape[-1]
    shortcut_in = block_in if features == block_in.shape[-1] else block_in + 0.5
    expected = _shortcut(shortcut_in, features, shortcut, params[path].get("projection"),
                         use_bias=False)
    np.testing.assert_array_equal(state["intermediates"][path]["branch_out"][0], 0, path)
    np.testing.assert_allclose(block_out, jax.nn.relu(expected), atol=1e-6, err_msg=path)



# ResNet-8, shortcut A, glorot_uniform, init key 0, inputs _images(2): logits[0, :3] in eval
# mode and logits[1, :3] in train mode, as the model computed them before the new norms.
PINNED = {
    "batch": ([-0.0413000584, -0.609732985, -0.0393801406],
              [-0.485579371, -1.67691064, -0.895099759]),
    "none": ([-0.041300565, -0.609739184, -0.0393782407],
             [-0.0553484261, -0.5471071, -0.0717792735]),
}


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_batch_and_none_models_are_unchanged(norm):
  model = CifarResNet(depth=8, norm=norm)
  x = _images(2)
  variables = model.init(jax.random.key(0), x)
  params = _flat(variables["params"])
  convs = [*CONV_NORMS]
  expected = {f"{c}/conv/kernel" for c in convs} | {"classifier/kernel", "classifier/bias"}
  if norm == "batch":
    expected |= {f"{c}/norm/{s}" for c in convs for s in ("scale", "bias")}
    assert sorted(_flat(variables["batch_stats"])) == sorted(
        f"{c}/norm/{s}" for c in convs for s in ("mean", "var"))
  else:
    expected |= {f"{c}/conv/bias" for c in convs}
    assert "batch_stats" not in variables
  assert set(params) == expected
  eval_logits = model.apply(variables, x)
  train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  pinned_eval, pinned_train = PINNED[norm]
  np.testing.assert_allclose(eval_logits[0, :3], pinned_eval, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(train_logits[1, :3], pinned_train, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_a_plain_network_is_the_resnet_without_its_skip_connections(norm):
  """shortcut="none": every block outputs relu(branch(input)), with the same
  parameters as option A, so a sweep over config.sweep.arms.shortcut compares
  a plain CNN with its ResNet of the same depth."""
  x = _images(2)
  plain = CifarResNet(depth=14, norm=norm, shortcut="none")
  residual = CifarResNet(depth=14, norm=norm, shortcut="A")
  variables = plain.init(jax.random.key(0), x)
  reference = residual.init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(np.array_equal, variables, reference))
  calls, state = _block_calls(plain, variables, x)
  assert len(calls) == 6
  for path, (_, block_out) in calls.items():
    branch = state["intermediates"][path]["branch_out"][0]
    np.testing.assert_array_equal(block_out, jax.nn.relu(branch), path)
  plain_logits = plain.apply(variables, x)
  assert not np.allclose(plain_logits, residual.apply(variables, x))


def test_a_plain_network_refuses_norms_that_need_the_shortcut():
  for norm in ("fixup", "skipinit"):
    with pytest.raises(errors.ConfigError, match="needs the shortcut") as info:
      resnet.validate({"name": "resnet", "depth": 8, "norm": norm, "shortcut": "none"})
    assert "\n" not in str(info.value)
  with pytest.raises(errors.ConfigError, match="Unknown shortcut option 'C'"):
    resnet.validate({"name": "resnet", "depth": 8, "shortcut": "C"})
  config = config_lib.base_config()
  config.sweep.arms.shortcut = ("A", "none")
  config_lib.validate(config)
