"""TensorBoard curves follow metrics.jsonl: one run per member, each step once, also on resume."""

import glob
import os
import struct

import pytest

from bnjax import curves, workdir as workdir_lib

tensorboardX = pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402  (only with the extra)


def read_curves(workdir) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{run: {tag: [(step, value), ...] in file order}} from the workdir's event files."""
  runs = {}
  for path in sorted(glob.glob(os.path.join(workdir, curves.CURVES_DIR, "*", "events.out.*"))):
    tags = runs.setdefault(os.path.basename(os.path.dirname(path)), {})
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord: length, its CRC, the Event, its CRC
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append((event.step, value.simple_value))
  return runs


def expected_curves(workdir, fields) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """What read_curves should find: every numeric metric of metrics.jsonl, per member."""
  runs = {}
  for record in workdir_lib.read_metrics(workdir):
    tags = runs.setdefault(curves.run_name(record, fields), {})
    for key, value in record.items():
      if key not in ("step", "member", "lr", "seed", *fields) and value is not None:
        tags.setdefault(curves.tag(key), []).append((record["step"], pytest.approx(value)))
  return runs


def _records(steps, members=(0, 1)):
  return [{"step": s, "member": m, "lr": 0.1 * (m + 1), "seed": 0, "norm": "batch",
           "learning_rate": 0.1, "train_loss": 1.0 / (s + 1) + m, "test_accuracy": None}
          for s in steps for m in members]


def test_a_resumed_run_rewrites_the_curves_from_the_kept_metrics(tmp_path):
  """A killed run logged steps 3 and 4 past its checkpoint at 2; the resumed run logs them again."""
  workdir = str(tmp_path)
  writer = workdir_lib.MetricsWriter(workdir)
  board = curves.open_writer(workdir, ("norm",))
  for step in range(5):
    writer.write(_records([step]))
    board.write(_records([step]))
  writer.close()
  board.close()
  assert sorted(read_curves(workdir)) == ["norm=batch,lr=0.1,seed=0", "norm=batch,lr=0.2,seed=0"]

  writer = workdir_lib.MetricsWriter(workdir, keep_through_step=2)
  board = curves.open_writer(workdir, ("norm",))
  resumed = [{**r, "train_loss": r["train_loss"] + 10} for r in _records([3, 4])]
  writer.write(resumed)
  board.write(resumed)
  writer.close()
  board.close()
  found = read_curves(workdir)
  assert found == expected_curves(workdir, ("norm",))
  assert [step for step, _ in found["norm=batch,lr=0.1,seed=0"]["train/loss"]] == [0, 1, 2, 3, 4]
  assert found["norm=batch,lr=0.1,seed=0"]["train/loss"][3][1] == pytest.approx(10.25)


def test_without_tensorboardx_a_run_says_how_to_get_curves(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(curves, "tensorboardX", None)
  workdir_lib.MetricsWriter(str(tmp_path)).close()
  with caplog.at_level("INFO"):
    assert curves.open_writer(str(tmp_path), ("norm",)) is None
  assert "pip install 'bnjax[tensorboard]'" in caplog.text
  assert not os.path.exists(tmp_path / curves.CURVES_DIR)
