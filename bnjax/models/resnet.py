"""The CIFAR ResNet of He et al. (2016, section 4.2), with and without batch norm.

Depth 6n+2: a 3x3 conv stem with 16 channels, three stages of n basic blocks
at 16/32/64 channels (the first block of stages 2 and 3 halves the spatial
size), global average pooling and one dense classifier.

`norm` picks what stands in for batch norm (`layers.NORMS`, whose docstring
defines each): another normalisation layer after every convolution ("layer",
"group"), none ("none"), batch norm in part of the network ("batch_first",
"batch_last", "batch_except_last", "batch_head"), or a residual network that trains without
normalisation: Fixup ("fixup", `BasicBlock._fixup`) or SkipInit
("skipinit"). Fixup and SkipInit residual branches output exactly zero at
initialisation, so each block starts as its shortcut; Fixup also sets the
classifier to zero, so every logit starts at 0. Fixup is an initialisation,
so it ignores `initializer` (He-normal where the paper says "standard").
`shortcut="none"` drops the skip connections: He et al.'s plain network of
the same depth, whose every block is relu(branch(x)).

Everything the analyses look at is recorded with `sow` into the
`intermediates` collection, which Flax only fills when the caller asks for it
(`mutable=["intermediates"]`), so training pays nothing for it:

* `conv_out`  every convolution's output (before normalisation),
* `norm_out`  every normalisation layer's output (none without one: "none",
  "fixup", "skipinit"; "batch_head" records its one BN at `head_norm`),
* `branch_out` each residual branch's output before the skip is added,
* `block_out` every block's output (after the skip and the ReLU),
* `logits`    the classifier output.

Module names carry their position (`stem`, `stage1_block00`, ...), so
sorting paths by `depth_key` gives depth order; `CifarResNet.ordered_leaves`
is that order for any params- or intermediates-shaped tree.

This module is also the "resnet" model family (`family.Family`): `defaults`
declares config.model's ResNet fields, `validate` checks them, `build`
makes the `CifarResNet` and `describe` names it in figure titles.

With `scan_blocks=True` the n - 1 identical blocks that follow each stage's
first block run as one `nn.scan` (module `stageS_blocks`, every variable
stacked on a leading axis of n - 1): XLA compiles one block per stage
instead of n, which cuts the compile time of a ResNet-110 step 2.5-3.5
fold. On XLA:CPU a scanned step ran over 10x slower, so it is off by
default (docs/performance.md has the numbers). `unscan` turns such
variables, intermediates or gradients back into the per-block layout
above, so per-layer analyses see the same names whichever way the model
was run, and `stack_blocks` does the reverse.
"""

import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import errors
from bnjax.models import family, layers

STAGE_WIDTHS = (16, 32, 64)
_SCANNED = re.compile(r"(stage\d+)_blocks")
_BLOCK = re.compile(r"(stage\d+)_block(\d+)")
# Figure titles' names of the norms (`layers.NORMS`).
NORM_TITLES = {"batch": "BN", "none": "no BN", "layer": "LayerNorm", "group": "GroupNorm",
               "fixup": "Fixup", "skipinit": "SkipInit",
               "batch_first": "BN in the stem and stage 1", "batch_last": "BN in stage 3 only",
               "batch_except_last": "BN except in stage 3",
               "batch_head": "BN before the classifier"}
# "A" and "B" are He et al.'s options; "none" is their plain network, the
# same layers without the skip connection.
SHORTCUTS = ("A", "B", "none")
# Norms whose residual branches output zero at initialisation: without the
# shortcut every block's output, and so the network's, would start at zero.
RESIDUAL_ONLY_NORMS = ("fixup", "skipinit")


def blocks_per_stage(depth: int) -> int:
  """Returns n for a CIFAR ResNet of the given depth 6n+2."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(
        f"ResNet depth {depth} is not of the form 6n+2 with n >= 1; use one"
        " of 8, 14, 20, 32, 44, 56, 110, ...")
  return (depth - 2) // 6


def depth_key(path: str) -> tuple:
  """Sort key of a module path in depth order, the classifier last.

  stem < stage1_block00/conv_norm1 < .../conv_norm2 < .../projection <
  stage1_block01 < ... < stage1_block100 < ... < stage2_block00 ... <
  head_norm < classifier. Numbers in names compare as numbers, so that
  stages of 100 or more blocks (ResNet-608 and deeper) stay in order.
  """
  order = {"stem": 0, "conv_norm1": 1, "conv_norm2": 2, "projection": 3, "head_norm": 7,
           "classifier": 8, "": 9}
  return tuple((order.get(p, 5), _natural(p)) for p in path.split("/"))


def leaf_depth_key(path: str) -> tuple:
  """`depth_key` of a leaf path ("stem/conv/kernel", "stem/conv_out").

  A module's own leaves come after its submodules', the top level's (the
  logits) last.
  """
  module, _, leaf = path.rpartition("/")
  return (*depth_key(module), (7, _natural(leaf)))


def _natural(name: str) -> tuple:
  """"stage1_block100" -> ("stage", 1, "_block", 100, ""): digit runs compare as integers."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def defaults() -> dict[str, Any]:
  """config.model's ResNet fields: the paper's ResNet-110 with BN, option A, Glorot init.

  scan_blocks runs each stage's repeated blocks as one nn.scan: the same
  function and initial values, a ResNet-110 step compiled ~3x faster, but on
  XLA:CPU each step ran over 10x slower (docs/performance.md); analyses and
  `checkpoint.load` see one entry per block either way.
  """
  return dict(depth=110, norm="batch", shortcut="A", initializer="glorot_uniform",
              scan_blocks=False)


def describe(model_config: family.ModelConfig) -> str:
  """E.g. "ResNet-110, BN, glorot_uniform init" or "plain CNN-8, no BN, he_normal init"."""
  depth, norm, shortcut = model_config["depth"], model_config["norm"], model_config["shortcut"]
  network = {"none": f"plain CNN-{depth}", "B": f"ResNet-{depth} (shortcut B)"}.get(
      shortcut, f"ResNet-{depth}")
  parts = [network, NORM_TITLES.get(norm, str(norm))]
  if norm != "fixup":  # Fixup is its own initialisation
    parts.append(f"{model_config['initializer']} init")
  return ", ".join(parts)


def validate(model_config: family.ModelConfig) -> None:
  """Raises `errors.ConfigError`, one sentence naming the field, for the first bad ResNet field."""
  fields = {**defaults(), **family.fields(model_config)}
  norm, shortcut, initializer = fields["norm"], fields["shortcut"], fields["initializer"]
  family.check(norm in layers.NORMS,
               f"Unknown norm {norm!r} (config.model.norm); use one of {list(layers.NORMS)}.")
  family.check(shortcut in SHORTCUTS,
               f"Unknown shortcut option {shortcut!r} (config.model.shortcut); "
               f"use one of {list(SHORTCUTS)}.")
  family.check(shortcut != "none" or norm not in RESIDUAL_ONLY_NORMS,
               f"config.model.norm={norm!r} needs the shortcut (its blocks start as the "
               f"shortcut path); use config.model.shortcut='A' or 'B' with it.")
  family.check(initializer in layers.INITIALIZERS,
               f"Unknown initializer {initializer!r} (config.model.initializer); "
               f"use one of {sorted(layers.INITIALIZERS)}.")
  family.check(isinstance(fields["scan_blocks"], bool),
               f"config.model.scan_blocks must be true or false, got {fields['scan_blocks']!r}.")
  depth = fields["depth"]
  family.check(isinstance(depth, numbers.Integral) and not isinstance(depth, bool),
               f"config.model.depth must be a whole number 6n+2 (8, 14, 20, ...), got {depth!r}.")
  try:
    blocks_per_stage(depth)
  except ValueError as e:
    raise errors.ConfigError(f"config.model.depth: {e}") from None


def build(model_config: family.ModelConfig, num_classes: int, dtype: Any) -> "CifarResNet":
  """The `CifarResNet` that config.model describes."""
  return CifarResNet(num_classes=num_classes, dtype=dtype,
                     **{**defaults(), **family.fields(model_config)})


class ConvNorm(nn.Module):
  """A 3x3 (or 1x1) convolution followed by the chosen normalisation.

  `norm` is one of `layers.LAYER_NORMS`. The convolution carries a bias
  unless the normalisation has its own shift, or `use_bias` says otherwise
  (Fixup's convolutions have none).
  """

  features: int
  norm: str
  kernel_init: Callable[..., jax.Array]
  strides: int = 1
  kernel_size: int = 3
  dtype: Any = jnp.float32
  use_bias: bool | None = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    k = self.kernel_size
    use_bias = not layers.has_learned_shift(self.norm) if self.use_bias is None else self.use_bias
    y = nn.Conv(
        self.features, (k, k), strides=self.strides, padding=((k // 2,) * 2,) * 2,
        use_bias=use_bias, kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x_BxHxWxC)
    self.sow("intermediates", "conv_out", y)
    y = layers.normalize(self.norm, y, train, self.dtype, name="norm")
    if self.norm != "none":
      self.sow("intermediates", "norm_out", y)
    return y


def scalar(module: nn.Module, name: str, value: float) -> jax.Array:
  """A learned float32 scalar parameter of `module`, initialised to `value`: Fixup, SkipInit."""
  return module.param(name, nn.initializers.constant(value), (), jnp.float32)


class HeadNorm(nn.Module):
  """Batch norm of the pooled features (B, C) before the classifier: the "batch_head" arm."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxC: jax.Array, train: bool) -> jax.Array:
    y = layers.normalize("batch", x_BxC, train, self.dtype, name="norm")
    self.sow("intermediates", "norm_out", y)
    return y


class BasicBlock(nn.Module):
  """Two 3x3 ConvNorms with a ReLU between them, plus the shortcut.

  `norm` is a stage's (`layers.stage_norm`): a normalisation layer after each
  convolution, "none", "fixup" (`_fixup`), or "skipinit", which multiplies
  the branch by a learned scalar `alpha`, initialised to 0, before the skip
  is added (De & Smith 2020, section 4). `num_blocks` is L, the network's
  number of residual blocks, which sets Fixup's initial scale.
  """

  features: int
  strides: int
  norm: str
  shortcut: str
  kernel_init: Callable[..., jax.Array]
  dtype: Any = jnp.float32
  num_blocks: int = 1

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    if self.norm == "fixup":
      return self._fixup(x_BxHxWxC, train)
    conv = lambda strides, name: ConvNorm(
        self.features, layers.conv_norm(self.norm), self.kernel_init, strides=strides,
        dtype=self.dtype, name=name)
    y = nn.relu(conv(self.strides, "conv_norm1")(x_BxHxWxC, train))
    y = conv(1, "conv_norm2")(y, train)
    if self.norm == "skipinit":
      y = y * scalar(self, "alpha", 0.0).astype(y.dtype)
    return self._join(y, self._shortcut(x_BxHxWxC, train))

  def _fixup(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    """Fixup's basic block (Zhang, Dauphin & Ma 2019, arXiv 1901.09321, section 3).

    relu(scale * conv2(relu(conv1(x + bias1a) + bias1b) + bias2a) + bias2b
    + shortcut), the shortcut taking x + bias1a where it is not the identity,
    as the authors' CIFAR code writes it: rule 3's scalar biases (init 0)
    before each convolution and activation and one multiplier (init 1) per
    branch; convolutions without biases; conv1 He-normal times L^(-1/2)
    (rule 2, m = 2), conv2 zero (rule 1); a projection (shortcut "B"),
    outside the branch, plain He-normal (`self.kernel_init`).
    """
    dtype = x_BxHxWxC.dtype
    bias = lambda name: scalar(self, name, 0.0).astype(dtype)
    conv = lambda strides, init, name: ConvNorm(
        self.features, "none", init, strides=strides, dtype=self.dtype, use_bias=False,
        name=name)
    x_in = x_BxHxWxC + bias("bias1a")
    y = conv(self.strides, layers.fixup_branch_init(self.num_blocks), "conv_norm1")(x_in, train)
    y = nn.relu(y + bias("bias1b"))
    y = conv(1, nn.initializers.zeros, "conv_norm2")(y + bias("bias2a"), train)
    y = y * scalar(self, "scale", 1.0).astype(dtype) + bias("bias2b")
    identity = self._is_identity(x_BxHxWxC)
    return self._join(y, self._shortcut(x_BxHxWxC if identity else x_in, train))

  def _join(self, branch: jax.Array, shortcut: jax.Array | None) -> jax.Array:
    """relu(branch + shortcut), or relu(branch) in a plain network; records both."""
    self.sow("intermediates", "branch_out", branch)
    out = nn.relu(branch if shortcut is None else branch + shortcut)
    self.sow("intermediates", "block_out", out)
    return out

  def _is_identity(self, x_BxHxWxC: jax.Array) -> bool:
    return self.strides == 1 and x_BxHxWxC.shape[-1] == self.features

  def _shortcut(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array | None:
    if self.shortcut == "none":
      return None
    if self._is_identity(x_BxHxWxC):
      return x_BxHxWxC
    if self.shortcut == "A":
      x = x_BxHxWxC[:, ::self.strides, ::self.strides, :]
      extra = self.features - x.shape[-1]
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    fixup = self.norm == "fixup"
    return ConvNorm(
        self.features, layers.conv_norm(self.norm), self.kernel_init, strides=self.strides,
        kernel_size=1, dtype=self.dtype, use_bias=False if fixup else None,
        name="projection")(x_BxHxWxC, train)


class _BlockStep(nn.Module):
  """One stride-1 BasicBlock as a scan body: (x, None) -> (block(x), None)."""

  features: int
  norm: str
  shortcut: str
  kernel_init: Callable[..., jax.Array]
  train: bool
  dtype: Any = jnp.float32
  num_blocks: int = 1

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, _: None) -> tuple[jax.Array, None]:
    block = BasicBlock(self.features, 1, self.norm, self.shortcut, self.kernel_init,
                       dtype=self.dtype, num_blocks=self.num_blocks, name="block")
    return block(x_BxHxWxC, self.train), None


def repeated_blocks(length: int) -> type[nn.Module]:
  """`_BlockStep` scanned `length` times: identical stride-1 blocks, compiled once.

  Every variable (and every sown intermediate) gets a leading axis of size
  `length`; index i is block i + 1 of the stage. `unscan` splits them.
  """
  return nn.scan(_BlockStep, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                 split_rngs={"params": True}, length=length)


def unscan(tree: Any) -> Any:
  """The per-block layout of a scanned ResNet's variables, or of any pytree holding them.

  Replaces every `stageS_blocks` subtree, whose leaves have a leading axis of
  n - 1, with `stageS_block01` ... `stageS_block{n-1}`, each holding its
  block's slice: what `CifarResNet(scan_blocks=False)` uses. Works at any
  level and inside any pytree (variables, params, gradients, optimizer
  states, intermediates); trees of unrolled models come back unchanged. For
  states stacked over members, map it over the member axis (`jax.vmap`).
  """
  return jax.tree.map(_unscan_node, tree, is_leaf=_holds_scanned)


def _holds_scanned(node: Any) -> bool:
  return isinstance(node, Mapping) and any(
      isinstance(k, str) and _SCANNED.fullmatch(k) for k in node)


def _unscan_node(node: Any) -> Any:
  if not _holds_scanned(node):
    return node
  out = {}
  for key, value in node.items():
    match = _SCANNED.fullmatch(key) if isinstance(key, str) else None
    if match is None:
      out[key] = value
      continue
    stacked = value["block"]
    for i in range(jax.tree.leaves(stacked)[0].shape[0]):
      out[f"{match.group(1)}_block{i + 1:02d}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return out


def stack_blocks(tree: Any) -> Any:
  """The inverse of `unscan`: blocks 1.. of each stage stacked under `stageS_blocks`.

  Turns the per-block layout of `CifarResNet(scan_blocks=False)` (variables,
  or any pytree holding trees shaped like them) into the layout its scanned
  twin uses.
  """
  return jax.tree.map(_stack_node, tree, is_leaf=_holds_repeated)


def _repeated_block(key: Any) -> re.Match | None:
  match = _BLOCK.fullmatch(key) if isinstance(key, str) else None
  return match if match and int(match.group(2)) > 0 else None


def _holds_repeated(node: Any) -> bool:
  return isinstance(node, Mapping) and any(_repeated_block(k) for k in node)


def _stack_node(node: Any) -> Any:
  if not _holds_repeated(node):
    return node
  out, repeated = {}, {}
  for key, value in node.items():
    match = _repeated_block(key)
    if match is None:
      out[key] = value
    else:
      repeated.setdefault(match.group(1), []).append((int(match.group(2)), value))
  for stage, blocks in repeated.items():
    layers = [value for _, value in sorted(blocks, key=lambda item: item[0])]
    out[f"{stage}_blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return out


class CifarResNet(nn.Module):
  """CIFAR ResNet-(6n+2); `norm`, `shortcut` and `initializer` are plain arguments.

  Attributes:
    depth: 6n+2 (20, 32, 44, 56, 110, ...).
    norm: "batch", "none" or another of `layers.NORMS` (see its module docstring).
    shortcut: "A" (identity, stride-2 subsampling, zero-padded channels, the
      paper's choice), "B" (1x1 projection followed by the normalisation) or
      "none" (He et al.'s plain network: each block is relu(branch(x))).
    initializer: name of the weight initialiser (see `layers.INITIALIZERS`); "fixup"
      ignores it and initialises as Fixup prescribes.
    num_classes: width of the classifier.
    dtype: compute dtype; parameters and BN statistics stay float32.
    scan_blocks: run each stage's blocks after the first as one `nn.scan`
      (same function, faster compilation, stacked variables; see `unscan`;
      slower steps on CPU).
  """

  depth: int = 20
  norm: str = "batch"
  shortcut: str = "A"
  initializer: str = "glorot_uniform"
  num_classes: int = 10
  dtype: Any = jnp.float32
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    """Maps images (B, 32, 32, 3) to logits (B, num_classes), float32."""
    n = blocks_per_stage(self.depth)
    layers.check_norm(self.norm)
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f"Unknown shortcut option {self.shortcut!r}; use one of {list(SHORTCUTS)}.")
    if self.shortcut == "none" and self.norm in RESIDUAL_ONLY_NORMS:
      raise ValueError(f"norm {self.norm!r} needs a shortcut; use shortcut 'A' or 'B'.")
    fixup = self.norm == "fixup"
    kernel_init = layers.make_initializer("he_normal" if fixup else self.initializer)
    x = x_BxHxWxC.astype(self.dtype)
    stem_norm = layers.conv_norm(layers.stage_norm(self.norm, 0))
    x = ConvNorm(STAGE_WIDTHS[0], stem_norm, kernel_init, dtype=self.dtype,
                 use_bias=False if fixup else None, name="stem")(x, train)
    if fixup:  # the authors' code: relu(conv(x) + bias1); their stem conv has no bias before it
      x = x + scalar(self, "stem_bias", 0.0).astype(x.dtype)
    x = nn.relu(x)
    for stage, width in enumerate(STAGE_WIDTHS):
      norm = layers.stage_norm(self.norm, stage + 1)
      block = lambda strides, i: BasicBlock(
          width, strides, norm, self.shortcut, kernel_init, dtype=self.dtype,
          num_blocks=3 * n, name=f"stage{stage + 1}_block{i:02d}")
      x = block(2 if stage > 0 else 1, 0)(x, train)
      if self.scan_blocks and n > 1:
        x, _ = repeated_blocks(n - 1)(
            width, norm, self.shortcut, kernel_init, train, dtype=self.dtype,
            num_blocks=3 * n, name=f"stage{stage + 1}_blocks")(x, None)
      else:
        for i in range(1, n):
          x = block(1, i)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if self.norm == "batch_head":
      x = HeadNorm(dtype=self.dtype, name="head_norm")(x, train)
    if fixup:  # rule 3's bias before the classifier, which rule 1 sets to zero
      x = x + scalar(self, "head_bias", 0.0).astype(x.dtype)
    zeros = nn.initializers.zeros
    logits = nn.Dense(self.num_classes, kernel_init=zeros if fixup else kernel_init,
                      dtype=self.dtype, name="classifier")(x)
    logits = logits.astype(jnp.float32)
    self.sow("intermediates", "logits", logits)
    return logits

  @nn.nowrap
  def init_variables(self, key: jax.Array, inputs: jax.Array, **kwargs: Any) -> Any:
    """`init(key, inputs, **kwargs)`, the same numbers whether blocks are scanned or not.

    `nn.scan` would draw the repeated blocks' parameters from split keys. A
    scanned ResNet is instead initialised as its unrolled twin and stacked
    (`stack_blocks`), so that `scan_blocks` changes how a member is
    compiled, never where it starts.
    """
    if not self.scan_blocks:
      return self.init(key, inputs, **kwargs)
    return stack_blocks(self.clone(scan_blocks=False).init(key, inputs, **kwargs))

  @nn.nowrap
  def unrolled(self, variables: Any) -> tuple["CifarResNet", Any]:
    """This model with every block its own module, and `variables` split to match (`unscan`)."""
    return self.clone(scan_blocks=False), unscan(variables)

  @nn.nowrap
  def ordered_leaves(self, tree: Any) -> list[tuple[str, Any]]:
    """[(path, leaf)] of a params- or intermediates-shaped tree in depth order.

    Scanned blocks are split (`unscan`), one entry per block, and paths
    sorted by `leaf_depth_key`.
    """
    flat = flax.traverse_util.flatten_dict(unscan(tree), sep="/")
    return sorted(flat.items(), key=lambda item: leaf_depth_key(item[0]))
