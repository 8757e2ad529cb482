"""The files of a run's workdir: config.json, members.json, metrics.jsonl, and who may write them.

    DIR/run.json        the marker of a bnjax run, written first (`bnjax.ownership`)
    DIR/run.lock        held by the one process writing the workdir
    DIR/config.json     the resolved config (strict JSON: a non-finite number
                        is the string "Infinity", "-Infinity" or "NaN")
    DIR/members.json    one record per member: member, arm fields, lr, seed,
                        status ("running", "trained" or "diverged"),
                        diverged_step (null if it never diverged)
    DIR/metrics.jsonl   one JSON object per line per member per logged step
    DIR/analysis/       <name>.json, the numbers behind each analysis figure
    DIR/figures/        PNG figures

Every file is replaced whole (`bnjax.files`), but metrics.jsonl, which grows
by whole lines.
"""

import json
import math
import os
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from bnjax import distributed, errors, files, ownership

CONFIG_FILE = ownership.CONFIG_FILE
MEMBERS_FILE = "members.json"
METRICS_FILE = "metrics.jsonl"
FIGURES_DIR = ownership.FIGURES_DIR
ANALYSIS_DIR = ownership.ANALYSIS_DIR


def _finite_or_none(value: Any) -> Any:
  """Non-finite floats become null so every line is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def jsonable(value: Any) -> Any:
  """Arrays and numbers as plain JSON data; NaN and +-inf become None."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return jsonable(np.asarray(value).tolist())
  return _finite_or_none(value)


def write_analysis(workdir: str, name: str, result: dict[str, Any]) -> str:
  """Writes DIR/analysis/<name>.json as strict JSON, atomically; returns its path."""
  os.makedirs(os.path.join(workdir, ANALYSIS_DIR), exist_ok=True)
  path = os.path.join(workdir, ANALYSIS_DIR, f"{name}.json")
  _write_json(path, jsonable(result), indent=1)
  return path


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON-compatible data (tuples become lists)."""
  return json.loads(config.to_json())


# Non-finite numbers in config.json (max_loss is +inf by default), as strict JSON has none.
_NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _strict(value: Any) -> Any:
  """`value` with every non-finite float spelled as a string of _NON_FINITE."""
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_strict(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
  return value


def _unstrict(value: Any) -> Any:
  """The inverse of `_strict` (config.json as bnjax wrote it, of any version)."""
  if isinstance(value, dict):
    return {k: _unstrict(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_unstrict(v) for v in value]
  return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def read_config_json(workdir: str) -> dict[str, Any]:
  """config.json of the run in `workdir` as plain data; WorkdirError in one sentence if unusable."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise errors.WorkdirError(f"{path} does not exist; point --workdir at the directory of a"
                              " bnjax run.") from None
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(f"{path} cannot be read ({e}); point --workdir at the directory"
                              " of a bnjax run, or pass --overwrite to start anew.") from None
  if not isinstance(config, dict):
    raise errors.WorkdirError(
        f"{path} holds a JSON {type(config).__name__}, not a bnjax config (a JSON object);"
        " point --workdir at the directory of a bnjax run, or pass --overwrite to start anew.")
  return _unstrict(config)


def _same(a: Any, b: Any) -> bool:
  """Equality in which NaN equals NaN."""
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def differing_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  """Dotted names of the fields whose values differ between two config dicts (NaN = NaN)."""
  names = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      names += differing_fields(a, b, f"{prefix}{key}.")
    elif not _same(a, b):
      names.append(f"{prefix}{key}")
  return names


def _changed_fields(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """Fields in which the run in `workdir` differs from `config` ([] if none or no run)."""
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    return []
  old = read_config_json(workdir)
  # Runs from before the mesh existed ran on one device.
  old.setdefault("mesh", {"members": 1, "data": 1, "bn_statistics": "global"})
  changed = differing_fields(old, config_dict(config))
  return [field for field in changed if field not in DEVICE_LAYOUT_FIELDS]


# Fields that say only how the members are laid out over devices, not what is
# computed: a run resumes with another value (e.g. after preemption, on
# another number of devices) to the same numbers.
DEVICE_LAYOUT_FIELDS = ("mesh.members",)


def _conflict(workdir: str, config: ml_collections.ConfigDict) -> str | None:
  """Why `config`'s run cannot start or resume in the bnjax run dir `workdir`, or None.

  Raises WorkdirError (never deleted, even with --overwrite) for a directory
  that holds something but no bnjax run.
  """
  ownership.check_owned(workdir)
  try:
    changed = _changed_fields(workdir, config)
  except errors.WorkdirError as e:
    return str(e)
  if changed:
    return (f"{workdir} holds a run with a different config (fields differ:"
            f" {', '.join(changed)}); use a new --workdir, or pass --overwrite to delete that run.")
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)) and ownership.outputs(workdir):
    return (f"{workdir} holds a bnjax run's outputs ({', '.join(ownership.outputs(workdir))})"
            f" but not its {CONFIG_FILE}, so whose they are is unknown; use a new --workdir,"
            " or pass --overwrite to delete them.")
  return None


def _agreed(claim_as_writer) -> None:
  """Runs `claim_as_writer` in the writer; every process raises the WorkdirError it raised.

  A collective in a multi-process run (every process must call it): the
  other processes stop with the writer's sentence, and go on only once the
  writer has finished.
  """
  message = None
  if distributed.is_writer():
    try:
      claim_as_writer()
    except errors.WorkdirError as e:
      message = str(e)
  message = distributed.first_message(message)
  if message is not None:
    raise errors.WorkdirError(message)


def claim(workdir: str, config: ml_collections.ConfigDict, overwrite: bool = False) -> None:
  """Makes this process the one writer of `workdir` for `config`'s run, or raises WorkdirError.

  The directory must be new, empty, or a bnjax run: with the same config
  (it resumes), or, with `overwrite`, another run, whose outputs are then
  deleted. Nothing is created or changed before every check has passed; the
  lock is held until `ownership.release` or the process ends. In a
  multi-process run process 0 claims and the others stop with it.
  """
  def as_writer() -> None:
    ownership.check_path(workdir)
    conflict = _conflict(workdir, config)
    if conflict and not overwrite:
      raise errors.WorkdirError(conflict)
    ownership.acquire(workdir)
    conflict = _conflict(workdir, config)  # again: now no other process can change it
    if conflict and not overwrite:
      raise errors.WorkdirError(conflict)
    if conflict:
      ownership.delete_run(workdir)
      logging.warning("Deleted the earlier run's outputs in %s (--overwrite).", workdir)
  _agreed(as_writer)


def claim_existing(workdir: str) -> None:
  """Makes this process the one writer of the existing bnjax run in `workdir` (for analyses)."""
  def as_writer() -> None:
    ownership.check_path(workdir)
    if not os.path.isdir(workdir):
      raise errors.WorkdirError(f"{workdir} does not exist; point --workdir at the directory of"
                                " a bnjax run.")
    ownership.check_owned(workdir)
    read_config_json(workdir)
    ownership.acquire(workdir)
  _agreed(as_writer)


def prepare(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Claims `workdir` (see `claim`), then marks a new run and writes config.json.

  A workdir whose config.json differs from `config` is left untouched. In a
  multi-process run process 0 alone writes.
  """
  claim(workdir, config)
  if distributed.is_writer():
    fresh = not os.path.exists(os.path.join(workdir, CONFIG_FILE))
    if fresh or ownership.read_marker(workdir) is None:  # a new run, or one from before markers
      ownership.write_marker(workdir)
    _write_json(os.path.join(workdir, CONFIG_FILE), _strict(config_dict(config)))
    os.makedirs(os.path.join(workdir, FIGURES_DIR), exist_ok=True)
  distributed.barrier("bnjax prepare")


def _write_json(path: str, obj: Any, indent: int = 2) -> None:
  """Writes strict JSON atomically: a reader never sees a half-written file."""
  with files.replaced(path) as f:
    json.dump(obj, f, indent=indent, allow_nan=False)
    f.write("\n")


def write_members(workdir: str, records: list[dict[str, Any]]) -> None:
  _write_json(os.path.join(workdir, MEMBERS_FILE), jsonable(records))


def _read_json(path: str, what: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise errors.WorkdirError(
        f"{path} is missing, so {what}; rerun the run's training command on this --workdir"
        " (it resumes and writes it again).") from None
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(f"{path} cannot be read ({e}), so {what}; rerun the run's"
                              " training command on this --workdir to write it again.") from None


def read_members(workdir: str) -> list[dict[str, Any]]:
  members = _read_json(os.path.join(workdir, MEMBERS_FILE), "the run's members are unknown")
  if not isinstance(members, list):
    raise errors.WorkdirError(f"{os.path.join(workdir, MEMBERS_FILE)} holds no list of members;"
                              " rerun the run's training command on this --workdir.")
  return members


class MetricsWriter:
  """Appends metric records, one JSON object per line, flushed per write.

  A fresh run starts an empty file. A resumed run keeps the lines up to and
  including `keep_through_step` (the step it resumes from) and drops later
  ones, which a killed run wrote after its last checkpoint, and a last line
  cut short by the kill: the resumed file then equals that of an
  uninterrupted run.
  """

  def __init__(self, workdir: str, keep_through_step: int | None = None):
    self._path = os.path.join(workdir, METRICS_FILE)
    kept = []
    if keep_through_step is not None and os.path.exists(self._path):
      with open(self._path) as f:
        lines = [line for line in f if line.strip()]
      steps = [_complete_line_step(line) for line in lines]
      if steps and steps[-1] is None:
        logging.warning("%s ended in a line cut short (%d bytes); cut back to the last whole"
                        " line.", self._path, len(lines[-1]))
      kept = [line for line, step in zip(lines, steps)
              if step is not None and step <= keep_through_step]
    with files.replaced(self._path) as f:
      f.writelines(kept)
    self._file = open(self._path, "a")

  def write(self, records: Iterable[dict[str, Any]]) -> None:
    try:
      for record in records:
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
      self._file.flush()
    except OSError as e:
      raise errors.WorkdirError(files.write_failure(self._path, e)) from None

  def close(self) -> None:
    try:
      self._file.close()
    except OSError as e:
      raise errors.WorkdirError(files.write_failure(self._path, e)) from None


def _complete_line_step(line: str) -> int | None:
  """The step of a metrics line, or None for a line cut short by a kill."""
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError, TypeError):
    return None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """metrics.jsonl's records; a last line cut short (a run killed while writing) is skipped."""
  path = os.path.join(workdir, METRICS_FILE)
  try:
    with open(path) as f:
      lines = [line for line in f.read().splitlines() if line.strip()]
  except OSError as e:
    raise errors.WorkdirError(f"{path} cannot be read ({e.strerror}); rerun the run's training"
                              " command on this --workdir.") from None
  records = []
  for number, line in enumerate(lines, 1):
    try:
      records.append(json.loads(line))
    except ValueError:
      if number < len(lines):
        raise errors.WorkdirError(f"{path} line {number} is not JSON; the file is damaged:"
                                  " rerun the run's training from a new --workdir.") from None
      logging.warning("%s ends in a line cut short (a run stopped while writing it); skipped.",
                      path)
  return records


def figure_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, FIGURES_DIR, f"{name}.png")
