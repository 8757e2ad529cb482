"""What the logs say: libraries' chatter only when asked for, progress, the end-of-run table."""

import logging
import os

import numpy as np
import orbax.checkpoint
import pytest
from absl import logging as absl_logging

from bnjax import checkpoint, config as config_lib, logs, progress

from conftest import tiny_config

_ORBAX_FILE = os.path.join(os.path.dirname(orbax.checkpoint.__file__), "checkpoint_manager.py")


def _record(level: int, msg: str, pathname: str = _ORBAX_FILE) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, msg, (), None)


@pytest.fixture
def verbosity():
  """absl's set_verbosity, with the absl logger's own level put back afterwards."""
  absl_logger = logging.getLogger("absl")
  verbosity, level = absl_logging.get_verbosity(), absl_logger.level
  yield absl_logging.set_verbosity
  absl_logging.set_verbosity(verbosity)
  absl_logger.setLevel(level)


def test_library_chatter_shows_only_when_asked_for(verbosity):
  noise = logs.LibraryNoise()
  verbosity(absl_logging.INFO)
  assert not noise.filter(_record(logging.INFO, "Finished saving checkpoint"))
  assert not noise.filter(_record(logging.WARNING, "Given directory is read only=%s"))
  assert noise.filter(_record(logging.WARNING, "Something Orbax did not expect"))
  assert noise.filter(_record(logging.INFO, "step 25/600", pathname=checkpoint.__file__))
  verbosity(absl_logging.DEBUG)  # -v=1
  assert noise.filter(_record(logging.INFO, "Finished saving checkpoint"))
  assert noise.filter(_record(logging.WARNING, "Given directory is read only=%s"))


def test_opening_a_run_read_only_warns_about_nothing(tmp_path, caplog):
  """A script's `checkpoint.load` used to print four Orbax warnings per load."""
  config = tiny_config()
  config_lib.validate(config)
  with caplog.at_level(logging.INFO):
    checkpoint.make_manager(str(tmp_path), config).close()
    checkpoint.make_manager(str(tmp_path), config, read_only=True).close()
  assert [r.getMessage() for r in caplog.records if "orbax" in r.pathname] == []


def test_progress_counts_members_and_takes_the_median_time_for_the_eta(caplog, monkeypatch):
  clock = iter([0.0, 10.0, 11.0, 12.0])  # the first item carries its compile time
  monkeypatch.setattr(logs.time, "perf_counter", lambda: next(clock))
  meter = logs.Progress("sgd_noise", 5)
  with caplog.at_level(logging.INFO):
    for name in ("a", "b", "c"):
      meter.done(name)
  assert [r.getMessage() for r in caplog.records] == [
      "sgd_noise 1/5 (10.0 s, ETA 0h00m40s): a",
      "sgd_noise 2/5 (1.0 s, ETA 0h00m16s): b",
      "sgd_noise 3/5 (1.0 s, ETA 0h00m02s): c"]


def test_arm_line_averages_the_members_that_did_not_diverge():
  means = {"train_loss": np.asarray([0.5, np.nan, 1.5]),
           "train_accuracy": np.asarray([0.8, 0.1, 0.6])}
  line = progress.arm_line("norm=none", means, None, np.asarray([False, True, False]))
  assert line == "  norm=none: train loss 1, train accuracy 0.7, diverged 1 of 3"


def test_summary_table_gives_final_accuracies_and_divergences_per_arm_and_rate():
  members = [{"member": m, "lr": 0.3, "seed": m % 2, "norm": "batch" if m < 2 else "none",
              "status": "trained", "diverged_step": None} for m in range(3)]
  members.append({"member": 3, "lr": 0.3, "seed": 1, "norm": "none", "status": "diverged",
                  "diverged_step": 7})
  metrics = [{"step": 0, "member": m, "test_accuracy": 0.1} for m in range(4)]
  metrics += [{"step": 8, "member": m, "train_accuracy": 0.9 + 0.02 * m, "test_accuracy": 0.95}
              for m in range(3)]
  assert progress.summary_lines(metrics, members, ("norm",)) == [
      "norm   lr   trained  train acc  test acc  diverged",
      "batch  0.3  2 of 2   0.910      0.950     -",
      "none   0.3  1 of 2   0.940      0.950     seed 1 at step 7"]
