"""Recomputes a training sweep's figures and analyses from its files.

    python -m bnjax.analyze --workdir=DIR [--step=N | --all_steps] [--analyses=divergence,...]

Reads what `python -m bnjax.main --config=configs/lr_sweep.py --workdir=DIR`
wrote: the accuracy figure (F1) is redrawn from metrics.jsonl; the members
restored from the Orbax checkpoint at `--step` (default: the latest) are
measured by each experiment named in `--analyses` (any of
`bnjax.experiments` that can measure a checkpoint: divergence, sgd_noise,
activations, gradients, random_matrix, ics, smoothness), with its default settings
(`defaults()`) and the overrides below, on the training batch the members
would train on next. One member per (arm, rate) is measured (the first
seed, or `--seed`); diverged members are listed as such. Outputs:
DIR/figures/accuracy.png, DIR/analysis/<name>_step<N>.json and the
experiment's figures DIR/figures/<name>_step<N>*.png. With `--all_steps`
every kept checkpoint is measured: by the experiment's `from_workdir` where
it has one (smoothness: one result over training, <name>_all_steps.json),
else by `from_checkpoint` at each step (<name>_step<N>.json for every N).

It holds the workdir's lock while it runs: a sweep still training (or
another analysis) holds it too, and is named in the refusal; analyse a run
once its command has ended.
"""

import sys
from typing import Any

import ml_collections
from absl import app, flags, logging

from bnjax import checkpoint, data, distributed, errors, experiments, ownership
from bnjax import workdir as workdir_lib
from bnjax.experiments import train

DEFAULT_ANALYSES = ("divergence", "sgd_noise")

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a sweep whose command has ended.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to analyse (default: the latest).")
_ALL_STEPS = flags.DEFINE_bool("all_steps", False, "Analyse every kept checkpoint step.")
_ANALYSES = flags.DEFINE_list("analyses", list(DEFAULT_ANALYSES),
                              "Experiments to measure the checkpoint with.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the members to measure (default: the first).")
_NUM_ETAS = flags.DEFINE_integer("num_etas", None, "Points of the η grid (divergence).")
_POOL = flags.DEFINE_integer("pool_size", None,
                             "Training examples standing in for the full set (sgd_noise).")
_BATCHES = flags.DEFINE_integer("num_train_batches", None,
                                "Train-mode minibatch gradients per size (sgd_noise).")
flags.mark_flags_as_required(["workdir"])


def _check_names(analyses: tuple[str, ...]) -> None:
  """Refuses names that are no experiment, or one that cannot measure a checkpoint."""
  measurable = lambda n: experiments.exists(n) and hasattr(experiments.get(n), "from_checkpoint")
  unknown = [n for n in analyses if not measurable(n)]
  if unknown:
    raise errors.ConfigError(f"Unknown analyses {unknown} (--analyses); use some of"
                             f" {experiments.from_checkpoint_names()}.")


def _check_seed(run_config: ml_collections.ConfigDict, seed: int | None) -> None:
  seeds = list(run_config.sweep.seeds)
  if seed is not None and seed not in seeds:
    raise errors.ConfigError(f"--seed={seed} is not a seed of this run; use one of {seeds}.")


def analysis_config(run_config: ml_collections.ConfigDict, experiment: Any,
                    **overrides: Any) -> ml_collections.ConfigDict:
  """The run's config with the experiment's `analysis` defaults and the given overrides.

  Overrides the experiment has no field for, or that are None, are ignored.
  """
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.analysis = experiment.defaults()
  config.analysis.update({k: v for k, v in overrides.items()
                          if v is not None and k in config.analysis})
  return config


def analyze(workdir: str, step: int | None = None,
            analyses: tuple[str, ...] = DEFAULT_ANALYSES, seed: int | None = None,
            **overrides: Any) -> list[str]:
  """Writes the figures and analyses of `workdir`; returns the files written.

  `overrides` set fields of the experiments' `analysis` settings (num_etas,
  pool_size, num_train_batches, ...) where they have them.
  """
  config, written = _redraw_accuracy(workdir, analyses)
  if not analyses:
    return written
  _check_seed(config, seed)
  run = checkpoint.load(workdir, step)
  dataset = data.load(config.data)
  for name in analyses:
    written += _measure(workdir, name, run, dataset, seed, overrides)
  return written


def analyze_all_steps(workdir: str, analyses: tuple[str, ...] = DEFAULT_ANALYSES,
                      seed: int | None = None, **overrides: Any) -> list[str]:
  """`analyze` at every kept checkpoint step; an experiment with `from_workdir` sees them at once."""
  config, written = _redraw_accuracy(workdir, analyses)
  steps = checkpoint.available_steps(workdir)
  if not steps:
    raise errors.WorkdirError(f"{workdir} has no complete checkpoint; train it first.")
  _check_seed(config, seed)
  whole = [n for n in analyses if hasattr(experiments.get(n), "from_workdir")]
  for name in whole:
    experiment = experiments.get(name)
    result = experiment.from_workdir(workdir, analysis_config(config, experiment, **overrides),
                                     seed)
    written += experiments.write(workdir, f"{_stem(name)}_all_steps", result, experiment.figures)
  per_step = [n for n in analyses if n not in whole]
  if per_step:
    dataset = data.load(config.data)
    for step in steps:  # one restored step in memory at a time
      run = checkpoint.load(workdir, step)
      for name in per_step:
        written += _measure(workdir, name, run, dataset, seed, overrides)
  return written


def _redraw_accuracy(workdir: str, analyses: tuple[str, ...]
                     ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """Checks the analyses' names and claims the workdir, then redraws F1 (process 0 only).

  Returns (the run's config, the files written). A workdir that another
  process is writing (a run still training) is refused, naming it.
  """
  _check_names(analyses)
  workdir_lib.claim_existing(workdir)
  config = checkpoint.read_config(workdir)
  return config, train.figures(config, workdir) if distributed.is_writer() else []


def _stem(name: str) -> str:
  return name.rsplit(".", 1)[-1]


def _measure(workdir: str, name: str, run: checkpoint.Run, dataset: data.Dataset,
             seed: int | None, overrides: dict[str, Any]) -> list[str]:
  """One experiment's measurement of `run`, written as <name>_step<N>; returns the files."""
  experiment = experiments.get(name)
  result = experiment.from_checkpoint(run, analysis_config(run.config, experiment, **overrides),
                                      dataset, seed)
  return experiments.write(workdir, f"{_stem(name)}_step{run.step}", result, experiment.figures)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    overrides = dict(num_etas=_NUM_ETAS.value, pool_size=_POOL.value,
                     num_train_batches=_BATCHES.value)
    if _ALL_STEPS.value and _STEP.value is not None:
      raise errors.ConfigError("--step and --all_steps both choose the steps; give one of them.")
    if _ALL_STEPS.value:
      written = analyze_all_steps(_WORKDIR.value, tuple(_ANALYSES.value), _SEED.value, **overrides)
    else:
      written = analyze(_WORKDIR.value, _STEP.value, tuple(_ANALYSES.value), _SEED.value,
                        **overrides)
  except errors.BnjaxError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C); the files written so far are whole, the rest are not"
          " written.", file=sys.stderr)
    sys.exit(130)
  finally:
    ownership.release(_WORKDIR.value)
  for path in written:
    logging.info("wrote %s", path)


if __name__ == "__main__":
  app.run(main)
