"""Recomputes a training sweep's figures and analyses from its files.

    python -m bnjax.analyze --workdir=DIR [--step=N | --all_steps] [--analyses=divergence,...]
        [--config.analysis.FIELD=VALUE ...]

Reads what `python -m bnjax.main --config=configs/lr_sweep.py --workdir=DIR`
wrote: the accuracy figure (F1) is redrawn from metrics.jsonl; the members
restored from the Orbax checkpoint at `--step` (default: the latest) are
measured by each experiment named in `--analyses` (any of
`bnjax.experiments` that can measure a checkpoint: divergence, sgd_noise,
activations, gradients, random_matrix, ics, smoothness), with its default
settings (`defaults()`, its `config.analysis`) and the command line's
`--config.analysis.FIELD=VALUE` overrides (e.g. `num_etas=5`,
`update_layers='(2, "last")'`, `lr_by_norm.batch=0.2`), on the training
batch the members would train on next. An override reaches every named
analysis that has the field; one that none of them has is refused. Run
analyses that share a field's name one at a time to give them different
values. One member per (arm, rate) is measured (the first
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
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from bnjax import checkpoint, data, distributed, errors, experiments, logs, ownership
from bnjax import workdir as workdir_lib
from bnjax.experiments import train

DEFAULT_ANALYSES = ("divergence", "sgd_noise")

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a sweep whose command has ended.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to analyse (default: the latest).")
_ALL_STEPS = flags.DEFINE_bool("all_steps", False, "Analyse every kept checkpoint step.")
_ANALYSES = flags.DEFINE_list("analyses", list(DEFAULT_ANALYSES),
                              "Experiments to measure the checkpoint with.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the members to measure (default: the first).")
flags.mark_flags_as_required(["workdir"])
# --config.analysis.FIELD=VALUE: the flag "config" is defined by `_parse_flags`, once the
# analyses --analyses names are known, since their settings type the overrides.


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


def settings(names: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Every field of the named experiments' `analysis` settings, the first one's default of each.

  What `--config.analysis.FIELD` may override (its type comes from here);
  names that are no experiment with settings are left to `_check_names`.
  """
  merged = ml_collections.ConfigDict()
  for name in names:
    experiment = experiments.get(name) if experiments.exists(name) else None
    if hasattr(experiment, "defaults"):
      _merge(merged, experiment.defaults())
  return merged


def _merge(into: ml_collections.ConfigDict, settings: ml_collections.ConfigDict) -> None:
  for key in settings:
    if isinstance(settings[key], ml_collections.ConfigDict):
      if key not in into:
        into[key] = ml_collections.ConfigDict()
      _merge(into[key], settings[key])
    elif key not in into:
      into[key] = settings.get_ref(key)  # its FieldReference: a layer choice stays untyped


def _paths(settings: Mapping[str, Any], prefix: str = "") -> list[str]:
  """Dotted names of the leaves of nested settings ("num_etas", "lr_by_norm.batch")."""
  out = []
  for key, value in settings.items():
    if isinstance(value, Mapping):
      out += _paths(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out


def check_overrides(names: tuple[str, ...], overrides: Mapping[str, Any]) -> None:
  """Refuses, in one sentence, an override that no named analysis has a field for."""
  known = {name: _paths(experiments.get(name).defaults().to_dict()) for name in names}
  for path in overrides:
    if not any(path in fields for fields in known.values()):
      raise errors.ConfigError(
          f"No analysis of {list(names)} has the setting {path!r} (--config.analysis.{path});"
          f" check its spelling: their settings are {known}.")


def analysis_config(run_config: ml_collections.ConfigDict, experiment: Any,
                    **overrides: Any) -> ml_collections.ConfigDict:
  """The run's config with the experiment's `analysis` defaults and the overrides it has fields for.

  `overrides` maps dotted setting names (num_etas, lr_by_norm.batch) to
  values; those the experiment has no field for are ignored here
  (`check_overrides` refuses those no analysis has), and a value of the
  wrong type is one sentence.
  """
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.analysis = experiment.defaults()
  fields = _paths(config.analysis.to_dict())
  for path, value in overrides.items():
    if path in fields:
      try:
        config.analysis.update_from_flattened_dict({path: value})
      except TypeError:
        raise errors.ConfigError(
            f"--config.analysis.{path}={value!r} does not fit {experiment.__name__}'s setting of"
            f" type {type(_get(config.analysis, path)).__name__}; give a value of that type."
        ) from None
  return config


def _get(settings: ml_collections.ConfigDict, path: str) -> Any:
  for key in path.split("."):
    settings = settings[key]
  return settings


def analyze(workdir: str, step: int | None = None,
            analyses: tuple[str, ...] = DEFAULT_ANALYSES, seed: int | None = None,
            **overrides: Any) -> list[str]:
  """Writes the figures and analyses of `workdir`; returns the files written.

  `overrides` set fields of the experiments' `analysis` settings (num_etas,
  pool_size, update_layers, ...; dotted names for nested ones, as
  `**{"lr_by_norm.batch": 0.2}`) where they have them.
  """
  config, written = _redraw_accuracy(workdir, analyses, overrides)
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
  """`analyze` at every kept checkpoint step; one with `from_workdir` sees them all at once."""
  config, written = _redraw_accuracy(workdir, analyses, overrides)
  steps = checkpoint.available_steps(workdir)
  if not steps:
    raise errors.WorkdirError(f"{workdir} has no complete checkpoint; train it first.")
  _check_seed(config, seed)
  whole = [n for n in analyses if hasattr(experiments.get(n), "from_workdir")]
  for name in whole:
    experiment = experiments.get(name)
    result = experiment.from_workdir(workdir, analysis_config(config, experiment, **overrides),
                                     seed)
    written += experiments.write(workdir, f"{experiments.stem(name)}_all_steps", result,
                                 experiment.figures)
  per_step = [n for n in analyses if n not in whole]
  if per_step:
    dataset = data.load(config.data)
    for step in steps:  # one restored step in memory at a time
      run = checkpoint.load(workdir, step)
      for name in per_step:
        written += _measure(workdir, name, run, dataset, seed, overrides)
  return written


def _redraw_accuracy(workdir: str, analyses: tuple[str, ...], overrides: Mapping[str, Any]
                     ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """Checks the analyses and their settings and claims the workdir, then redraws F1.

  Returns (the run's config, the files written; F1 by process 0 only). A
  workdir that another process is writing (a run still training) is
  refused, naming it; every analysis is checked against the run's models
  (`experiments.check`) before any is measured.
  """
  _check_names(analyses)
  check_overrides(analyses, overrides)
  workdir_lib.claim_existing(workdir)
  config = checkpoint.read_config(workdir)
  for name in analyses:
    experiments.check(name, analysis_config(config, experiments.get(name), **overrides))
  return config, train.figures(config, workdir) if distributed.is_writer() else []


def _measure(workdir: str, name: str, run: checkpoint.Run, dataset: data.Dataset,
             seed: int | None, overrides: dict[str, Any]) -> list[str]:
  """One experiment's measurement of `run`, written as <name>_step<N>; returns the files."""
  experiment = experiments.get(name)
  result = experiment.from_checkpoint(run, analysis_config(run.config, experiment, **overrides),
                                      dataset, seed)
  return experiments.write(workdir, f"{experiments.stem(name)}_step{run.step}", result,
                           experiment.figures)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logs.setup()
  try:
    overrides = {path.split(".", 1)[1]: value
                 for path, value in config_flags.get_override_values(flags.FLAGS["config"]).items()}
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


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with `--config.analysis.FIELD` overrides typed by the named analyses.

  config_flags types an override by the field it overrides, and the fields
  are those of the experiments --analyses names: the flags are read once
  without the overrides to learn the names, then `config` is defined with
  their settings (`settings`) and every flag is parsed. An override of a
  field none of them has is one sentence, as is one outside
  config.analysis.
  """
  try:
    flags.FLAGS(argv, known_only=True)
  except flags.Error:
    pass  # reported by the full parse below
  names = tuple(_ANALYSES.value)
  try:
    config_flags.DEFINE_config_dict(
        "config", ml_collections.ConfigDict({"analysis": settings(names)}),
        "Settings of the analyses: --config.analysis.FIELD=VALUE.", sys_argv=argv)
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, IndexError):
    fields = _paths(settings(names).to_dict())
    given = [a.lstrip("-").split("=", 1)[0] for a in argv if a.lstrip("-").startswith("config.")]
    bad = next((g for g in given if g.removeprefix("config.analysis.") not in fields), given[0])
    sys.exit(f"error: --{bad} is no setting of the analyses {list(names)}; check its spelling:"
             f" use --config.analysis.FIELD=VALUE with FIELD one of {fields}.")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
