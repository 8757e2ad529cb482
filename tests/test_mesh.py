"""Members sharded over devices: the same sweep bit for bit, invisible padding, no collective,
and a checkpoint that resumes on another number of devices.

The runs are subprocesses with 4 host CPU devices (XLA_FLAGS). They all get
the same device count: XLA:CPU's threading, and with it float rounding,
depends on it, so the one-device runs use a 1-device mesh of that platform.
"""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bnjax import checkpoint, errors, executor, mesh as mesh_lib

from arms import tree_norm
from conftest import REPO, tiny_config

# Three members per arm: over 4 devices each arm is padded with a fourth.
ARGS = ["--config=configs/lr_sweep.py:smoke", "--config.train.num_steps=12",
        "--config.sweep.lrs=(0.05,0.3,0.7)", "--config.sweep.seeds=(0,)",
        "--config.train.batch_size=8", "--config.data.synthetic_train_size=256",
        "--config.data.synthetic_test_size=64", "--config.eval_batch_size=64",
        "--config.log_every=2", "--config.eval_every=4", "--config.checkpoint.every=3"]


def _run(workdir, *extra, devices: int = 4, launcher: bool = False):
  """The sweep, by `python -m bnjax.main` or (`launcher`) by launch/single_host.sh."""
  env = {**os.environ, "PYTHONPATH": REPO,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  if launcher:
    command = ["launch/single_host.sh", ARGS[0].split("=", 1)[1], str(workdir), *ARGS[1:]]
  else:
    command = [sys.executable, "-m", "bnjax.main", f"--workdir={workdir}", *ARGS]
  result = subprocess.run([*command, *extra], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _same_outputs(a, b):
  for name in ("metrics.jsonl", "members.json"):
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
  run_a, run_b = checkpoint.load(a), checkpoint.load(b)
  assert run_a.step == run_b.step
  jax.tree.map(np.testing.assert_array_equal, run_a.states, run_b.states)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The sweep on a 1-device mesh and, by the single-host launcher, on all 4 devices.

  Each arm's 3 members are padded to 4 on the 4 devices.
  """
  root = tmp_path_factory.mktemp("mesh")
  _run(root / "one", "--config.mesh.members=1")
  _run(root / "four", launcher=True)
  return root


def test_members_sharded_over_four_devices_train_bit_for_bit_as_on_one(runs):
  _same_outputs(runs / "one", runs / "four")
  assert "Done; outputs are in" in (runs / "four" / "log.txt").read_text()  # the launcher's log
  members = checkpoint.load(runs / "four").members
  assert len(members) == 6  # the padding members show nowhere
  assert [len(s.base_lr) for s in checkpoint.load(runs / "four").states] == [3, 3]


def _final_states(workdir):
  return checkpoint.load(workdir).states


def test_data_parallel_members_follow_the_one_device_run_and_ghost_statistics_differ(runs,
                                                                                     tmp_path):
  """2 member devices x 2 data devices: each member's batch of 8 split 4 + 4.

  With global BN statistics the run is the 1-device run up to float
  reassociation (the gradient and BN's moments summed across devices). With
  ghost statistics each half is normalised by its own moments: the BN arm
  trains differently, and the no-BN arm, which has no statistics, does not.
  """
  _run(tmp_path / "global", "--config.mesh.members=2", "--config.mesh.data=2")
  _run(tmp_path / "ghost", "--config.mesh.members=2", "--config.mesh.data=2",
       "--config.mesh.bn_statistics=ghost")
  one, synced, ghost = (_final_states(p) for p in (runs / "one", tmp_path / "global",
                                                   tmp_path / "ghost"))
  rounding = [_relative_difference(a.params, b.params) for a, b in zip(one, synced)]
  assert max(rounding) < 1e-3, rounding  # 12 steps at rates up to 0.7 amplify it
  ghost_gap = _relative_difference(synced[0].params, ghost[0].params)
  assert ghost_gap > 10 * max(rounding), (ghost_gap, rounding)
  jax.tree.map(np.testing.assert_array_equal, synced[1].params, ghost[1].params)


def _relative_difference(a, b) -> float:
  return float(tree_norm(jax.tree.map(np.subtract, a, b)) / tree_norm(b))


def test_a_run_checkpointed_on_four_devices_resumes_on_two_and_on_one(runs, tmp_path):
  for devices in (2, 1):
    workdir = tmp_path / f"on{devices}"
    shutil.copytree(runs / "four", workdir)
    for step in checkpoint.available_steps(workdir):
      if step > 6:  # as if preempted after the save at step 6
        shutil.rmtree(workdir / "checkpoints" / str(step))
    result = _run(workdir, f"--config.mesh.members={devices}")
    assert "Resuming" in result.stderr
    _same_outputs(runs / "four", workdir)


_COMPILED_STEP_HLO = """
import jax, numpy as np
from bnjax import data, mesh as mesh_lib, train
from bnjax.models import make_model
mesh = mesh_lib.make_mesh()
assert mesh_lib.member_devices(mesh) == 4
model = make_model(dict(name="resnet", depth=8, norm="batch"))
tx = train.make_optimizer(0.9, 0.0)
config = dict(batch_size=8, num_steps=10, lr_boundaries=(0.5,), lr_decay=0.1, warmup_steps=0,
              warmup_factor=0.1, max_loss=float("inf"), data_seed=0)
step_fn = train.make_arm_step(model, tx, config, True, mesh=mesh)
states = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                     sharding=mesh_lib.by_member(mesh)),
                      train.abstract_arm(model, tx, 4))
sums = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                   sharding=mesh_lib.by_member(mesh)),
                    jax.eval_shape(lambda: train.zero_metrics(4)))
dataset = mesh_lib.place_replicated(data.synthetic(0, 64, 8), mesh)
streams = jax.ShapeDtypeStruct((4,), np.uint32, sharding=mesh_lib.by_member(mesh))
print(step_fn.lower(states, sums, streams, dataset,
                    jax.ShapeDtypeStruct((), np.int32)).compile().as_text())
"""


def test_the_compiled_step_of_sharded_members_has_no_collective():
  env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  hlo = subprocess.run([sys.executable, "-c", _COMPILED_STEP_HLO], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=True).stdout
  assert "convolution" in hlo  # the step itself, partitioned for one device's members
  for collective in ("all-reduce", "all-gather", "all-to-all", "collective-permute",
                     "reduce-scatter"):
    assert collective not in hlo, collective


def test_member_calls_are_multiples_of_the_member_devices():
  assert executor.chunk_size("sequential", 8, 1, member_devices=4) == 4
  assert executor.chunk_size("chunked", 8, 3, member_devices=2) == 6
  assert executor.chunk_size("vmap", 8, 1, member_devices=4) == 8


@pytest.mark.parametrize("members", [3, -1])
def test_a_mesh_larger_than_the_devices_is_one_sentence(members):
  config = tiny_config()
  config.mesh.members = members
  with pytest.raises(errors.ConfigError, match="asks for more than the 2 devices present"):
    mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1] * 2)  # two "devices"
