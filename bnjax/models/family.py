"""What a model family provides, and the layer order of models that do not say.

A family is anything (usually a module such as `bnjax.models.resnet`) with

* `defaults() -> dict`: its fields (besides `name`) and their default
  values, as init2winit's per-model hyperparameters: `config.model` is
  `name` plus exactly these fields, `--config.model.name=X` swaps in X's
  (`bnjax.config.use_model`), and a sweep can vary any of them;
* `validate(model_config) -> None`: raises `errors.ConfigError`, one sentence
  naming the field (config.model.depth, ...), for the first bad value in
  `config.model` or a sweep arm (a field the family lacks is refused before
  it is called);
* `build(model_config, num_classes, dtype) -> nn.Module`: the Flax module,
  `dtype` already a jnp dtype;

and, optionally,

* `describe(model_config) -> str`: the model in a few words for figure
  titles ("ResNet-110, BN"); without it, its name and fields.

`model_config` is `config.model` as a dict: `name` plus the family's fields,
every field present (`registry.complete` fills those an older config lacks).
`registry.register(name, family)` makes it a `config.model.name`; a module
path is one too, imported on first use.

The module a family builds takes images (B, H, W, C) and returns logits
(B, K): `module(x, train=...)`. The analyses read what it records with
`sow("intermediates", kind, value)`:

* `conv_out`   every weight layer's output before any normalisation (a
  convolution's, or a hidden Dense layer's), in depth order;
* `norm_out`   every normalisation layer's output;
* `branch_out` each residual branch's output before the skip is added;
* `block_out`  every residual block's output;
* `logits`     the classifier output.

An experiment says which it needs (`RECORDINGS`), and a model that lacks
one is refused in one sentence (`bnjax.experiments.check`). Every
per-layer result comes in depth order from `registry.ordered_leaves`. A
module class may define, marked `@nn.nowrap` so that they work on unbound
modules:

* `ordered_leaves(self, tree) -> [(path, leaf)]`: its depth order;
  without it, `call_order_leaves` orders by when each submodule's call
  returned;
* `init_variables(self, key, inputs, **kwargs)`: its initialisation when
  `init` is not the right one (ResNet's scanned blocks); without it, `init`;
* `unrolled(self, variables) -> (module, variables)`: the same function
  with one module per layer (ResNet's unscanned twin); without it, itself.
"""

from collections.abc import Mapping
from typing import Any, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import errors

ModelConfig = Mapping[str, Any]
Path = tuple[str, ...]

# What every bnjax analysis feeds a model: one CIFAR image (see bnjax.data).
EXAMPLE_INPUT_1xHxWxC = (1, 32, 32, 3)


class Family(Protocol):
  """The functions every registered model family provides (see the module docstring)."""

  def defaults(self) -> dict[str, Any]: ...

  def validate(self, model_config: ModelConfig) -> None: ...

  def build(self, model_config: ModelConfig, num_classes: int, dtype: Any) -> nn.Module: ...


def fields(model_config: ModelConfig) -> dict[str, Any]:
  """The family's own fields: `model_config` without `name`."""
  return {k: v for k, v in model_config.items() if k != "name"}


def check(condition: bool, message: str) -> None:
  """Raises `errors.ConfigError(message)` unless `condition`: a family's `validate` step."""
  if not condition:
    raise errors.ConfigError(message)


def flat_leaves(tree: Any) -> list[tuple[str, Any]]:
  """[("a/b/c", leaf)] of nested dicts, in the tree's own (insertion) order.

  Anything that is not a dict is a leaf, so a sown tuple (value,) is one leaf.
  """
  return list(flax.traverse_util.flatten_dict(tree, sep="/").items())


def call_order_leaves(model: nn.Module, tree: Any,
                      input_shape: tuple[int, ...] = EXAMPLE_INPUT_1xHxWxC
                      ) -> list[tuple[str, Any]]:
  """The leaves of a params- or intermediates-shaped `tree` in the order the model ran.

  A leaf belongs to the deepest submodule whose path prefixes its own;
  leaves are ordered by when that submodule's outermost call returned in
  `model.init(key, zeros(input_shape), train=False)` (traced abstractly,
  nothing computed), ties in name order. A layer thus follows every layer
  whose output it reads, and values sown by the top-level module (the
  logits) come last. A tree's own order says nothing about depth: one that
  went through a JAX transformation (jit, init) has its keys sorted.
  """
  rank = {path: i for i, path in enumerate(_call_order(model, tuple(input_shape)))}
  last = len(rank)
  def owner_rank(path: str) -> int:
    parts = tuple(path.split("/"))
    for end in range(len(parts) - 1, 0, -1):
      if parts[:end] in rank:
        return rank[parts[:end]]
    return last
  leaves = flat_leaves(tree)
  return sorted(leaves, key=lambda item: (owner_rank(item[0]), item[0]))


_CALL_ORDERS: dict[tuple[nn.Module, tuple[int, ...]], list[Path]] = {}


def _call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[Path]:
  """Submodule paths in the order their outermost method call returned, cached per model."""
  try:
    return _CALL_ORDERS[(model, input_shape)]
  except TypeError:  # a module with an unhashable field: trace every time
    return _trace_call_order(model, input_shape)
  except KeyError:
    order = _CALL_ORDERS[(model, input_shape)] = _trace_call_order(model, input_shape)
    return order


def _trace_call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[Path]:
  order: list[Path] = []
  done: set[Path] = set()
  active: dict[Path, int] = {}
  def record(next_fun, args, kwargs, context):
    if context.method_name == "setup":  # may run outside the module's own call
      return next_fun(*args, **kwargs)
    path = tuple(context.module.path)
    active[path] = active.get(path, 0) + 1
    out = next_fun(*args, **kwargs)
    active[path] -= 1
    if not active[path] and path not in done:
      order.append(path)
      done.add(path)
    return out
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False))
  return order
