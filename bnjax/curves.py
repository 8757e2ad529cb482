"""Live curves: the metrics records also as TensorBoard event files, one run per member.

    DIR/tensorboard/<arm fields>,lr=<lr>,seed=<seed>/events.out.tfevents...

View them with `tensorboard --logdir DIR/tensorboard` (`pip install tensorboard`):
the members are runs, so their curves overlay in each chart (train/loss,
train/accuracy, test/accuracy, learning_rate, ...). Written with
tensorboardX, the `tensorboard` extra (`pip install "bnjax[tensorboard]"`);
without it a run logs one line saying so and writes metrics.jsonl alone.

metrics.jsonl is the source of truth, and the event files follow it: when
a run starts or resumes, `open_writer` deletes DIR/tensorboard and writes
again every record the (resumed) metrics.jsonl kept. A killed run may have
logged steps past its last checkpoint; TensorBoard would draw those and the
resumed run's points at the same steps both (or purge by rules of its own),
so the rewrite makes every member's curve hold each step once, as
metrics.jsonl does. A TensorBoard already open shows it after a reload.
"""

import os
import shutil
from collections.abc import Iterable, Sequence
from typing import Any

from absl import logging

from bnjax import ownership, workdir as workdir_lib

try:
  import tensorboardX
except ImportError:  # the optional `tensorboard` extra
  tensorboardX = None

CURVES_DIR = ownership.CURVES_DIR
# Record fields that say which member a record is about, not what was measured.
_IDENTITY = ("step", "member", "lr", "seed")


def run_name(record: dict[str, Any], fields: Sequence[str]) -> str:
  """The TensorBoard run of a record's member, e.g. "norm=batch,lr=0.05,seed=0"."""
  return ",".join([*(f"{f}={record[f]}" for f in fields), f"lr={record['lr']:g}",
                   f"seed={record['seed']}"])


def tag(metric: str) -> str:
  """"train_loss" -> "train/loss", so that TensorBoard groups train and test charts."""
  head, _, rest = metric.partition("_")
  return f"{head}/{rest}" if head in ("train", "test") and rest else metric


class CurveWriter:
  """Writes metrics records as scalars into one TensorBoard run per member."""

  def __init__(self, directory: str, fields: Sequence[str]):
    self._directory, self._fields = directory, tuple(fields)
    self._writers: dict[str, Any] = {}

  def write(self, records: Iterable[dict[str, Any]]) -> None:
    """Adds every numeric metric of `records` at its step; flushes, so curves are live."""
    touched = set()
    for record in records:
      name = run_name(record, self._fields)
      writer = self._writers.get(name)
      if writer is None:
        writer = self._writers[name] = tensorboardX.SummaryWriter(
            os.path.join(self._directory, name))
      for key, value in record.items():
        if key not in _IDENTITY and key not in self._fields and isinstance(value, (int, float)):
          writer.add_scalar(tag(key), value, record["step"])
      touched.add(name)
    for name in touched:
      self._writers[name].flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


def open_writer(workdir: str, fields: Sequence[str]) -> CurveWriter | None:
  """A CurveWriter for `workdir` holding its metrics.jsonl so far; None without tensorboardX.

  Call it after metrics.jsonl is opened for the run (`workdir.MetricsWriter`),
  which keeps exactly the records a resumed run goes on from.
  """
  if tensorboardX is None:
    logging.info("For live curves in TensorBoard, pip install 'bnjax[tensorboard]'"
                 " (tensorboardX) and rerun; metrics.jsonl has the same numbers.")
    return None
  directory = os.path.join(workdir, CURVES_DIR)
  shutil.rmtree(directory, ignore_errors=True)
  writer = CurveWriter(directory, fields)
  writer.write(workdir_lib.read_metrics(workdir))
  logging.info("Live curves: tensorboard --logdir %s", directory)
  return writer
