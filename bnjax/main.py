"""Entry point: `python -m bnjax.main --config=configs/lr_sweep.py[:smoke] --workdir=DIR`.

Any config field can be overridden with `--config.field=value`.
"""

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnjax import config as config_lib, errors, jobs, workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':variant'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the run's outputs.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete a run with a different config in --workdir and start anew.")
flags.mark_flags_as_required(["config", "workdir"])


# 128 + SIGTERM, as a shell reports a process ended by SIGTERM: wrappers can
# tell a preempted run (resume it) from a finished one.
PREEMPTED_EXIT_CODE = 143


class _QuietOrbax(pylogging.Filter):
  """Drops Orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  config = _CONFIG.value
  try:
    config_lib.validate(config)
    job = jobs.resolve(config.job)
    if _OVERWRITE.value and workdir_lib.discard_other_run(_WORKDIR.value, config):
      logging.warning("Deleted the run with a different config in %s.", _WORKDIR.value)
    job(config, _WORKDIR.value)
  except errors.BnjaxError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except errors.Preempted as e:
    logging.warning("%s", e)
    sys.exit(PREEMPTED_EXIT_CODE)
  logging.info("Done; outputs are in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
