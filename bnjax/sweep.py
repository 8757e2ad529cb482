"""The member grid and the stacked (leading member axis) pytrees it trains.

A member is one (arm, learning rate, seed). Members of one arm share a model
and so one compiled step; their state is stacked along a leading axis M.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bnjax import config as config_lib, data
from bnjax.models import make_model


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of the sweep; `index` is its position across all arms."""

  index: int
  arm: dict[str, Any]
  lr: float
  seed: int

  def record(self, arm_fields: tuple[str, ...]) -> dict[str, Any]:
    """The member's identity as written to members.json and metrics.jsonl."""
    return {"member": self.index, "lr": self.lr, "seed": self.seed,
            **{f: self.arm[f] for f in arm_fields}}


@dataclasses.dataclass(frozen=True)
class Arm:
  """One architecture arm: its model config and its members (in stack order)."""

  index: int
  model_config: dict[str, Any]
  members: tuple[Member, ...]

  @property
  def lrs(self) -> jax.Array:
    return jnp.asarray([m.lr for m in self.members], jnp.float32)

  @property
  def seeds(self) -> tuple[int, ...]:
    return tuple(m.seed for m in self.members)


def arm_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The model fields the sweep varies (the set keys of `config.sweep.arms`)."""
  return tuple(config_lib.swept_arms(config))


def make_arms(config: ml_collections.ConfigDict) -> list[Arm]:
  """All arms with their members: arms x lrs x seeds, indexed in that order."""
  arms, index = [], 0
  fields = arm_fields(config)
  for a, model_config in enumerate(config_lib.arm_configs(config)):
    members = []
    for lr in config.sweep.lrs:
      for seed in config.sweep.seeds:
        arm = {f: model_config[f] for f in fields}
        members.append(Member(index, arm, float(lr), int(seed)))
        index += 1
    arms.append(Arm(a, model_config, tuple(members)))
  return arms


def build_model(arm: Arm, config: ml_collections.ConfigDict) -> nn.Module:
  """The Flax model of an arm, in the config's compute dtype."""
  return make_model(arm.model_config, num_classes=data.NUM_CLASSES,
                    dtype=config.train.compute_dtype)


def select(stacked: Any, positions: int | list[int]) -> Any:
  """Takes member(s) at `positions` (within an arm) out of a stacked pytree.

  An int gives one member's pytree without the member axis; a list keeps
  the axis.
  """
  if isinstance(positions, int):
    return jax.tree.map(lambda x: x[positions], stacked)
  idx = jnp.asarray(positions)
  return jax.tree.map(lambda x: x[idx], stacked)


def stack(pytrees: list[Any]) -> Any:
  """Stacks per-member pytrees along a new leading member axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *pytrees)
