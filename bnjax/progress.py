"""What a training run says while it runs and when it ends.

Every `log_every` steps: one line with the step, the training speed and the
ETA, then one per arm with its members' mean train loss and accuracy over
the last interval (test accuracy too at eval steps) and how many diverged.
At the end: a table per (arm, rate) of final train and test accuracy and
which members diverged at which step, read from metrics.jsonl and
members.json, the run's files.
"""

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnjax import logs


class Clock:
  """Training speed that leaves out compiling, evaluating and checkpointing.

  The host only dispatches steps, so a step's time is known at a sync
  point. `started` is called once the first step of this process has
  finished (its compile time is logged apart); `trained` right after the
  fetch at a log step, which waits for the steps dispatched since
  `resumed`; `resumed` when the log step's evaluation and saving are done.
  Steps/s is then steps over the time spent between those points; the ETA
  goes by the wall time since `started`, which spreads evaluation and saving
  over the steps.
  """

  def __init__(self):
    self._created = time.perf_counter()
    self._first_step = None
    self._since = 0.0
    self.training_seconds = 0.0

  def started(self, step: int) -> float:
    """The first step is done (`step` completed steps); returns its seconds, compiling included."""
    now = time.perf_counter()
    self._first_step, self._started, self._since = step, now, now
    return now - self._created

  def trained(self) -> None:
    self.training_seconds += time.perf_counter() - self._since

  def resumed(self) -> None:
    self._since = time.perf_counter()

  def line(self, step: int, num_steps: int, images_per_step: int) -> str:
    """E.g. "step 100/600: 5.21 steps/s, 1000 images/s (all members), ETA 0h01m36s"."""
    steps = step - self._first_step
    if steps <= 0 or self.training_seconds <= 0:
      return f"step {step}/{num_steps}"
    rate = steps / self.training_seconds
    eta = (num_steps - step) * (time.perf_counter() - self._started) / steps
    return (f"step {step}/{num_steps}: {rate:.2f} steps/s, {rate * images_per_step:.0f} images/s"
            f" (all members), ETA {logs.duration(eta)}")


def arm_label(model_config: dict[str, Any], fields: Sequence[str]) -> str:
  """E.g. "norm=batch": the fields a sweep varies; "all members" when it varies none."""
  return ", ".join(f"{f}={model_config[f]}" for f in fields) or "all members"


def arm_line(label: str, means: dict[str, np.ndarray] | None, test: dict[str, np.ndarray] | None,
             diverged_M: np.ndarray) -> str:
  """One arm at a log step: its live members' mean train loss and accuracy, and divergences.

  `means` and `test` hold (M,) arrays (None where not fetched at this step);
  members that diverged are left out of the means.
  """
  live = ~np.asarray(diverged_M, bool)
  parts = []
  for source, names in ((means, ("train_loss", "train_accuracy")), (test, ("test_accuracy",))):
    for name in names:
      if source is not None and name in source and live.any():
        parts.append(f"{name.replace('_', ' ')} {_mean(np.asarray(source[name])[live])}")
  parts.append(f"diverged {int((~live).sum())} of {live.size}")
  return f"  {label}: " + ", ".join(parts)


def _mean(values: np.ndarray) -> str:
  finite = values[np.isfinite(values)]
  return f"{finite.mean():.4g}" if finite.size else "nan"


def summary_lines(metrics: list[dict[str, Any]], members: list[dict[str, Any]],
                  fields: Sequence[str]) -> list[str]:
  """The end-of-run table: per (arm, rate), final train and test accuracy and the divergences.

  Accuracies are each member's last logged values (train: the mean over
  the last log interval; test: the last evaluation), averaged over the
  members of the row that did not diverge; a diverged member is listed
  with its seed and the step it diverged at.
  """
  last: dict[int, dict[str, float]] = {}
  for record in metrics:
    for name in ("train_accuracy", "test_accuracy"):
      if record.get(name) is not None:
        last.setdefault(record["member"], {})[name] = record[name]
  rows: dict[tuple, list[dict[str, Any]]] = {}
  for member in members:
    rows.setdefault((*(member[f] for f in fields), member["lr"]), []).append(member)
  header = [*fields, "lr", "trained", "train acc", "test acc", "diverged"]
  table = [header] + [_row(key, group, last) for key, group in rows.items()]
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def _row(key: tuple, group: list[dict[str, Any]], last: dict[int, dict[str, float]]) -> list[str]:
  live = [m for m in group if m["status"] != "diverged"]
  def accuracy(name: str) -> str:
    values = [last.get(m["member"], {}).get(name) for m in live]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return f"{np.mean(values):.3f}" if values else "-"
  diverged = ", ".join(f"seed {m['seed']} at step {m['diverged_step']}"
                       for m in group if m["status"] == "diverged") or "-"
  return [*(str(k) for k in key[:-1]), f"{key[-1]:g}", f"{len(live)} of {len(group)}",
          accuracy("train_accuracy"), accuracy("test_accuracy"), diverged]
