"""F1: the LR × seed training sweep, and its accuracy figure.

    python -m bnjax.main --config=configs/lr_sweep.py --workdir=DIR

Trains every member of the config (arms x rates x seeds, `bnjax.loop`),
writing metrics.jsonl, members.json, Orbax checkpoints and
figures/accuracy.png; `python -m bnjax.analyze` redraws the figure and
measures the checkpoints with the other experiments.
"""

import ml_collections

from bnjax import loop, plots, sweep, workdir as workdir_lib

RECORDINGS = ()  # trains; measures nothing in the models


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Trains the sweep; returns members.json's records."""
  return loop.train_sweep(config, workdir)


def figures(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Redraws figures/accuracy.png from metrics.jsonl and members.json."""
  path = workdir_lib.figure_path(workdir, "accuracy")
  plots.accuracy_figure(workdir_lib.read_metrics(workdir), workdir_lib.read_members(workdir),
                        sweep.arm_fields(config), path, config.train.num_steps,
                        plots.training_setting(config))
  return [path]
