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

`auto` picks sequential on CPU and vmap elsewhere, each measured best
(docs/performance.md): on an H200, ResNet-110 at M = 18 ran 9,221 images/s
with vmap, 8,011 chunked (k = 6) and 2,822 sequential (one row: float32 at
JAX's default precision; map, bfloat16 and the other M are unmeasured there).
Results are the same whatever the executor (up to float reassociation in
the grouped convolution).

On a mesh of several member devices (`bnjax.mesh`) every call holds a
multiple of their number, and each device runs its share of the call's
members the executor's way: `sequential` steps one member per device per
call, `chunked` config.chunk_size per device.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from bnjax import data, errors, mesh as mesh_lib, train

EXECUTORS = ("auto", "vmap", "sequential", "chunked", "map")


def resolve(executor: str, backend: str | None = None) -> str:
  """The executor that `executor` stands for on `backend` (default: JAX's)."""
  if executor not in EXECUTORS:
    raise errors.ConfigError(f"Unknown executor {executor!r}; use one of {list(EXECUTORS)}.")
  if executor == "auto":
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"
  return executor


def chunk_size(executor: str, num_members: int, chunk: int, backend: str | None = None,
               member_devices: int = 1) -> int:
  """Members per compiled call for `executor` on `backend` (default: JAX's).

  With several member devices each call holds a multiple of their number
  (so each device steps 1 member per call under `sequential`, `chunk` under
  `chunked`), and `num_members` counts the padded members.
  """
  executor = resolve(executor, backend)
  if executor in ("vmap", "map"):
    return num_members
  if executor == "sequential":
    return member_devices
  if chunk < 1:
    raise errors.ConfigError(
        f"config.chunk_size must be >= 1 for the chunked executor, got {chunk}.")
  return min(chunk * member_devices, num_members)


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


@dataclasses.dataclass
class ArmExecutor:
  """Advances and evaluates an arm's members, held as chunks of stacked state on a mesh.

  The chunks hold the members padded to a multiple of the mesh's member
  axis (see `bnjax.mesh`); everything this class returns is cut to the
  arm's `num_members`, so the padding never shows.
  """

  step_fn: Callable[..., tuple[train.MemberState, train.Metrics]]
  eval_fn: Callable[[train.MemberState, data.Dataset], train.Metrics]
  mesh: mesh_lib.Mesh
  num_members: int
  size: int
  chunks: list[train.MemberState] = dataclasses.field(default_factory=list)
  sums: list[train.Metrics] = dataclasses.field(default_factory=list)
  streams: list[jax.Array] = dataclasses.field(default_factory=list)

  @classmethod
  def create(cls, step_fn, eval_fn, states: train.MemberState, size: int,
             mesh: mesh_lib.Mesh | None = None,
             streams: tuple[int, ...] | None = None) -> "ArmExecutor":
    """`size` members per call (a multiple of the mesh's member axis, see `chunk_size`).

    `streams` are the members' data streams (their seeds), which the step
    reads under `train.data_stream="per_seed"`; default 0 each.
    """
    num = train.num_members(states)
    arm = cls(step_fn, eval_fn, mesh or mesh_lib.single_device_mesh(), num, size)
    streams_M = np.asarray(streams if streams is not None else [0] * num, np.uint32)
    padded = mesh_lib.pad_members(streams_M, mesh_lib.padded_count(num, arm.mesh))
    arm.streams = [arm._placed(c) for c in split(padded, size)]
    arm.load(states, train.zero_metrics(num))
    return arm

  def step(self, dataset: data.Dataset, step: jax.Array) -> None:
    """Dispatches one training step for every chunk (asynchronously)."""
    for i, (chunk, streams) in enumerate(zip(self.chunks, self.streams)):
      self.chunks[i], self.sums[i] = self.step_fn(chunk, self.sums[i], streams, dataset, step)

  def evaluate(self, dataset: data.Dataset) -> dict[str, np.ndarray]:
    """Test metrics of every member, (M,) each, fetched to the host."""
    return self._on_host([self.eval_fn(chunk, dataset) for chunk in self.chunks])

  def take_metric_means(self, count: int) -> dict[str, np.ndarray]:
    """Train-metric means over the last `count` steps, (M,) each; resets the sums."""
    means = jax.tree.map(lambda x: x / count, self._on_host(self.sums))
    self.sums = [self._placed(train.zero_metrics(s["train_loss"].shape[0])) for s in self.sums]
    return means

  @property
  def states(self) -> train.MemberState:
    """The arm's state stacked over its members (padding cut off), on the host."""
    return self._on_host(self.chunks)

  def _on_host(self, chunks: list[Any]) -> Any:
    """Chunks of stacked pytrees merged on the host (numpy), padding cut off."""
    merged = jax.tree.map(lambda *xs: np.concatenate(xs), *mesh_lib.fetch(chunks))
    return jax.tree.map(lambda x: x[:self.num_members], merged)

  def divergence(self) -> tuple[np.ndarray, np.ndarray]:
    """(diverged (M,) bool, diverged_step (M,) int) fetched to the host."""
    return self._on_host([(c.diverged, c.diverged_step) for c in self.chunks])

  @property
  def metric_sums(self) -> train.Metrics:
    """The train-metric sums since the last `take_metric_means`, (M,) each, on the host."""
    return self._on_host(self.sums)

  def snapshot(self) -> tuple[train.MemberState, train.Metrics]:
    """(states, metric sums) of the M members, on the host.

    For a checkpoint saved asynchronously while training goes on (host
    copies: the next step donates the device buffers); without the padding,
    so that it restores onto any number of devices.
    """
    return self.states, self.metric_sums

  def load(self, states: train.MemberState, sums: train.Metrics) -> None:
    """Replaces the members' states and metric sums (e.g. from a checkpoint), M each."""
    count = mesh_lib.padded_count(self.num_members, self.mesh)
    states, sums = mesh_lib.pad_members(mesh_lib.fetch((states, sums)), count)
    frozen = np.arange(count) >= self.num_members  # the padding: diverged from the start
    states = states.replace(diverged=states.diverged | frozen)
    self.chunks = [self._placed(c) for c in split(states, self.size)]
    self.sums = [self._placed(s) for s in split(sums, self.size)]

  def _placed(self, stacked: Any) -> Any:
    return mesh_lib.place_members(stacked, self.mesh)
