"""A workdir belongs to one run: its lock, its marker, --overwrite, atomic files, bad paths."""

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from matplotlib.figure import Figure

from bnjax import analyze, checkpoint, errors, executor, files, loop, ownership, plots, sweep
from bnjax import workdir as workdir_lib

from conftest import REPO, tiny_config

TESTS = os.path.dirname(os.path.abspath(__file__))


def _hashes(root) -> dict[str, str]:
  """Every file under `root` (the lock file aside) and its SHA-256."""
  hashes = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      if name != ownership.LOCK_FILE:
        with open(path, "rb") as f:
          hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return hashes


def _make_run(workdir, config) -> None:
  """A bnjax run of `config` in `workdir` as training leaves it: marker, config.json,
  members.json, metrics.jsonl, a figure and a checkpoint at step 0 (zeros); lock released."""
  workdir = str(workdir)
  workdir_lib.prepare(workdir, config)
  workdir_lib.write_members(workdir, [])
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE), "w") as f:
    f.write(json.dumps({"step": 0, "member": 0}) + "\n")
  plots.save(Figure(), workdir_lib.figure_path(workdir, "accuracy"), "accuracy")
  abstract = checkpoint.abstract_arms(sweep.make_arms(config), config)
  with checkpoint.make_manager(workdir, config) as manager:
    checkpoint.save(manager, 0, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract),
                    {"step": 0, "last_log_step": 0})
  ownership.release(workdir)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
  """A finished-looking run of the tiny config, copied by the tests that change it."""
  workdir = tmp_path_factory.mktemp("template") / "run"
  _make_run(workdir, tiny_config())
  return workdir


@pytest.fixture
def run_dir(template, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(template, workdir)
  yield workdir
  ownership.release(str(workdir))


def _other_config():
  config = tiny_config()
  config.train.weight_decay = 5e-4
  return config


# ------------------------------------------------------------ 1. the lock

HOLDER = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from bnjax import workdir
workdir.prepare({workdir!r}, tiny_config())
print("holding", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_while_a_run_holds_the_workdir(run_dir):
  """Two real processes: while one holds the workdir, training, --overwrite with another
  config and analyze are refused naming its pid, and nothing changes; once it is
  SIGKILLed, the workdir is free again (no stale lock)."""
  holder = subprocess.Popen(
      [sys.executable, "-c", HOLDER.format(tests=TESTS, workdir=str(run_dir))],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "holding", holder.stderr.read()[-3000:]
    before = _hashes(run_dir)
    in_use = f"{run_dir} is in use by .* \\(pid {holder.pid} on host "
    with pytest.raises(errors.WorkdirError, match=in_use):
      loop.train_sweep(tiny_config(), str(run_dir))
    with pytest.raises(errors.WorkdirError, match=in_use):
      workdir_lib.claim(str(run_dir), _other_config(), overwrite=True)
    with pytest.raises(errors.WorkdirError, match=in_use):
      analyze.analyze(str(run_dir), analyses=())
    assert _hashes(run_dir) == before
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  workdir_lib.claim(str(run_dir), _other_config(), overwrite=True)
  assert not (run_dir / "checkpoints").exists()


def test_the_lock_is_released_and_a_directory_it_created_removed(tmp_path):
  workdir = str(tmp_path / "new")
  workdir_lib.claim(workdir, tiny_config())
  assert ownership.holds(workdir) and os.listdir(workdir) == [ownership.LOCK_FILE]
  workdir_lib.claim(workdir, tiny_config())  # re-entrant in the holding process
  ownership.release(workdir)  # nothing was written: a failed start leaves no directory
  assert not ownership.holds(workdir) and not os.path.exists(workdir)


# ------------------------------------ 2. checkpoints without their config.json


def test_checkpoints_without_their_config_json_are_never_adopted(run_dir):
  (run_dir / "config.json").unlink()
  before = _hashes(run_dir)
  with pytest.raises(errors.WorkdirError,
                     match="holds a bnjax run's outputs .*checkpoints.* but not its config.json"):
    loop.train_sweep(_other_config(), str(run_dir))
  assert _hashes(run_dir) == before


def _interrupted_at(count: int, monkeypatch):
  """Makes the `count`-th file-system deletion of ownership.delete_run raise, as a kill would."""
  calls = []
  def killing(real):
    def wrapped(*args, **kwargs):
      calls.append(args)
      if len(calls) == count:
        raise KeyboardInterrupt
      return real(*args, **kwargs)
    return wrapped
  for module, name in ((ownership.os, "remove"), (ownership.os, "replace"),
                       (ownership.os, "rmdir"), (ownership.shutil, "rmtree")):
    monkeypatch.setattr(module, name, killing(getattr(module, name)))
  return calls


def test_a_kill_anywhere_inside_overwrite_never_leaves_checkpoints_without_config(
    template, tmp_path, monkeypatch):
  """--overwrite stopped after each of its deletions in turn: checkpoints never outlive
  config.json, and another config's run never resumes what is left."""
  count, finished = 0, False
  while not finished:
    count += 1
    workdir = tmp_path / f"run{count}"
    shutil.copytree(template, workdir)
    with monkeypatch.context() as patch:
      _interrupted_at(count, patch)
      try:
        workdir_lib.claim(str(workdir), _other_config(), overwrite=True)
        finished = True
      except KeyboardInterrupt:
        pass
    ownership.release(str(workdir))
    left = set(os.listdir(workdir))
    if left & {"checkpoints", "checkpoints.deleting"}:
      assert "config.json" in left, (count, left)
    try:
      workdir_lib.prepare(str(workdir), _other_config())  # without --overwrite
      assert not left & {"checkpoints", "checkpoints.deleting", "config.json"}, (count, left)
      assert checkpoint.available_steps(workdir) == []
    except errors.WorkdirError as e:
      assert "--overwrite" in str(e)
    ownership.release(str(workdir))
  assert count > 5  # the deletions were each interrupted in turn


def test_a_checkpoint_of_another_run_is_refused(run_dir, tmp_path):
  other = tmp_path / "other"
  _make_run(other, tiny_config())
  shutil.rmtree(run_dir / "checkpoints" / "0")
  shutil.copytree(other / "checkpoints" / "0", run_dir / "checkpoints" / "0")
  with pytest.raises(errors.WorkdirError, match="checkpoints/0 belongs to another run"):
    checkpoint.load(run_dir)


# ------------------------------------------- 3. directories bnjax did not write


@pytest.mark.parametrize("files_there", [
    {"config.json": '{"lr": 0.1}', "checkpoints/model.pt": "x", "figures/fig1.png": "x",
     "analysis/notes.md": "x"},
    {"metrics.jsonl": "x\n", "members.json": "[]", "figures/accuracy.png": "x"},
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_that_is_no_bnjax_run_is_never_written_nor_deleted(
    tmp_path, files_there, overwrite):
  workdir = tmp_path / "theirs"
  for name, text in files_there.items():
    (workdir / name).parent.mkdir(parents=True, exist_ok=True)
    (workdir / name).write_text(text)
  before = _hashes(workdir)
  with pytest.raises(errors.WorkdirError, match="holds no bnjax run .*choose a new or empty"):
    workdir_lib.claim(str(workdir), tiny_config(), overwrite=overwrite)
  with pytest.raises(errors.WorkdirError, match="holds no bnjax run"):
    loop.train_sweep(tiny_config(), str(workdir))
  assert _hashes(workdir) == before and sorted(os.listdir(workdir)) == sorted(
      {name.split("/")[0] for name in files_there})


def test_overwrite_deletes_what_bnjax_wrote_and_nothing_else(run_dir):
  (run_dir / "notes.txt").write_text("mine")
  (run_dir / "figures" / "mine.svg").write_text("mine")
  (run_dir / "log.txt").write_text("the launcher's log")
  workdir_lib.claim(str(run_dir), _other_config(), overwrite=True)
  assert sorted(os.listdir(run_dir)) == ["figures", "log.txt", "notes.txt", "run.lock"]
  assert os.listdir(run_dir / "figures") == ["mine.svg"]


def test_a_launchers_log_does_not_make_a_new_workdir_foreign(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "log.txt").write_text("started\n")
  workdir_lib.prepare(str(workdir), tiny_config())
  assert ownership.read_marker(str(workdir))["tool"] == "bnjax"
  ownership.release(str(workdir))


def test_an_empty_workdir_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.WorkdirError, match="--workdir is empty"):
    loop.train_sweep(tiny_config(), "")
  with pytest.raises(errors.WorkdirError, match="--workdir is empty"):
    analyze.analyze("", analyses=())
  assert os.listdir(tmp_path) == []


# ---------------------------------------------------- 6. bad paths and files


def test_a_workdir_that_is_a_file_or_under_one_is_one_sentence(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  for workdir, message in ((a_file, "is a file, not a directory"),
                           (a_file / "run", f"lies under {a_file}, which is a file")):
    with pytest.raises(errors.WorkdirError, match=message):
      workdir_lib.claim(str(workdir), tiny_config())
    with pytest.raises(errors.WorkdirError, match=message):
      analyze.analyze(str(workdir), analyses=())
  assert os.listdir(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_workdir_that_is_not_writable_is_one_sentence(run_dir, tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  run_dir.chmod(0o500)
  try:
    with pytest.raises(errors.WorkdirError, match=f"{locked}, above {locked}/run, is not writable"):
      workdir_lib.claim(str(locked / "run"), tiny_config())
    with pytest.raises(errors.WorkdirError, match=f"{run_dir} is not writable"):
      analyze.analyze(str(run_dir), analyses=())
  finally:
    locked.chmod(0o700)
    run_dir.chmod(0o700)


def test_a_config_json_that_is_no_object_is_one_sentence(run_dir):
  (run_dir / "config.json").write_text("[1, 2]\n")
  for attempt in (lambda: workdir_lib.claim(str(run_dir), tiny_config()),
                  lambda: analyze.analyze(str(run_dir), analyses=()),
                  lambda: checkpoint.load(run_dir)):
    with pytest.raises(errors.WorkdirError, match="config.json holds a JSON list, not a bnjax"):
      attempt()


def test_config_json_is_strict_json_and_reads_back_its_infinities(tmp_path):
  config = tiny_config()
  assert config.train.max_loss == math.inf
  workdir_lib.prepare(str(tmp_path), config)
  ownership.release(str(tmp_path))
  def refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")
  with open(tmp_path / "config.json") as f:
    assert json.load(f, parse_constant=refuse)["train"]["max_loss"] == "Infinity"
  assert checkpoint.read_config(tmp_path).train.max_loss == math.inf
  workdir_lib.prepare(str(tmp_path), config)  # the same config: it resumes
  ownership.release(str(tmp_path))


def test_configs_are_compared_nan_safely():
  nan = float("nan")
  assert workdir_lib.differing_fields({"a": nan, "b": [1.0, nan]}, {"a": nan, "b": [1.0, nan]}) == []
  assert workdir_lib.differing_fields({"a": nan}, {"a": 1.0}) == ["a"]


def test_a_cut_last_metrics_line_is_cut_back_on_resume_and_skipped_when_read(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "member": 0}\n{"step": 2, "member": 0}\n{"step": 4, "mem')
  assert [r["step"] for r in workdir_lib.read_metrics(str(tmp_path))] == [0, 2]
  assert "ends in a line cut short" in caplog.text
  workdir_lib.MetricsWriter(str(tmp_path), keep_through_step=4).close()
  assert "cut back to the last whole line" in caplog.text
  assert path.read_text() == '{"step": 0, "member": 0}\n{"step": 2, "member": 0}\n'
  path.write_text('{"step": 0}\n{"st\n{"step": 2}\n')
  with pytest.raises(errors.WorkdirError, match="metrics.jsonl line 2 is not JSON"):
    workdir_lib.read_metrics(str(tmp_path))


# --------------------------------------------- 7. atomic files, a full disk


def test_a_figure_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  """A kill while drawing (here: an interrupt half-way through the PNG) leaves the old file."""
  path = str(tmp_path / "accuracy.png")
  plots.save(Figure(), path, "before")
  before = _hashes(tmp_path)
  def half_then_killed(fig, f, **kwargs):
    f.write(b"\x89PNG half")
    raise KeyboardInterrupt
  monkeypatch.setattr(Figure, "savefig", half_then_killed)
  with pytest.raises(KeyboardInterrupt):
    plots.save(Figure(), path, "after")
  assert _hashes(tmp_path) == before


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
  if not os.path.exists("/dev/full"):
    pytest.skip("needs /dev/full")
  path = tmp_path / "members.json"
  path.write_text("[]\n")
  os.symlink("/dev/full", f"{path}{files.TMP_SUFFIX}")  # every write to it: ENOSPC
  with pytest.raises(errors.WorkdirError,
                     match=f"Writing {path} failed: the disk is full .*rerun the same command"):
    workdir_lib.write_members(str(tmp_path), [{"member": 0}])
  assert path.read_text() == "[]\n" and os.listdir(tmp_path) == ["members.json"]


def test_a_failed_checkpoint_save_is_one_sentence_and_keeps_the_saved_ones(tmp_path, monkeypatch):
  """Orbax reports a failed background write (a full disk) at the next save or wait."""
  save = checkpoint.save
  def full_after_step_0(manager, step, *args, **kwargs):
    if step > 0:
      raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device"
                       " [os_error_code='28']")
    return save(manager, step, *args, **kwargs)
  monkeypatch.setattr(checkpoint, "save", full_after_step_0)
  monkeypatch.setattr(executor.ArmExecutor, "step", lambda *args: None)  # nothing to compile
  monkeypatch.setattr(executor.ArmExecutor, "evaluate", lambda *args: {})
  config = tiny_config()
  config.checkpoint.every = 2
  with pytest.raises(errors.WorkdirError, match="Saving a checkpoint into .*checkpoints failed:"
                                                " the disk is full .*rerun the same command"):
    loop.train_sweep(config, str(tmp_path / "run"))
  ownership.release(str(tmp_path / "run"))
  assert checkpoint.available_steps(tmp_path / "run") == [0]


def test_a_file_system_error_is_named_not_raised_as_a_traceback():
  error = OSError(errno.EACCES, "Permission denied")
  assert files.write_failure("/x/y.json", error).startswith(
      "Writing /x/y.json failed: it is not writable (Permission denied);")
