"""Runs that last: kill/resume is bit-exact, SIGTERM saves, workdirs are never clobbered."""

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bnjax import checkpoint, curves, errors, executor, loop, sweep, train, workdir as workdir_lib

from conftest import REPO, SWEEP_ARGS, sweep_env, tiny_config

NUM_STEPS = 12
ARGS = SWEEP_ARGS  # NUM_STEPS steps, checkpoints every 3


def _command(workdir, *extra):
  return [sys.executable, "-m", "bnjax.main", f"--workdir={workdir}", *ARGS, *extra]


def _env():
  """As the shared `trained_sweep` ran (with the session's compilation cache)."""
  return sweep_env()


def _run(workdir, *extra, timeout=300):
  return subprocess.run(_command(workdir, *extra), cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _logged_step(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return -1
  with open(path) as f:
    lines = f.read().splitlines()
  return max((int(l.split('"step": ')[1].split(",")[0]) for l in lines if '"step": ' in l),
             default=-1)


def _start_and_signal(workdir, at_step: int, sig: int) -> subprocess.CompletedProcess:
  """Starts a run and sends `sig` once it has logged step `at_step`.

  Its output goes to files, not pipes: nothing reads it until the signal, and
  a full pipe would block the run before it reached the step.
  """
  with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
    process = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(), text=True,
                               stdout=stdout, stderr=stderr)
    deadline = time.time() + 300
    while _logged_step(workdir) < at_step and process.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    process.send_signal(sig)
    process.wait(timeout=300)
    outputs = []
    for out in (stdout, stderr):
      out.seek(0)
      outputs.append(out.read())
  return subprocess.CompletedProcess(process.args, process.returncode, *outputs)


def _hashes(workdir) -> dict[str, str]:
  hashes = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        hashes[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return hashes


def _assert_same_final_state(a, b):
  run_a, run_b = checkpoint.load(a), checkpoint.load(b)
  assert run_a.step == run_b.step == NUM_STEPS
  jax.tree.map(np.testing.assert_array_equal, run_a.states, run_b.states)


@pytest.fixture(scope="module")
def uninterrupted(trained_sweep):
  """The sweep run without interruption: the shared one (read it; copy it to change it)."""
  return trained_sweep


def test_killed_then_interrupted_run_resumes_bit_identical(uninterrupted, tmp_path):
  """SIGKILL, then Ctrl-C (SIGINT), which saves and stops as SIGTERM does (exit 130, no
  traceback; SIGTERM to a multi-process run: tests/test_multiprocess.py), then resume."""
  workdir = tmp_path / "run"
  kill_at, term_at = np.random.default_rng(0).integers([2, 6], [5, 9])
  killed = _start_and_signal(workdir, int(kill_at), signal.SIGKILL)
  assert killed.returncode == -signal.SIGKILL
  preempted = _start_and_signal(workdir, int(term_at), signal.SIGINT)
  assert preempted.returncode == 130, preempted.stderr[-3000:]
  assert "SIGINT (Ctrl-C) at step" in preempted.stderr
  assert "rerun the same command to resume" in preempted.stderr
  assert "Traceback" not in preempted.stderr
  saved = checkpoint.available_steps(workdir)
  assert max(saved) >= term_at  # saved at the step SIGINT arrived, not at a cadence step
  resumed = _run(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming" in resumed.stderr
  for name in ("metrics.jsonl", "members.json", "config.json"):
    assert (workdir / name).read_bytes() == (uninterrupted / name).read_bytes(), name
  _assert_same_final_state(uninterrupted, workdir)
  if curves.tensorboardX is not None:  # the killed run's points past its checkpoint are gone
    from test_curves import expected_curves, read_curves
    assert read_curves(workdir) == expected_curves(workdir, ("norm",))


def test_first_last_and_latest_checkpoints_are_kept(uninterrupted):
  # every=3, keep=3: the latest three saves plus the first and the last step.
  assert checkpoint.available_steps(uninterrupted) == [0, 6, 9, 12]


def test_a_different_config_cannot_touch_an_existing_run(uninterrupted):
  before = _hashes(uninterrupted)
  result = _run(uninterrupted, "--config.train.weight_decay=0.0005", timeout=120)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert "different config" in last and "train.weight_decay" in last and "--overwrite" in last
  assert _hashes(uninterrupted) == before


def test_load_round_trips_members_bit_exactly(uninterrupted):
  run = checkpoint.load(uninterrupted, step=0)
  tx = train.make_optimizer(run.config.train.momentum, run.config.train.weight_decay)
  for arm, states in zip(run.arms, run.states):
    fresh = train.init_arm(sweep.build_model(arm, run.config), tx, arm.seeds, arm.lrs)
    jax.tree.map(np.testing.assert_array_equal, states, fresh)
  member = run.member_index(norm="batch", lr=0.3)
  logits = run.model(member).apply(run.variables(member), jnp.zeros((2, 32, 32, 3)))
  assert logits.shape == (2, 10)
  with pytest.raises(errors.WorkdirError, match="no checkpoint at step 5"):
    checkpoint.load(uninterrupted, step=5)


def test_damaged_checkpoint_is_reported_in_one_sentence(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  latest = workdir / "checkpoints" / str(NUM_STEPS)
  for root, _, files in os.walk(latest / "arms"):
    for name in files:
      if os.path.getsize(os.path.join(root, name)) > 100:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(10)
  with pytest.raises(errors.WorkdirError, match=f"checkpoint .*{NUM_STEPS} cannot be read"):
    checkpoint.load(workdir)
  # A half-written save (Orbax's temporary directory) is never picked up.
  (workdir / "checkpoints" / "17.orbax-checkpoint-tmp-1").mkdir()
  assert checkpoint.available_steps(workdir)[-1] == NUM_STEPS


def _flip_bytes(checkpoint_dir, count: int = 8) -> None:
  """Inverts `count` bytes in the middle of the checkpoint's largest file: same size, same
  structure, other values."""
  paths = [os.path.join(root, name) for root, _, names in os.walk(checkpoint_dir) for name in names]
  path = max(paths, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(count)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


def test_a_flipped_byte_is_found_on_every_restore(uninterrupted, tmp_path):
  """checkpoint.load (analyses) and the resume of the training command both refuse the
  checkpoint, naming its step and an array, and say how to fall back."""
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  _flip_bytes(workdir / "checkpoints" / str(NUM_STEPS))
  damaged = (f"checkpoints/{NUM_STEPS} is damaged: the array .* \\(step {NUM_STEPS}\\) does"
             " not match the checksum saved with it.*delete that directory to fall back to the"
             " previous checkpoint \\(step 9\\)")
  with pytest.raises(errors.WorkdirError, match=damaged):
    checkpoint.load(workdir)
  with pytest.raises(errors.WorkdirError, match=damaged):
    loop.train_sweep(checkpoint.read_config(workdir), str(workdir))
  assert checkpoint.load(workdir, step=9).step == 9  # the others are intact


def test_example_script_inspects_a_member(uninterrupted):
  script = [sys.executable, "examples/inspect_member.py"]
  result = subprocess.run([*script, f"--workdir={uninterrupted}"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"lr=0.7) at step {NUM_STEPS}: test accuracy" in result.stdout  # the highest rate
  assert "stem/conv/kernel" in result.stdout
  # A positional path, as the script once took, is refused with the flag to use instead.
  positional = subprocess.run([*script, str(uninterrupted)], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=120)
  assert positional.returncode != 0 and "--workdir=DIR" in positional.stderr


def test_loaded_members_of_a_scanned_model_have_one_entry_per_block():
  config = tiny_config()
  config.model.update(depth=14, scan_blocks=True)  # two blocks a stage: the second is scanned
  config.sweep.arms.norm = ("batch",)
  arms = sweep.make_arms(config)
  tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
  states = [train.init_arm(sweep.build_model(arm, config), tx, arm.seeds, arm.lrs) for arm in arms]
  run = checkpoint.Run(config=config, members=[], step=0, arms=arms, states=states)
  member = arms[0].members[0].index
  variables = run.variables(member)
  assert "stage2_block01" in variables["params"] and "stage2_blocks" not in variables["params"]
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  trained_as = sweep.build_model(arms[0], config)
  expected = trained_as.apply(train.model_variables(run.member_state(member)), images)
  np.testing.assert_allclose(run.model(member).apply(variables, images), expected,
                             rtol=1e-5, atol=1e-5)


def _tiny_checkpoint(workdir, progress: dict | None = None) -> tuple[object, list]:
  """Saves step 0 of the tiny config's arms (zeros) into `workdir`: (config, abstract arms).

  With `progress`, saves it as given (as an older bnjax did) instead of through
  `checkpoint.save`, which adds the state format.
  """
  config = tiny_config()
  abstract = checkpoint.abstract_arms(sweep.make_arms(config), config)
  payload = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
  with checkpoint.make_manager(str(workdir), config) as manager:
    if progress is None:
      checkpoint.save(manager, 0, payload, {"step": 0, "last_log_step": 0})
    else:
      manager.save(0, args=ocp.args.Composite(arms=ocp.args.StandardSave(payload),
                                              progress=ocp.args.JsonSave(progress)))
  return config, abstract


@pytest.mark.parametrize("change", ["extra_leaf", "other_shape"])
def test_a_checkpoint_of_another_state_layout_is_not_called_damaged(tmp_path, change):
  config, abstract = _tiny_checkpoint(tmp_path)
  sums = abstract[0]["sums"]
  if change == "extra_leaf":
    sums["new_metric"] = jax.ShapeDtypeStruct(sums["train_loss"].shape, jnp.float32)
    expected = "0/sums/new_metric not saved"
  else:
    sums["train_loss"] = jax.ShapeDtypeStruct((7,), jnp.float32)
    expected = "0/sums/train_loss saved as"
  with checkpoint.make_manager(str(tmp_path), config, read_only=True) as manager:
    with pytest.raises(errors.WorkdirError) as raised:
      checkpoint.restore(manager, 0, abstract)
  message = str(raised.value)
  assert "different state layout (state format 1" in message and expected in message
  assert "not damaged" in message and "new --workdir" in message
  assert "delete that directory" not in message


def test_a_checkpoint_without_state_format_still_loads(tmp_path):
  config, abstract = _tiny_checkpoint(tmp_path, progress={"step": 0, "last_log_step": 0})
  with checkpoint.make_manager(str(tmp_path), config, read_only=True) as manager:
    arms, progress = checkpoint.restore(manager, 0, abstract)
    assert progress == {"step": 0, "last_log_step": 0}
    jax.tree.map(lambda a, s: np.testing.assert_array_equal(a, np.zeros(s.shape, s.dtype)),
                 arms, abstract)
    abstract[1]["sums"]["new_metric"] = abstract[1]["sums"]["train_loss"]
    with pytest.raises(errors.WorkdirError, match="state format unrecorded"):
      checkpoint.restore(manager, 0, abstract)


def test_saves_at_the_cadence_and_the_kept_steps(tmp_path):
  """every=3 over 7 steps with keep_steps=(5,): the manager's policy saves at 0, 3, 5, 6, 7."""
  config = tiny_config(num_steps=7)
  config.checkpoint.update(every=3, keep=100, keep_steps=(5,))  # keep=100: none deleted
  config.sweep.arms.norm = ("batch",)
  loop.train_sweep(config, str(tmp_path / "run"))
  assert checkpoint.available_steps(tmp_path / "run") == [0, 3, 5, 6, 7]


def _fields(state: train.MemberState) -> dict:
  """A member state as the plain dict of its fields, as bnjax held and saved it before."""
  return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}


def test_a_checkpoint_of_state_dicts_loads_into_member_states(tmp_path):
  config = tiny_config()
  arms = sweep.make_arms(config)
  tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
  states = [train.init_arm(sweep.build_model(arm, config), tx, arm.seeds, arm.lrs) for arm in arms]
  states[0] = states[0].replace(diverged=states[0].diverged.at[1].set(True),
                                diverged_step=states[0].diverged_step.at[1].set(4))
  sums = [train.zero_metrics(train.num_members(s)) for s in states]
  old = [{"states": _fields(s), "sums": m} for s, m in zip(states, sums)]
  new = [{"states": s, "sums": m} for s, m in zip(states, sums)]
  assert checkpoint._layout(new) == checkpoint._layout(old)  # what the layout check compares
  workdir_lib.prepare(str(tmp_path), config)
  workdir_lib.write_members(str(tmp_path), [])
  with checkpoint.make_manager(str(tmp_path), config) as manager:
    checkpoint.save(manager, 0, old, {"step": 0, "last_log_step": 0})
  run = checkpoint.load(tmp_path)
  assert all(isinstance(s, train.MemberState) for s in run.states)
  jax.tree.map(np.testing.assert_array_equal, run.states, states)
  assert run.member_state(arms[0].members[1].index).diverged_step == 4


def test_a_failing_run_still_closes_its_checkpoints_and_metrics(tmp_path, monkeypatch):
  closed = []
  def recording(name, close):
    def wrapped(self):
      closed.append(name)
      return close(self)
    return wrapped
  monkeypatch.setattr(ocp.CheckpointManager, "close",
                      recording("manager", ocp.CheckpointManager.close))
  monkeypatch.setattr(workdir_lib.MetricsWriter, "close",
                      recording("writer", workdir_lib.MetricsWriter.close))
  def failing_step(self, dataset, step):
    raise RuntimeError("a step failed")
  monkeypatch.setattr(executor.ArmExecutor, "step", failing_step)
  with pytest.raises(RuntimeError, match="a step failed"):
    loop.train_sweep(tiny_config(), str(tmp_path / "run"))
  assert sorted(closed) == ["manager", "writer"]
  assert checkpoint.available_steps(tmp_path / "run") == [0]  # the save before it finished
