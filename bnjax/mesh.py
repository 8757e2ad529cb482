"""The devices a sweep runs on: a 2-D mesh (members, data), and the member axis laid out over it.

Each arm's stacked member state is split along its leading member axis over
the mesh's `members` axis, so a device trains whole members and no member's
step needs another device: no collective runs in a step. `data` > 1 splits
each member's batch over that many devices instead (data parallelism; the
gradient, and with `config.mesh.bn_statistics="global"` BN's batch
statistics, are then averaged over them). The default mesh uses every device
as a member device; one device is the 1 x 1 mesh, run by the same code.

A member count that the `members` axis does not divide is padded with copies
of the last member, marked diverged from the start: frozen like any diverged
member, and cut off before anything is fetched, logged or saved.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
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

  `mesh_config.members` 0 means every device not used along `data`.
  """
  devices = list(jax.devices() if devices is None else devices)
  members = mesh_config.members if mesh_config is not None else 0
  data = mesh_config.data if mesh_config is not None else 1
  if not (isinstance(data, int) and data >= 1 and len(devices) % data == 0):
    raise errors.ConfigError(
        f"config.mesh.data={data!r} must be a whole number >= 1 that divides the"
        f" {len(devices)} devices present.")
  members = members or len(devices) // data
  if not (isinstance(members, int) and members >= 1 and members * data <= len(devices)):
    raise errors.ConfigError(
        f"config.mesh.members={members} x config.mesh.data={data} asks for more than the"
        f" {len(devices)} devices present; use 0 members for all of them.")
  grid = np.asarray(devices[:members * data], dtype=object).reshape(members, data)
  return Mesh(grid, (MEMBERS, DATA))


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
  return jax.device_put(stacked, by_member(mesh))


def place_replicated(tree: Any, mesh: Mesh) -> Any:
  """A pytree with every device of `mesh` holding all of it (e.g. the dataset)."""
  return jax.device_put(tree, replicated(mesh))


def pad_members(stacked: Any, count: int) -> Any:
  """`stacked` (leading axis M) extended to `count` members by repeating the last one."""
  num = jax.tree.leaves(stacked)[0].shape[0]
  if count == num:
    return stacked
  extra = jnp.asarray([num - 1] * (count - num))
  return jax.tree.map(lambda x: jnp.concatenate([x, x[extra]]), stacked)


def unpadded(stacked: Any, num_members: int) -> Any:
  """The first `num_members` members of a (possibly padded) stacked pytree, in new buffers."""
  return jax.tree.map(lambda x: jnp.copy(x[:num_members]), stacked)


def fetch(tree: Any) -> Any:
  """`tree` as numpy arrays on the host, from however many processes hold it."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
