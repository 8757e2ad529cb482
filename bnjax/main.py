"""Entry point: `python -m bnjax.main --config=configs/lr_sweep.py[:smoke] --workdir=DIR`.

Any config field can be overridden with `--config.field=value`.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnjax import config as config_lib, errors, jobs

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':variant'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the run's outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  try:
    config_lib.validate(config)
    jobs.resolve(config.job)(config, _WORKDIR.value)
  except errors.BnjaxError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  logging.info("Done; outputs are in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
