"""Who owns a workdir: the run marker, the lock, and what `--overwrite` may delete.

    DIR/run.json   the marker, written first: {"tool": "bnjax", "format": 1,
                   "run_id": ...}. A directory is a bnjax run's when it has one
                   (or, from before markers, a config.json holding a bnjax
                   config); every checkpoint records the run id.
    DIR/run.lock   an exclusive `fcntl.flock` lock, held by the one process
                   that writes the workdir, with its host, pid and program.
                   The OS releases it when that process ends, however it ends,
                   so a killed run leaves no stale lock.

bnjax writes into a new or empty directory, or into its own run's; a
directory holding anything else is never written and never deleted.
`delete_run` removes exactly what bnjax writes, checkpoints first and the
marker last, so that a kill part-way never leaves checkpoints without the
config.json that says whose they are.

A process holds the lock of each workdir it claimed until `release` or its
end: the lock is an open file, kept in `_held`.
"""

import dataclasses
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
import uuid
from typing import IO, Any

from absl import logging

from bnjax import errors, files

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
FIGURES_DIR = "figures"
ANALYSIS_DIR = "analysis"
CURVES_DIR = "tensorboard"  # event files rewritten from metrics.jsonl (`bnjax.curves`)
# The layout of a run directory; run.json records it.
WORKDIR_FORMAT = 1
# What bnjax's launchers write into a workdir before bnjax starts (`tee -a DIR/log.txt`):
# allowed in a new workdir, never deleted.
LAUNCHER_FILES = ("log.txt",)
# The files bnjax writes at the top of a run directory, deleted in this order after
# checkpoints/, figures/ and analysis/: config.json and the marker last.
RUN_FILES = ("metrics.jsonl", "members.json", "reproduction.md", CONFIG_FILE, RUN_FILE)
_DELETING = "checkpoints.deleting"  # checkpoints/ while --overwrite deletes it
# Sections every bnjax config has: a config.json with them is a bnjax run's.
_CONFIG_SECTIONS = ("model", "data", "sweep", "train")


@dataclasses.dataclass
class _Held:
  """The open lock file of a workdir this process holds, and whether it created the workdir."""

  file: IO
  created: bool


_held: dict[str, _Held] = {}


def _key(workdir: str) -> str:
  return os.path.realpath(workdir)


def holds(workdir: str) -> bool:
  """Whether this process holds `workdir`'s lock."""
  return _key(workdir) in _held


# ------------------------------------------------------------------ the path


def check_path(workdir: str) -> None:
  """Raises WorkdirError unless `workdir` is a directory, or can be made one, that we can write."""
  if not workdir or not workdir.strip():
    raise errors.WorkdirError("--workdir is empty; name the run's directory, e.g."
                              " --workdir=runs/smoke.")
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"{workdir} is a file, not a directory; give --workdir a directory"
                              " path (new or holding a bnjax run).")
  existing = os.path.abspath(workdir)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise errors.WorkdirError(f"{workdir} lies under {existing}, which is a file; choose a"
                              " --workdir whose parents are directories.")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = workdir if existing == os.path.abspath(workdir) else f"{existing}, above {workdir},"
    raise errors.WorkdirError(f"{where} is not writable (no permission, or a read-only file"
                              " system); choose a --workdir you can write, or fix its"
                              " permissions.")


# ---------------------------------------------------------------- the marker


def read_marker(workdir: str) -> dict[str, Any] | None:
  """run.json's record if `workdir` has a bnjax marker, else None."""
  try:
    with open(os.path.join(workdir, RUN_FILE)) as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return None
  return marker if isinstance(marker, dict) and marker.get("tool") == "bnjax" else None


def run_id(workdir: str) -> str | None:
  """The id of the run in `workdir` (None for a run from before run ids)."""
  marker = read_marker(workdir)
  return None if marker is None else marker.get("run_id")


def write_marker(workdir: str) -> str:
  """Marks `workdir` as a new bnjax run; returns its new run id."""
  new_id = uuid.uuid4().hex
  with files.replaced(os.path.join(workdir, RUN_FILE)) as f:
    json.dump({"tool": "bnjax", "format": WORKDIR_FORMAT, "run_id": new_id}, f)
    f.write("\n")
  return new_id


def _holds_bnjax_config(workdir: str) -> bool:
  """Whether config.json is a bnjax config: a run from before markers."""
  try:
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and all(s in config for s in _CONFIG_SECTIONS)


def _entries(workdir: str) -> set[str]:
  """What `workdir` holds, less the lock and the launchers' log."""
  if not os.path.isdir(workdir):
    return set()
  return set(os.listdir(workdir)) - {LOCK_FILE, *LAUNCHER_FILES}


def is_run(workdir: str) -> bool:
  """Whether `workdir` is a bnjax run directory (marked, or an older run's config.json)."""
  return read_marker(workdir) is not None or _holds_bnjax_config(workdir)


def outputs(workdir: str) -> list[str]:
  """The names in `workdir` that a bnjax run writes, but the marker."""
  names = {CHECKPOINT_DIR, _DELETING, FIGURES_DIR, ANALYSIS_DIR, CURVES_DIR,
           *RUN_FILES} - {RUN_FILE}
  return sorted(_entries(workdir) & names)


def check_owned(workdir: str) -> None:
  """Raises WorkdirError if `workdir` holds something but no bnjax run: bnjax never touches it."""
  entries = _entries(workdir)
  if entries and not is_run(workdir):
    shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
    raise errors.WorkdirError(
        f"{workdir} is not empty ({shown}) and holds no bnjax run (no {RUN_FILE}), so bnjax"
        " will neither write nor delete anything there; choose a new or empty --workdir.")


# ------------------------------------------------------------------ the lock


def _holder() -> dict[str, Any]:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  program = spec.name if spec is not None else os.path.basename(sys.argv[0] if sys.argv else "")
  return {"host": socket.gethostname(), "pid": os.getpid(), "program": program or "python",
          "since": datetime.datetime.now().isoformat(timespec="seconds")}


def _describe(record: str) -> str:
  """'bnjax.main (pid 12 on host h, since ...)' from a lock file's content."""
  try:
    holder = json.loads(record)
    return (f"{holder['program']} (pid {holder['pid']} on host {holder['host']}, since"
            f" {holder['since']})")
  except (ValueError, KeyError, TypeError):
    return "another process"


def acquire(workdir: str) -> None:
  """Creates `workdir` if needed and takes its lock; WorkdirError naming the holder if taken.

  Re-entrant: a workdir this process holds is left as it is.
  """
  if holds(workdir):
    return
  created = not os.path.isdir(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    while True:
      f = open(path, "a+")  # never truncates the holder's record
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        f.seek(0)
        holder = _describe(f.read())
        f.close()
        raise errors.WorkdirError(
            f"{workdir} is in use by {holder}; wait for it to end or stop it, then rerun"
            " (a process that has died holds no lock).") from None
      except OSError as e:  # a file system without locks
        logging.warning("Cannot lock %s (%s): nothing stops another process writing this"
                        " workdir at the same time.", path, e.strerror)
      if _same_file(f, path):  # else a releasing process removed it: lock the new one
        break
      f.close()
    f.seek(0)
    f.truncate()
    json.dump(_holder(), f)
    f.write("\n")
    f.flush()
  except OSError as e:
    raise errors.WorkdirError(files.write_failure(path, e)) from None
  _held[_key(workdir)] = _Held(f, created)


def _same_file(f: IO, path: str) -> bool:
  try:
    return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
  except FileNotFoundError:
    return False


def release(workdir: str) -> None:
  """Releases `workdir`'s lock if this process holds it.

  A workdir that `acquire` created and nothing was written into is removed
  again (a run that failed before its first file leaves no directory).
  """
  held = _held.pop(_key(workdir), None)
  if held is None:
    return
  lock = os.path.join(workdir, LOCK_FILE)
  empty = held.created and os.path.isdir(workdir) and os.listdir(workdir) == [LOCK_FILE]
  if empty:
    os.remove(lock)  # before unlocking, so that no one locks the file being removed
  held.file.close()
  if empty:
    try:
      os.rmdir(workdir)
    except OSError:  # someone else's lock file appeared meanwhile
      pass


# ------------------------------------------------------------- --overwrite


def delete_run(workdir: str) -> None:
  """Deletes what bnjax wrote in the run directory `workdir`, keeping anything else.

  Checkpoints go first (renamed away in one step, then removed), the marker
  last; figures/ and analysis/ lose only bnjax's PNG and JSON files.
  """
  if not is_run(workdir):  # never reached through `claim`; a guard for other callers
    raise errors.WorkdirError(f"{workdir} holds no bnjax run; nothing was deleted.")
  checkpoints, deleting = (os.path.join(workdir, n) for n in (CHECKPOINT_DIR, _DELETING))
  if os.path.isdir(checkpoints):
    shutil.rmtree(deleting, ignore_errors=True)
    os.replace(checkpoints, deleting)
  shutil.rmtree(deleting, ignore_errors=True)
  shutil.rmtree(os.path.join(workdir, CURVES_DIR), ignore_errors=True)
  for folder, suffix in ((FIGURES_DIR, ".png"), (ANALYSIS_DIR, ".json")):
    folder = os.path.join(workdir, folder)
    if not os.path.isdir(folder):
      continue
    for name in os.listdir(folder):
      if name.endswith(suffix) or name.endswith(suffix + files.TMP_SUFFIX):
        os.remove(os.path.join(folder, name))
    if not os.listdir(folder):
      os.rmdir(folder)
  for name in RUN_FILES:
    for path in (os.path.join(workdir, name + files.TMP_SUFFIX), os.path.join(workdir, name)):
      if os.path.exists(path):
        os.remove(path)
