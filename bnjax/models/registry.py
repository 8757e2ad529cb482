"""Builds a model from the `model` section of a config."""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax.models import resnet
from bnjax.models.resnet import CifarResNet

MODELS = {"resnet": CifarResNet}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def make_model(model_config: Mapping[str, Any], num_classes: int = 10,
               dtype: str = "float32") -> nn.Module:
  """Returns the Flax module that `model_config` describes.

  `model_config` holds `name` plus the model's constructor arguments
  (for "resnet": depth, norm, shortcut, initializer).
  """
  fields = dict(model_config)
  name = fields.pop("name")
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; use one of {sorted(MODELS)}.")
  if dtype not in DTYPES:
    raise ValueError(f"Unknown compute dtype {dtype!r}; use one of {sorted(DTYPES)}.")
  return MODELS[name](num_classes=num_classes, dtype=DTYPES[dtype], **fields)


def init_variables(model: nn.Module, key: jax.Array, inputs: jax.Array, **kwargs: Any) -> Any:
  """`model.init(key, inputs, **kwargs)`, the same numbers whether blocks are scanned or not.

  `nn.scan` would draw the repeated blocks' parameters from split keys. A
  scanned ResNet is instead initialised as its unrolled twin and stacked
  (`resnet.stack_blocks`), so that `scan_blocks` changes how a member is
  compiled, never where it starts.
  """
  if getattr(model, "scan_blocks", False):
    return resnet.stack_blocks(model.clone(scan_blocks=False).init(key, inputs, **kwargs))
  return model.init(key, inputs, **kwargs)
