"""The files of a run's workdir: config.json, members.json, metrics.jsonl.

    DIR/config.json     the resolved config
    DIR/members.json    one record per member: member, arm fields, lr, seed,
                        status ("running", "trained" or "diverged"),
                        diverged_step (null if it never diverged)
    DIR/metrics.jsonl   one JSON object per line per member per logged step
    DIR/figures/        PNG figures
"""

import json
import math
import os
from collections.abc import Iterable
from typing import Any

import ml_collections

from bnjax import errors

CONFIG_FILE = "config.json"
MEMBERS_FILE = "members.json"
METRICS_FILE = "metrics.jsonl"
FIGURES_DIR = "figures"


def _finite_or_none(value: Any) -> Any:
  """Non-finite floats become null so every line is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


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


def prepare(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates `workdir` and writes config.json, refusing another run's workdir.

  A workdir whose config.json differs from `config` is left untouched.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = config_dict(config)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise errors.WorkdirError(
          f"{path} cannot be read ({e}); use a new --workdir.") from None
    changed = differing_fields(old, new)
    if changed:
      raise errors.WorkdirError(
          f"{workdir} holds a run with a different config (fields differ:"
          f" {', '.join(changed)}); use a new --workdir or rerun with the same config.")
  os.makedirs(os.path.join(workdir, FIGURES_DIR), exist_ok=True)
  _write_json(path, new)


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
  """Appends metric records, one JSON object per line, flushed per write."""

  def __init__(self, workdir: str, truncate: bool = True):
    self._file = open(os.path.join(workdir, METRICS_FILE), "w" if truncate else "a")

  def write(self, records: Iterable[dict[str, Any]]) -> None:
    for record in records:
      clean = {k: _finite_or_none(v) for k, v in record.items()}
      self._file.write(json.dumps(clean) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def figure_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, FIGURES_DIR, f"{name}.png")
