"""The CIFAR ResNet of He et al. (2016, section 4.2), with and without batch norm.

Depth 6n+2: a 3x3 conv stem with 16 channels, three stages of n basic blocks
at 16/32/64 channels (the first block of stages 2 and 3 halves the spatial
size), global average pooling and one dense classifier.

Everything the analyses look at is recorded with `sow` into the
`intermediates` collection, which Flax only fills when the caller asks for it
(`mutable=["intermediates"]`), so training pays nothing for it:

* `conv_out`  every convolution's output (before normalisation),
* `norm_out`  every normalisation layer's output (BN arms only),
* `branch_out` each residual branch's output before the skip is added,
* `block_out` every block's output (after the skip and the ReLU),
* `logits`    the classifier output.

Module names carry their position (`stem`, `stage1_block00`, ...), so
sorting the flattened intermediates by path gives them in depth order.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax.models import layers

STAGE_WIDTHS = (16, 32, 64)


def blocks_per_stage(depth: int) -> int:
  """Returns n for a CIFAR ResNet of the given depth 6n+2."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(
        f"ResNet depth {depth} is not of the form 6n+2 with n >= 1; use one"
        " of 8, 14, 20, 32, 44, 56, 110, ...")
  return (depth - 2) // 6


class ConvNorm(nn.Module):
  """A 3x3 (or 1x1) convolution followed by the chosen normalisation."""

  features: int
  norm: str
  kernel_init: Callable[..., jax.Array]
  strides: int = 1
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    k = self.kernel_size
    y = nn.Conv(
        self.features, (k, k), strides=self.strides, padding=((k // 2,) * 2,) * 2,
        use_bias=not layers.has_learned_shift(self.norm),
        kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x_BxHxWxC)
    self.sow("intermediates", "conv_out", y)
    y = layers.normalize(self.norm, y, train, self.dtype, name="norm")
    if layers.has_learned_shift(self.norm):
      self.sow("intermediates", "norm_out", y)
    return y


class BasicBlock(nn.Module):
  """Two 3x3 ConvNorms with a ReLU between them, plus the shortcut."""

  features: int
  strides: int
  norm: str
  shortcut: str
  kernel_init: Callable[..., jax.Array]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    conv = lambda strides, name: ConvNorm(
        self.features, self.norm, self.kernel_init, strides=strides,
        dtype=self.dtype, name=name)
    y = nn.relu(conv(self.strides, "conv_norm1")(x_BxHxWxC, train))
    y = conv(1, "conv_norm2")(y, train)
    self.sow("intermediates", "branch_out", y)
    out = nn.relu(y + self._shortcut(x_BxHxWxC, train))
    self.sow("intermediates", "block_out", out)
    return out

  def _shortcut(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    if self.strides == 1 and x_BxHxWxC.shape[-1] == self.features:
      return x_BxHxWxC
    if self.shortcut == "A":
      x = x_BxHxWxC[:, ::self.strides, ::self.strides, :]
      extra = self.features - x.shape[-1]
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return ConvNorm(
        self.features, self.norm, self.kernel_init, strides=self.strides,
        kernel_size=1, dtype=self.dtype, name="projection")(x_BxHxWxC, train)


class CifarResNet(nn.Module):
  """CIFAR ResNet-(6n+2); `norm`, `shortcut` and `initializer` are plain arguments.

  Attributes:
    depth: 6n+2 (20, 32, 44, 56, 110, ...).
    norm: "batch" or "none" (see `layers.NORMS`).
    shortcut: "A" (identity, stride-2 subsampling, zero-padded channels, the
      paper's choice) or "B" (1x1 projection followed by the normalisation).
    initializer: name of the weight initialiser (see `layers.INITIALIZERS`).
    num_classes: width of the classifier.
    dtype: compute dtype; parameters and BN statistics stay float32.
  """

  depth: int = 20
  norm: str = "batch"
  shortcut: str = "A"
  initializer: str = "he_normal"
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    """Maps images (B, 32, 32, 3) to logits (B, num_classes), float32."""
    n = blocks_per_stage(self.depth)
    if self.shortcut not in ("A", "B"):
      raise ValueError(f"Unknown shortcut option {self.shortcut!r}; use 'A' or 'B'.")
    kernel_init = layers.make_initializer(self.initializer)
    x = x_BxHxWxC.astype(self.dtype)
    x = nn.relu(ConvNorm(STAGE_WIDTHS[0], self.norm, kernel_init,
                         dtype=self.dtype, name="stem")(x, train))
    for stage, width in enumerate(STAGE_WIDTHS):
      for i in range(n):
        strides = 2 if stage > 0 and i == 0 else 1
        x = BasicBlock(width, strides, self.norm, self.shortcut, kernel_init,
                       dtype=self.dtype, name=f"stage{stage + 1}_block{i:02d}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=kernel_init,
                      dtype=self.dtype, name="classifier")(x)
    logits = logits.astype(jnp.float32)
    self.sow("intermediates", "logits", logits)
    return logits
