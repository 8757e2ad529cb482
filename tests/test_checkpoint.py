"""Runs that last: kill/resume is bit-exact, SIGTERM saves, workdirs are never clobbered."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import checkpoint, errors, sweep, train

from conftest import REPO, tiny_config

NUM_STEPS = 16
ARGS = ["--config=configs/lr_sweep.py:smoke", f"--config.train.num_steps={NUM_STEPS}",
        "--config.sweep.lrs=(0.05,0.3)", "--config.sweep.seeds=(0,)",
        "--config.train.batch_size=8", "--config.data.synthetic_train_size=256",
        "--config.data.synthetic_test_size=64", "--config.eval_batch_size=64",
        "--config.log_every=1", "--config.eval_every=4", "--config.checkpoint.every=3"]


def _command(workdir, *extra):
  return [sys.executable, "-m", "bnjax.main", f"--workdir={workdir}", *ARGS, *extra]


def _env():
  """The runs inherit the session's compilation cache (see conftest.py)."""
  return {**os.environ, "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1"}


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
  """Starts a run and sends `sig` once it has logged step `at_step`."""
  process = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while _logged_step(workdir) < at_step and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(sig)
  stdout, stderr = process.communicate(timeout=300)
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


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
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_killed_then_preempted_run_resumes_bit_identical(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  kill_at, term_at = np.random.default_rng(0).integers([2, 9], [8, 14])
  killed = _start_and_signal(workdir, int(kill_at), signal.SIGKILL)
  assert killed.returncode == -signal.SIGKILL
  preempted = _start_and_signal(workdir, int(term_at), signal.SIGTERM)
  assert preempted.returncode == 143, preempted.stderr[-3000:]
  assert "rerun the same command to resume" in preempted.stderr
  saved = checkpoint.available_steps(workdir)
  assert max(saved) >= term_at  # saved at the step SIGTERM arrived, not at a cadence step
  resumed = _run(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming" in resumed.stderr
  for name in ("metrics.jsonl", "members.json", "config.json"):
    assert (workdir / name).read_bytes() == (uninterrupted / name).read_bytes(), name
  _assert_same_final_state(uninterrupted, workdir)


def test_first_last_and_latest_checkpoints_are_kept(uninterrupted):
  # every=3, keep=3: the latest three saves plus the first and the last step.
  assert checkpoint.available_steps(uninterrupted) == [0, 12, 15, 16]


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


def test_example_script_inspects_a_member(uninterrupted):
  result = subprocess.run([sys.executable, "examples/inspect_member.py", str(uninterrupted)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"lr=0.3) at step {NUM_STEPS}: test accuracy" in result.stdout
  assert "stem/conv/kernel" in result.stdout


def test_loaded_members_of_a_scanned_model_have_one_entry_per_block():
  config = tiny_config()
  config.model.update(depth=14, scan_blocks=True)  # two blocks a stage: the second is scanned
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
