"""A deep fully-connected ReLU network, with or without BN: the setting of Yang et al. (2019).

Images are flattened (32 x 32 x 3 = 3072 inputs) and go through `depth`
hidden layers of `width` units, each Dense -> [BatchNorm] -> ReLU (BN
before the nonlinearity, as in "A Mean Field Theory of Batch
Normalization", ICLR 2019), then a Dense classifier. Hidden weights are
He-normal (variance 2 / fan_in), which keeps the signal's scale flat in
depth without BN; with BN the Dense layers have no bias (BN's shift
replaces it). Not registered by name: use `config.model.name =
"bnjax.models.mlp"` (`registry.get_family` imports it), e.g.
`--config.model.name=bnjax.models.mlp` on any config.

Each hidden layer sows its Dense output as "conv_out" and its BN output
as "norm_out" (kinds `bnjax/models/family.py` lists, so that analyses
reading them work unchanged); with `perturbed=True` it also adds a
zero "perturbations"/"preact" to the Dense output, whose gradient is the
loss gradient with respect to that pre-activation (`nn.Module.perturb`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax.models import family

NORMS = ("batch", "none")
NORM_TITLES = {"batch": "BN", "none": "no BN"}

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def layer_name(index: int) -> str:
  """The name of hidden layer `index` (0 at the input): "layer000", ..."""
  return f"layer{index:03d}"


class HiddenLayer(nn.Module):
  """Dense (He-normal) -> BN (norm "batch") -> ReLU on features (B, D_in) -> (B, width)."""
  width: int
  norm: str
  perturbed: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxD: jax.Array, train: bool) -> jax.Array:
    h_BxW = nn.Dense(self.width, use_bias=self.norm == "none", kernel_init=he_normal,
                     dtype=self.dtype, name="dense")(x_BxD)
    if self.perturbed:
      h_BxW = self.perturb("preact", h_BxW)
    self.sow("intermediates", "conv_out", h_BxW)
    if self.norm == "batch":
      h_BxW = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=self.dtype, name="norm")(h_BxW)
      self.sow("intermediates", "norm_out", h_BxW)
    return nn.relu(h_BxW)


class MLP(nn.Module):
  """`depth` hidden layers of `width` units, then a Dense classifier; images (B, H, W, C)."""
  width: int
  depth: int
  norm: str
  num_classes: int
  dtype: Any = jnp.float32
  perturbed: bool = False

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    x = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1).astype(self.dtype)
    for i in range(self.depth):
      x = HiddenLayer(self.width, self.norm, self.perturbed, self.dtype, name=layer_name(i))(
          x, train)
    logits_BxK = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    self.sow("intermediates", "logits", logits_BxK)
    return logits_BxK.astype(jnp.float32)


def defaults() -> dict[str, Any]:
  """Eight hidden layers of 256 units with BN: a sweep a CPU can train, deep enough for BN."""
  return dict(width=256, depth=8, norm="batch")


def describe(model_config: family.ModelConfig) -> str:
  """E.g. "MLP 8x256, BN": hidden layers x units."""
  norm = model_config["norm"]
  return f"MLP {model_config['depth']}x{model_config['width']}, {NORM_TITLES.get(norm, norm)}"


def validate(model_config: family.ModelConfig) -> None:
  """Checks width, depth and norm."""
  for field in ("width", "depth"):
    value = model_config[field]
    family.check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"config.model.{field} must be a positive integer, got {value!r}.")
  family.check(model_config["norm"] in NORMS,
               f"Unknown config.model.norm {model_config['norm']!r}; use one of {list(NORMS)}.")


def build(model_config: family.ModelConfig, num_classes: int, dtype: Any) -> MLP:
  """The MLP that `model_config` describes."""
  return MLP(model_config["width"], model_config["depth"], model_config["norm"], num_classes,
             dtype)
