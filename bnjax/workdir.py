"""The files of a run's workdir: config.json, members.json, metrics.jsonl.

    DIR/config.json     the resolved config
    DIR/members.json    one record per member: member, arm fields, lr, seed,
                        status ("running", "trained" or "diverged"),
                        diverged_step (null if it never diverged)
    DIR/metrics.jsonl   one JSON object per line per member per logged step
    DIR/analysis/       <name>.json, the numbers behind each analysis figure
    DIR/figures/        PNG figures
"""

import json
import math
import os
import shutil
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np

from bnjax import distributed, errors

CONFIG_FILE = "config.json"
MEMBERS_FILE = "members.json"
METRICS_FILE = "metrics.jsonl"
FIGURES_DIR = "figures"
ANALYSIS_DIR = "analysis"


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
  with open(f"{path}.tmp", "w") as f:
    json.dump(jsonable(result), f, indent=1, allow_nan=False)
    f.write("\n")
  os.replace(f"{path}.tmp", path)
  return path


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON-compatible data (tuples become lists)."""
  return json.loads(config.to_json())


def differing_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  """Dotted names of the fields whose values differ between two config dicts."""
  names = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      names += differing_fields(a, b, f"{prefix}{key}.")
    elif a != b:
      names.append(f"{prefix}{key}")
  return names


def _changed_fields(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """Fields in which the run in `workdir` differs from `config` ([] if none or no run)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise errors.WorkdirError(
        f"{path} cannot be read ({e}); use a new --workdir or pass --overwrite.") from None
  # Runs from before the mesh existed ran on one device.
  old.setdefault("mesh", {"members": 1, "data": 1, "bn_statistics": "global"})
  changed = differing_fields(old, config_dict(config))
  return [field for field in changed if field not in DEVICE_LAYOUT_FIELDS]


# Fields that say only how the members are laid out over devices, not what is
# computed: a run resumes with another value (e.g. after preemption, on
# another number of devices) to the same numbers.
DEVICE_LAYOUT_FIELDS = ("mesh.members",)


def prepare(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates `workdir` and writes config.json, refusing another run's workdir.

  A workdir whose config.json differs from `config` is left untouched. In a
  multi-process run every process checks and process 0 alone writes.
  """
  changed = _changed_fields(workdir, config)
  if changed:
    raise errors.WorkdirError(
        f"{workdir} holds a run with a different config (fields differ:"
        f" {', '.join(changed)}); use a new --workdir, or pass --overwrite to delete that run.")
  if not distributed.is_writer():
    return
  os.makedirs(os.path.join(workdir, FIGURES_DIR), exist_ok=True)
  _write_json(os.path.join(workdir, CONFIG_FILE), config_dict(config))


def discard_other_run(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Deletes the outputs of a run in `workdir` whose config differs; True if it did.

  Only what bnjax writes is deleted; a run with the same config is kept
  (it resumes).
  """
  try:
    changed = _changed_fields(workdir, config)
  except errors.WorkdirError:
    changed = ["config.json"]
  if changed:
    _delete_run(workdir)
  return bool(changed)


def _delete_run(workdir: str) -> None:
  """Deletes a run's outputs (only the files and folders bnjax writes)."""
  for name in (CONFIG_FILE, MEMBERS_FILE, METRICS_FILE):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)
  for name in ("checkpoints", FIGURES_DIR, ANALYSIS_DIR):
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def _write_json(path: str, obj: Any) -> None:
  """Writes atomically: a reader never sees a half-written file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def write_members(workdir: str, records: list[dict[str, Any]]) -> None:
  _write_json(os.path.join(workdir, MEMBERS_FILE), records)


def read_members(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, MEMBERS_FILE)) as f:
    return json.load(f)


class MetricsWriter:
  """Appends metric records, one JSON object per line, flushed per write.

  A fresh run starts an empty file. A resumed run keeps the lines up to and
  including `keep_through_step` (the step it resumes from) and drops later
  ones, which a killed run wrote after its last checkpoint: the resumed file
  then equals that of an uninterrupted run.
  """

  def __init__(self, workdir: str, keep_through_step: int | None = None):
    path = os.path.join(workdir, METRICS_FILE)
    kept = []
    if keep_through_step is not None and os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f if line.strip() and _complete_line_step(line) is not None
                and _complete_line_step(line) <= keep_through_step]
    with open(f"{path}.tmp", "w") as f:
      f.writelines(kept)
    os.replace(f"{path}.tmp", path)
    self._file = open(path, "a")

  def write(self, records: Iterable[dict[str, Any]]) -> None:
    for record in records:
      clean = {k: _finite_or_none(v) for k, v in record.items()}
      self._file.write(json.dumps(clean) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _complete_line_step(line: str) -> int | None:
  """The step of a metrics line, or None for a line cut short by a kill."""
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError):
    return None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def figure_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, FIGURES_DIR, f"{name}.png")
