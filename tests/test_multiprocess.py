"""A sweep over two processes: the same run, bit for bit, as in one process.

Two CPU processes join one run on localhost, as `bnjax.distributed` starts
them (BNJAX_DISTRIBUTED=1, a coordinator at 127.0.0.1 on a free port,
JAX_NUM_PROCESSES=2, JAX_PROCESS_ID 0 and 1), each with one host device: the
members are sharded over a 2-device mesh that spans both processes, each arm
padded from 3 members to 4. They are compared with one process that trains
every member on its one device.

Every process of both runs has one host device (XLA_FLAGS): XLA:CPU's float
rounding depends on how many host devices a process has (a process with 4
gives other bits than one with 1, whichever mesh it runs; with 2 it happened
to give the same bits as with 1 on a 2-core x86 CPU), but not on the mesh
nor, as these tests show, on how many processes share it. With the same
count per process the runs agree exactly: metrics.jsonl and members.json
byte for byte, and the final states of `checkpoint.load`.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bnjax import checkpoint

from conftest import REPO, SWEEP_ARGS, sweep_env

ARGS = SWEEP_ARGS  # three members per arm: each arm is padded over 2 devices


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, log, *extra, **variables: str) -> subprocess.Popen:
  """Starts `python -m bnjax.main` on one CPU device, its output into the file `log`."""
  with open(log, "w") as out:
    return subprocess.Popen(
        [sys.executable, "-m", "bnjax.main", f"--workdir={workdir}", *ARGS, *extra],
        cwd=REPO, env=sweep_env(**variables), stdout=out, stderr=subprocess.STDOUT)


def _start_two(workdir, logs, *extra) -> list[subprocess.Popen]:
  """Starts the two processes of one run on localhost."""
  address = f"127.0.0.1:{_free_port()}"
  return [_start(workdir, logs / f"process{i}.log", *extra, BNJAX_DISTRIBUTED="1",
                 JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
          for i in range(2)]


def _wait(processes: list[subprocess.Popen], logs: list, returncode: int = 0,
          timeout: float = 300) -> list[str]:
  """Waits for `processes` to end with `returncode`; returns their output.

  Once one ends otherwise, or at `timeout`, those still running are killed
  (they would wait for it in a collective), and the assertion shows its output.
  """
  deadline = time.time() + timeout
  while (any(p.poll() is None for p in processes) and time.time() < deadline
         and all(p.poll() in (None, returncode) for p in processes)):
    time.sleep(0.1)
  for p in processes:
    if p.poll() is None:
      p.kill()
    p.wait()
  outputs = [log.read_text() for log in logs]
  for p, output in zip(processes, outputs):
    assert p.returncode == returncode, output[-3000:]
  return outputs


def _same_outputs(a, b) -> None:
  for name in ("metrics.jsonl", "members.json"):
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
  run_a, run_b = checkpoint.load(a), checkpoint.load(b)
  assert run_a.step == run_b.step == 12
  jax.tree.map(np.testing.assert_array_equal, run_a.states, run_b.states)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_sweep):
  """The sweep in one process (the shared `trained_sweep`), and in two processes."""
  root = tmp_path_factory.mktemp("multiprocess")
  _wait(_start_two(root / "two", root), [root / "process0.log", root / "process1.log"])
  os.symlink(trained_sweep, root / "one")
  return root


def test_two_processes_train_bit_for_bit_as_one(runs):
  _same_outputs(runs / "one", runs / "two")
  assert (runs / "two" / "figures" / "accuracy.png").exists()


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes(runs, tmp_path):
  workdir = tmp_path / "run"
  logs = [tmp_path / "process0.log", tmp_path / "process1.log"]
  processes = _start_two(workdir, tmp_path)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while (not (metrics.exists() and '"step": 4,' in metrics.read_text())
         and all(p.poll() is None for p in processes) and time.time() < deadline):
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)  # process 0 sees no signal of its own
  outputs = _wait(processes, logs, returncode=143)  # errors.Preempted: 128 + SIGTERM
  steps = [re.findall(r"SIGTERM at step (\d+)", output) for output in outputs]
  assert steps[0] == steps[1] and len(steps[0]) == 1, steps
  assert checkpoint.available_steps(workdir)[-1] == int(steps[0][0]) < 12

  outputs = _wait(_start_two(workdir, tmp_path), logs)
  assert all("Resuming" in output for output in outputs)
  _same_outputs(runs / "one", workdir)


def test_every_process_refuses_the_workdir_of_another_run(runs, tmp_path):
  workdir = tmp_path / "other"
  workdir.mkdir()
  shutil.copy(runs / "one" / "config.json", workdir)
  logs = [tmp_path / "process0.log", tmp_path / "process1.log"]
  outputs = _wait(_start_two(workdir, tmp_path, "--config.train.batch_size=16"), logs,
                  returncode=1)
  for output in outputs:
    assert re.search(r"error: .* holds a run with a different config \(fields differ:"
                     r" train.batch_size\)", output), output[-3000:]
  assert sorted(os.listdir(workdir)) == ["config.json"]
