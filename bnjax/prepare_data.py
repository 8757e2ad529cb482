"""Downloads and prepares CIFAR-10 for TFDS: `python -m bnjax.prepare_data --data_dir=DIR`.

Run once on a machine with internet (and `pip install -e ".[prepare]"`);
copy DIR to machines without it and pass `--config.data.data_dir=DIR`.
"""

import sys

from absl import app, flags, logging

from bnjax import data, errors

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to prepare CIFAR-10 in.")
flags.mark_flag_as_required("data_dir")


def main(argv: list[str]) -> None:
  del argv
  try:
    dataset = data.cifar10(_DATA_DIR.value, download=True)
  except errors.BnjaxError as e:
    sys.exit(f"error: {e}")
  logging.info("CIFAR-10 is ready in %s: %d train and %d test images.",
               _DATA_DIR.value, dataset.train.size, dataset.test.size)


if __name__ == "__main__":
  app.run(main)
