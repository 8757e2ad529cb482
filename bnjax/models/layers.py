"""Normalisation layers and initialisers selected by name.

Models take these as string arguments so that a config (and a sweep arm) can
switch them without new model classes.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "none")

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


def has_learned_shift(norm: str) -> bool:
  """True when the normalisation carries its own bias, so convs need none."""
  return norm != "none"


def normalize(norm: str, x: jax.Array, train: bool, dtype: Any, name: str) -> jax.Array:
  """Applies the normalisation called `norm`; call inside a compact method.

  "batch" is batch norm over batch and space with PyTorch's defaults
  (momentum 0.9, eps 1e-5), its statistics computed and kept in float32
  whatever the compute dtype; "none" passes `x` through.
  """
  if norm == "batch":
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        dtype=dtype, param_dtype=jnp.float32, name=name)(x)
  if norm == "none":
    return x
  raise ValueError(f"Unknown norm {norm!r}; use one of {list(NORMS)}.")
