"""The devices a sweep runs on: a 2-D mesh (members, data), and each arm's members laid out on it.

Each arm's stacked member state is split along its leading member axis over
the mesh's `members` axis, so a device trains whole members and no member's
step needs another member's device. `data` > 1 splits each member's batch
over that many devices instead (data parallelism): XLA then averages the
gradient over them, and BN's batch statistics are either the whole batch's
(`config.mesh.bn_statistics="global"`, as SyncBN) or each device's own
("ghost", `train.member_step`). With `data` = 1 no collective runs in a step.
The default mesh uses every device along `members`; one device is the 1 x 1
mesh, run by the same code.

A member count that the member axis does not divide is padded with copies
of the last member, marked diverged from the start: frozen like any
diverged member, and cut off before anything is fetched, logged or saved.
Padding, merging and cutting happen on the host, in numpy: an eager JAX op
on arrays spread over devices would be a program of its own with
collectives, and on XLA:CPU such programs in flight next to the step's
(data parallelism) were seen to deadlock.
"""

import math
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnjax import errors

MEMBERS = "members"
DATA = "data"
BN_STATISTICS = ("global", "ghost")


def make_mesh(mesh_config: ml_collections.ConfigDict | None = None,
              devices: list[jax.Device] | None = None) -> Mesh:
  """The (members, data) mesh of `config.mesh` over `devices` (default: all of JAX's).

  `mesh_config.members` 0 means every device that `data` leaves.
  """
  devices = list(jax.devices() if devices is None else devices)
  data = mesh_config.data if mesh_config is not None else 1
  if not (isinstance(data, int) and 1 <= data <= len(devices)):
    raise errors.ConfigError(
        f"config.mesh.data={data!r} asks for more than the {len(devices)} devices present;"
        " give a number from 1 to that.")
  members = (mesh_config.members if mesh_config is not None else 0) or len(devices) // data
  if not (isinstance(members, int) and 1 <= members * data <= len(devices)):
    raise errors.ConfigError(
        f"config.mesh.members={members!r} x config.mesh.data={data} asks for more than the"
        f" {len(devices)} devices present; use fewer, or 0 members for all that are left.")
  grid = np.asarray(devices[:members * data], dtype=object).reshape(members, data)
  return Mesh(grid, (MEMBERS, DATA))


def data_devices(mesh: Mesh) -> int:
  """Devices that split each member's batch."""
  return mesh.shape[DATA]


def single_device_mesh() -> Mesh:
  """The 1 x 1 mesh of this process's first device."""
  return make_mesh(devices=[jax.local_devices()[0]])


def member_devices(mesh: Mesh) -> int:
  """Devices along the member axis."""
  return mesh.shape[MEMBERS]


def padded_count(num_members: int, mesh: Mesh) -> int:
  """The member count rounded up to a multiple of the member axis."""
  d = member_devices(mesh)
  return math.ceil(num_members / d) * d


def by_member(mesh: Mesh) -> NamedSharding:
  """Leading member axis over the `members` devices, replicated along `data`."""
  return NamedSharding(mesh, PartitionSpec(MEMBERS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def place_members(stacked: Any, mesh: Mesh) -> Any:
  """A stacked pytree (leading axis a multiple of the member axis) laid out by member."""
  return _put(stacked, by_member(mesh))


def place_replicated(tree: Any, mesh: Mesh) -> Any:
  """A pytree with every device of `mesh` holding all of it (e.g. the dataset)."""
  return _put(tree, replicated(mesh))


def _put(tree: Any, sharding: NamedSharding) -> Any:
  """`tree` laid out by `sharding`, which may span the devices of several processes.

  Across processes, an array that this process holds whole (numpy, or on its
  own devices) is taken to hold the same values in every process, as a sweep
  builds its data and initial members everywhere alike; each process then
  places its own devices' parts of it, with no transfer between processes
  (`jax.device_put` would compare the values over all processes first).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  def put(x: Any) -> jax.Array:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already spread over the processes: a reshard
    return jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def pad_members(stacked: Any, count: int) -> Any:
  """`stacked` (host arrays, leading axis M) extended to `count` members by repeating the last."""
  num = jax.tree.leaves(stacked)[0].shape[0]
  if count == num:
    return stacked
  extra = [num - 1] * (count - num)
  return jax.tree.map(lambda x: np.concatenate([x, x[extra]]), stacked)


def fetch(tree: Any) -> Any:
  """`tree` as numpy arrays on the host, from however many processes hold it.

  In a multi-process run, the arrays spread over several processes' devices
  are gathered from them in one collective, which every process must join
  (with the same tree); an array this process holds whole is only copied
  (`process_allgather` would stack every process's copy of it).
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  leaves, treedef = jax.tree.flatten(tree)
  spread = [isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves]
  gathered = [x for x, s in zip(leaves, spread) if s]
  gathered = iter(multihost_utils.process_allgather(gathered, tiled=True) if gathered else [])
  local = iter(jax.device_get([x for x, s in zip(leaves, spread) if not s]))
  return jax.tree.unflatten(treedef, [next(gathered) if s else next(local) for s in spread])
