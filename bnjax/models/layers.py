"""Normalisation layers and initialisers selected by name.

Models take these as string arguments so that a config (and a sweep arm) can
switch them without new model classes.

`NORMS` are the values of config.model.norm, what the ResNet does in place of
batch norm (bnjax/models/resnet.py wires them in):

* "batch": batch norm after every convolution (He et al. 2016), the default.
* "none": no normalisation; the convolutions carry a bias instead.
* "layer": layer norm after every convolution, over (H, W, C) of each example
  with a scale and shift per channel: group norm with one group, as Wu & He
  (2018, arXiv 1803.08494, figure 2) define it for conv nets.
* "group": group norm after every convolution (Wu & He 2018): each example
  over space and a group of adjacent channels, with a scale and shift per
  channel. Wu & He use 32 groups; their narrowest ResNet-50 layers (64
  channels) then hold 2 channels a group, and they find one channel a group
  (instance norm) clearly worse. Their experiments have no layer narrower
  than 64 channels (ImageNet, COCO, Kinetics; no CIFAR network), so here a
  layer gets 32 groups where it has 64 channels or more and C/2 groups of 2
  channels below that (`num_groups`): at the CIFAR ResNet's widths 16, 32
  and 64 that is 8, 16 and 32 groups, 2 channels each, and no group is a
  single channel.
* "fixup": Fixup (Zhang, Dauphin & Ma 2019, arXiv 1901.09321): no
  normalisation, an initialisation that makes every residual branch start at
  zero, and learned scalar biases and multipliers (`fixup_branch_init`).
* "skipinit": SkipInit (De & Smith 2020, arXiv 2002.10444): no normalisation
  (biased convolutions as in "none") and a learned scalar, initialised to 0,
  multiplying each residual branch.
* "batch_first", "batch_last", "batch_except_last", "batch_head": does BN
  need to be everywhere? Batch norm in only part of the network, none
  (biased convolutions) elsewhere: in the stem and the blocks of the first
  stage (the first 2n+1 convolutions of a ResNet-(6n+2)); in the blocks of
  the last stage only; everywhere except the blocks of the last stage; or
  as one batch norm of the pooled features just before the classifier.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "none", "layer", "group", "fixup", "skipinit",
         "batch_first", "batch_last", "batch_except_last", "batch_head")
# What `normalize` applies after one convolution.
LAYER_NORMS = ("batch", "layer", "group", "none")
# Where the partial-BN arms put batch norm: stage 0 is the stem, 1..3 the
# stages of blocks; "batch_head" has its one BN after pooling instead.
_BN_STAGES = {"batch_first": (0, 1), "batch_last": (3,), "batch_except_last": (0, 1, 2),
              "batch_head": ()}
# Wu & He (2018): 32 groups; and at least 2 channels a group (`num_groups`).
GROUPS = 32
MIN_CHANNELS_PER_GROUP = 2

INITIALIZERS: dict[str, Callable[..., jax.Array]] = {
    # Glorot & Bengio (2010): U(±sqrt(6 / (fan_in + fan_out))), variance
    # 1 / fan_avg. bnjax's default: with it a no-BN ResNet-110 at
    # initialisation is in the regime of Bjorck et al.'s figures
    # (docs/reproduction.md); the paper's text names no initialiser.
    "glorot_uniform": nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
    "lecun_normal": nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
    # He et al. (2015): N(0, 2 / fan_in), the CIFAR ResNet paper's choice. A
    # no-BN ResNet-110 starts at a loss of ~1e8 with it and diverges at lr 1e-4.
    "he_normal": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
    "he_uniform": nn.initializers.variance_scaling(2.0, "fan_in", "uniform"),
}


def make_initializer(name: str) -> Callable[..., jax.Array]:
  """Returns the kernel initialiser called `name`."""
  if name not in INITIALIZERS:
    raise ValueError(f"Unknown initialiser {name!r}; use one of {sorted(INITIALIZERS)}.")
  return INITIALIZERS[name]


def fixup_branch_init(num_blocks: int, layers_per_branch: int = 2) -> Callable[..., jax.Array]:
  """He-normal scaled by L^(-1/(2m-2)): Fixup's first m-1 layers of each residual branch.

  Zhang, Dauphin & Ma (2019, section 3, rule 2) scale the standard
  initialisation of the weight layers inside the L residual branches, m
  layers each, by L^(-1/(2m-2)) (L^(-1/2) for the basic block's m = 2), and
  set the branch's last layer to zero (rule 1). He-normal is N(0, 2/fan_in)
  as bnjax's "he_normal"; the authors' code draws from N(0, 2/fan_out),
  which differs only where a block doubles its channels.
  """
  if num_blocks < 1 or layers_per_branch < 2:
    raise ValueError(f"Fixup needs at least one residual block of two or more layers, got"
                     f" {num_blocks} blocks of {layers_per_branch}.")
  scale = num_blocks ** (-1.0 / (2 * layers_per_branch - 2))
  return nn.initializers.variance_scaling(2.0 * scale**2, "fan_in", "normal")


def num_groups(channels: int) -> int:
  """GroupNorm's group count for a layer of `channels`: the most groups, up to `GROUPS`,
  that divide the channels evenly with at least `MIN_CHANNELS_PER_GROUP` in each.

  32 from 64 channels up (Wu & He's default), C/2 below (8 and 16 at widths
  16 and 32), 1 (layer norm over that layer) for a single channel.
  """
  most = max(1, min(GROUPS, channels // MIN_CHANNELS_PER_GROUP))
  return next(g for g in range(most, 0, -1) if channels % g == 0)


def check_norm(norm: str) -> None:
  """Raises ValueError unless `norm` is one of `NORMS`."""
  if norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}; use one of {list(NORMS)}.")


def stage_norm(norm: str, stage: int) -> str:
  """What the network-wide `norm` puts in the stem (stage 0) or the blocks of stage 1, 2, 3.

  The partial-BN arms become "batch" or "none" stage by stage; every other
  norm is the same everywhere.
  """
  check_norm(norm)
  if norm in _BN_STAGES:
    return "batch" if stage in _BN_STAGES[norm] else "none"
  return norm


def conv_norm(norm: str) -> str:
  """The normalisation (one of `LAYER_NORMS`) after each convolution under a stage's `norm`.

  Fixup and SkipInit replace normalisation, so their convolutions get none.
  """
  return "none" if norm in ("fixup", "skipinit") else norm


def has_learned_shift(norm: str) -> bool:
  """True when the normalisation (`LAYER_NORMS`) carries its own bias, so convs need none."""
  return norm in ("batch", "layer", "group")


def normalize(norm: str, x: jax.Array, train: bool, dtype: Any, name: str) -> jax.Array:
  """Applies the normalisation called `norm` (`LAYER_NORMS`); call inside a compact method.

  "batch" is batch norm over batch and space with PyTorch's defaults
  (momentum 0.9, eps 1e-5), its statistics computed and kept in float32
  whatever the compute dtype; "layer" and "group" normalise each example on
  its own (over (H, W, C), or over space and the channels of a group; see the
  module docstring) with the same eps and a learned scale and shift per
  channel; "none" passes `x` through.
  """
  if norm == "batch":
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        dtype=dtype, param_dtype=jnp.float32, name=name)(x)
  if norm == "layer":
    return nn.LayerNorm(
        epsilon=1e-5, reduction_axes=tuple(range(1, x.ndim)), feature_axes=-1,
        dtype=dtype, param_dtype=jnp.float32, name=name)(x)
  if norm == "group":
    return nn.GroupNorm(
        num_groups=num_groups(x.shape[-1]), epsilon=1e-5,
        dtype=dtype, param_dtype=jnp.float32, name=name)(x)
  if norm == "none":
    return x
  raise ValueError(f"Unknown normalisation layer {norm!r}; use one of {list(LAYER_NORMS)}.")
