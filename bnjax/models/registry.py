"""Model families by name: build, initialise and order the layers of any registered model.

Adding a model family is one module with `validate` and `build` (see
`family.Family`): registered here for bnjax's own families, with
`register(name, module)` from a script, or named by its module path.
"""

import importlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax.models import family as family_lib, resnet

FAMILIES: dict[str, family_lib.Family] = {}
MODELS = FAMILIES  # the older name of the same registry

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def register(name: str, family: family_lib.Family) -> family_lib.Family:
  """Makes `family` the model called `name` in config.model.name; replaces any earlier one."""
  missing = [f for f in ("validate", "build") if not callable(getattr(family, f, None))]
  if missing:
    raise TypeError(f"Model family {name!r} lacks {missing}; a family provides validate and build.")
  FAMILIES[name] = family
  return family


def get_family(name: str) -> family_lib.Family:
  """The family registered as `name`; ValueError naming the registered ones otherwise.

  A dotted name that is not registered is imported as a module and
  registered (`--config.model.name=my_lab.mlp`), so that a family of one's
  own is one module, found from the command line like an experiment.
  """
  if name not in FAMILIES and isinstance(name, str) and "." in name:
    try:
      register(name, importlib.import_module(name))
    except ModuleNotFoundError as e:  # only a missing family is unknown; its own imports raise
      if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
        raise
  if name not in FAMILIES:
    raise ValueError(f"Unknown model {name!r}; use one of {sorted(FAMILIES)}.")
  return FAMILIES[name]


def make_model(model_config: Mapping[str, Any], num_classes: int = 10,
               dtype: str = "float32") -> nn.Module:
  """Returns the Flax module that `model_config` describes, built by its family.

  `model_config` holds `name` plus the family's fields (for "resnet":
  depth, norm, shortcut, initializer, scan_blocks). Validation is
  `config.validate`'s job; a bad field may fail here or when the model runs.
  """
  family = get_family(model_config.get("name"))
  if dtype not in DTYPES:
    raise ValueError(f"Unknown compute dtype {dtype!r}; use one of {sorted(DTYPES)}.")
  return family.build(model_config, num_classes, DTYPES[dtype])


def init_variables(model: nn.Module, key: jax.Array, inputs: jax.Array, **kwargs: Any) -> Any:
  """The model's initial variables: its own `init_variables` if it has one, else `init`.

  The ResNet's makes a scanned model start where its unrolled twin does
  (`resnet.CifarResNet.init_variables`).
  """
  own = getattr(model, "init_variables", None)
  return own(key, inputs, **kwargs) if own else model.init(key, inputs, **kwargs)


def ordered_leaves(model: nn.Module, tree: Any) -> list[tuple[str, Any]]:
  """[("stage1_block00/conv_norm1/conv/kernel", leaf)] of a params- or intermediates-shaped tree.

  In depth order, input side first: the model's own `ordered_leaves` if it
  has one (the ResNet's also splits scanned blocks), else the order in
  which its submodules ran (`family.call_order_leaves`). Gradients and
  other trees shaped like params work too. Leaves are what is not a dict;
  a sown (value,) tuple is one leaf.
  """
  own = getattr(model, "ordered_leaves", None)
  return own(tree) if own else family_lib.call_order_leaves(model, tree)


def unrolled(model: nn.Module, variables: Any) -> tuple[nn.Module, Any]:
  """The model with one module per layer, and `variables` (or a tree shaped like them) to match.

  The model's own `unrolled` if it has one (the ResNet's: its unscanned
  twin and `resnet.unscan(variables)`), else both unchanged. For code that
  names layers, such as a checkpoint's per-member view.
  """
  own = getattr(model, "unrolled", None)
  return own(variables) if own else (model, variables)


register("resnet", resnet)
