"""How an arm's members share the device: vmapped together, one by one, in chunks, or looped.

The first three run the same compiled program, `jit(vmap(member_step))`,
over chunks of k members of the stacked state:

  vmap        k = M: one call a step for all members. On accelerators this
              is one wide program; on XLA:CPU every conv becomes a grouped
              convolution, and a step of M = 4 ResNet-20 members took 3.9x
              as long as running them one by one (M = 8: 5.8x).
  sequential  k = 1: M calls a step of one compiled single-member program
              (no recompilation per member).
  chunked     k = config.chunk_size: M / k calls a step.

The fourth runs every member inside one program:

  map         one call a step; inside it `lax.map` steps the members one
              after another (config.map_batch_size of them vmapped per
              iteration; 1: no grouped convolutions at all). One dispatch
              like vmap, separate convolutions like sequential.

`auto` picks sequential on CPU, a rule measured there (docs/performance.md),
and vmap elsewhere, where one launch for all members should pay (unmeasured).
Results are the same whatever the executor (up to float reassociation in
the grouped convolution).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import data, errors, train

EXECUTORS = ("auto", "vmap", "sequential", "chunked", "map")


def resolve(executor: str, backend: str | None = None) -> str:
  """The executor that `executor` stands for on `backend` (default: JAX's)."""
  if executor not in EXECUTORS:
    raise errors.ConfigError(f"Unknown executor {executor!r}; use one of {list(EXECUTORS)}.")
  if executor == "auto":
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"
  return executor


def chunk_size(executor: str, num_members: int, chunk: int, backend: str | None = None) -> int:
  """Members per compiled call for `executor` on `backend` (default: JAX's)."""
  executor = resolve(executor, backend)
  if executor in ("vmap", "map"):
    return num_members
  if executor == "sequential":
    return 1
  if chunk < 1:
    raise errors.ConfigError(
        f"config.chunk_size must be >= 1 for the chunked executor, got {chunk}.")
  return min(chunk, num_members)


def loop_members(executor: str, map_batch_size: int, backend: str | None = None) -> int | None:
  """`train.make_arm_step`'s loop_members for `executor`: None (vmap) or members per iteration."""
  if resolve(executor, backend) != "map":
    return None
  if map_batch_size < 1:
    raise errors.ConfigError(f"config.map_batch_size must be >= 1, got {map_batch_size}.")
  return map_batch_size


def split(stacked: Any, size: int) -> list[Any]:
  """Splits a stacked pytree (leading axis M) into chunks of `size` members."""
  num = jax.tree.leaves(stacked)[0].shape[0]
  return [jax.tree.map(lambda x: x[i:i + size], stacked) for i in range(0, num, size)]


def merge(chunks: list[Any]) -> Any:
  """Concatenates chunks back into one stacked pytree."""
  if len(chunks) == 1:
    return chunks[0]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *chunks)


@dataclasses.dataclass
class ArmExecutor:
  """Advances and evaluates an arm's members, held as chunks of stacked state."""

  step_fn: Callable[..., tuple[train.MemberState, train.Metrics]]
  eval_fn: Callable[[train.MemberState, data.Dataset], train.Metrics]
  chunks: list[train.MemberState]
  sums: list[train.Metrics]

  @classmethod
  def create(cls, step_fn, eval_fn, states: train.MemberState, size: int) -> "ArmExecutor":
    chunks = split(states, size)
    sums = [train.zero_metrics(train.num_members(c)) for c in chunks]
    return cls(step_fn, eval_fn, chunks, sums)

  def step(self, dataset: data.Dataset, step: jax.Array) -> None:
    """Dispatches one training step for every chunk (asynchronously)."""
    for i, chunk in enumerate(self.chunks):
      self.chunks[i], self.sums[i] = self.step_fn(chunk, self.sums[i], dataset, step)

  def evaluate(self, dataset: data.Dataset) -> dict[str, np.ndarray]:
    """Test metrics of every member, (M,) each, fetched to the host."""
    results = jax.device_get([self.eval_fn(chunk, dataset) for chunk in self.chunks])
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

  def take_metric_means(self, count: int) -> dict[str, np.ndarray]:
    """Train-metric means over the last `count` steps, (M,) each; resets the sums."""
    sums = jax.device_get(self.sums)
    self.sums = [train.zero_metrics(s["train_loss"].shape[0]) for s in sums]
    return {k: np.concatenate([s[k] for s in sums]) / count for k in sums[0]}

  @property
  def states(self) -> train.MemberState:
    """The arm's state stacked over all members."""
    return merge(self.chunks)

  def divergence(self) -> tuple[np.ndarray, np.ndarray]:
    """(diverged (M,) bool, diverged_step (M,) int) fetched to the host."""
    flags = jax.device_get([(c.diverged, c.diverged_step) for c in self.chunks])
    return (np.concatenate([f[0] for f in flags]), np.concatenate([f[1] for f in flags]))

  @property
  def metric_sums(self) -> train.Metrics:
    """The train-metric sums since the last `take_metric_means`, (M,) each."""
    return merge(self.sums)

  def snapshot(self) -> tuple[train.MemberState, train.Metrics]:
    """(states, metric sums) stacked in buffers the next step will not donate.

    For a checkpoint saved asynchronously while training goes on: merging
    several chunks makes new arrays; a single chunk is copied.
    """
    if len(self.chunks) > 1:
      return self.states, self.metric_sums
    return jax.tree.map(jnp.copy, (self.chunks[0], self.sums[0]))

  def load(self, states: train.MemberState, sums: train.Metrics) -> None:
    """Replaces the members' states and metric sums (e.g. from a checkpoint)."""
    size = train.num_members(self.chunks[0])
    self.chunks, self.sums = split(states, size), split(sums, size)
