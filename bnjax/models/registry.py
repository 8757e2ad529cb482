"""Model families by name: their configs, and the models they build, initialise and order.

Adding a model family is one module with `defaults`, `validate` and
`build` (see `family.Family`): registered here for bnjax's own families,
with `register(name, module)` from a script, or named by its module path.
"""

import importlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import errors
from bnjax.models import family as family_lib, resnet

FAMILIES: dict[str, family_lib.Family] = {}
MODELS = FAMILIES  # the older name of the same registry

# What every family provides (family.Family); `describe` is optional.
REQUIRED = ("defaults", "validate", "build")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def register(name: str, family: family_lib.Family) -> family_lib.Family:
  """Makes `family` the model called `name` in config.model.name; replaces any earlier one."""
  missing = [f for f in REQUIRED if not callable(getattr(family, f, None))]
  if missing:
    raise TypeError(f"Model family {name!r} lacks {missing}; a family provides"
                    f" {', '.join(REQUIRED)}.")
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


def defaults(name: str) -> dict[str, Any]:
  """config.model of the family `name` at its defaults: {"name": name, field: default, ...}."""
  return {"name": name, **dict(get_family(name).defaults())}


def complete(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """`model_config` with every field it lacks at its family's default.

  A run's config.json from before a family gained a field then builds the
  model it trained.
  """
  return {**defaults(model_config.get("name")), **model_config}


def validate(model_config: Mapping[str, Any]) -> None:
  """Raises `errors.ConfigError` with one sentence for the first problem of a model config.

  The name must be a registered family or an importable module that is
  one; a field the family does not declare (`defaults`) is refused here,
  the values by the family's own `validate`.
  """
  name = model_config.get("name")
  try:
    family = get_family(name) if isinstance(name, str) else None
  except ValueError:
    family = None
  except TypeError as e:  # a module that is no family
    raise errors.ConfigError(f"config.model.name={name!r} is not a model family: {e}") from None
  family_lib.check(family is not None, f"Unknown model {name!r} (config.model.name); use one of"
                                       f" {sorted(FAMILIES)} or an importable module path.")
  fields = dict(family.defaults())
  for field in family_lib.fields(model_config):
    family_lib.check(field in fields, f"config.model.{field} is not a field of the {name!r} model;"
                                      f" its fields are {sorted(fields)}.")
  family.validate(complete(model_config))


def describe(model_config: Mapping[str, Any]) -> str:
  """The model in a few words, for figure titles: the family's `describe`, else name and fields.

  Keys of `model_config` that are not the family's fields (an arm record's
  label, its measurements) are ignored.
  """
  name = model_config.get("name")
  family = get_family(name)
  config = {k: v for k, v in complete(model_config).items() if k == "name" or k in
            family.defaults()}
  own = getattr(family, "describe", None)
  if own is not None:
    return own(config)
  return f"{name} ({', '.join(f'{k}={v}' for k, v in family_lib.fields(config).items())})"


def make_model(model_config: Mapping[str, Any], num_classes: int = 10,
               dtype: str = "float32") -> nn.Module:
  """Returns the Flax module that `model_config` describes, built by its family.

  `model_config` holds `name` plus the family's fields (for "resnet":
  depth, norm, shortcut, initializer, scan_blocks); a field it lacks takes
  the family's default. Validation is `validate`'s job; a bad field may
  fail here or when the model runs.
  """
  family = get_family(model_config.get("name"))
  if dtype not in DTYPES:
    raise ValueError(f"Unknown compute dtype {dtype!r}; use one of {sorted(DTYPES)}.")
  return family.build(complete(model_config), num_classes, DTYPES[dtype])


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


def recordings(model: nn.Module,
               input_shape: tuple[int, ...] = family_lib.EXAMPLE_INPUT_1xHxWxC) -> dict[str, int]:
  """{kind: how many layers record it} of what `model` sows into "intermediates".

  Traced abstractly (nothing computed) on an input of `input_shape`, in
  train mode, where every normalisation records; cached per model.
  """
  try:
    return dict(_RECORDINGS[(model, tuple(input_shape))])
  except TypeError:  # a module with an unhashable field
    return _trace_recordings(model, tuple(input_shape))
  except KeyError:
    found = _RECORDINGS[(model, tuple(input_shape))] = _trace_recordings(model, tuple(input_shape))
    return dict(found)


_RECORDINGS: dict[tuple[nn.Module, tuple[int, ...]], dict[str, int]] = {}


def _trace_recordings(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
  def sown():
    inputs = jnp.zeros(input_shape)
    variables = init_variables(model, jax.random.key(0), inputs, train=False)
    _, state = model.apply(variables, inputs, train=True,
                           mutable=["intermediates", "batch_stats"])
    return state.get("intermediates", {})
  counts: dict[str, int] = {}
  for path, _ in ordered_leaves(model, jax.eval_shape(sown)):
    kind = path.rpartition("/")[2]
    counts[kind] = counts.get(kind, 0) + 1
  return counts


register("resnet", resnet)
