"""Processes that end when they should: a command in a process group of its own, killed whole.

bench/gpu.sh runs each row as such a group. At its time limit, or when
bench.gpu_grid is asked to stop, the whole group is killed: the row and
every process it started (the PyTorch baseline, bench.startup's launches).
Every child started through `die_with_parent` is also killed by the kernel
when its parent dies, so a row whose parent is killed outright (SIGKILL)
does not run on holding the GPU.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

MAX_LOG_LINES = 2000  # a process printing more (a warning per step) is cut, with a note


def die_with_parent() -> None:
  """In a child before exec: SIGKILL it when its parent dies (Linux; elsewhere nothing)."""
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def group_members(pgid: int) -> list[int]:
  """Live (not zombie) processes of process group `pgid`, read from /proc (Linux)."""
  pids = []
  for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      if int(fields[2]) == pgid and fields[0] != "Z":
        pids.append(int(entry))
  return pids


def kill_group(pgid: int, log: Callable[[str], None], wait_s: float = 10.0) -> None:
  """SIGKILLs process group `pgid` and waits until none of it is left; logs any that stay."""
  try:
    os.killpg(pgid, signal.SIGKILL)
  except ProcessLookupError:
    return
  deadline = time.time() + wait_s
  while group_members(pgid) and time.time() < deadline:
    time.sleep(0.1)
  if group_members(pgid):
    log(f"warning: processes {group_members(pgid)} of the killed group are still there")


def run_process(command: list[str], env: dict[str, str], timeout_s: float,
                log: Callable[[str], None], cwd: str | None = None) -> tuple[int | None, float]:
  """Runs `command` in a process group of its own, its output to `log`; (exit code, seconds).

  At the timeout, or when this process is asked to stop, the whole group is
  killed (the row and any process it started); the exit code is then None.
  """
  log(f"$ {' '.join(command)}")
  start = time.time()
  process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=die_with_parent)
  pump = threading.Thread(target=_pump, args=(process.stdout, log), daemon=True)
  pump.start()
  try:
    code = process.wait(timeout=max(timeout_s, 0.1))
  except subprocess.TimeoutExpired:
    code = None
  finally:  # also when a signal interrupts the wait
    kill_group(process.pid, log)
    process.wait()
    pump.join(5)
  return code, time.time() - start


def _pump(stream, log: Callable[[str], None]) -> None:
  lines = 0
  for line in stream:
    lines += 1
    if lines <= MAX_LOG_LINES:
      log(line.rstrip("\n"))
    elif lines == MAX_LOG_LINES + 1:
      log(f"[further output of this process is left out of the log after {lines - 1} lines]")
