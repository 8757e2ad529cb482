"""One module per experiment, found by name, as big_vision finds its evaluators.

`config.job` (for `python -m bnjax.main`) and `--analyses` (for
`python -m bnjax.analyze`) name a module: a bare name means
`bnjax.experiments.<name>`, a dotted one any importable module (a
researcher's own package). An experiment module provides

    run(config, workdir) -> None
        The job of `bnjax.main`: measure (or train) from initialisation and
        write DIR/analysis/<name>.json and its figures under DIR/figures/.

and, when it can measure the members of a trained sweep,

    from_checkpoint(run, config, dataset) -> dict
        The same measurement of the members of `run` (a
        `bnjax.checkpoint.Run`), returned in the schema `run` writes.
    defaults() -> ml_collections.ConfigDict
        Its `config.analysis` settings (configs/<name>.py starts from them).
    figures(result, workdir, stem) -> list[str]
        Draws its figures from a result and returns their paths.

and, when its result spans a sweep's checkpoints rather than one,

    from_workdir(workdir, config, seed) -> dict
        The measurement of every checkpoint of the sweep in `workdir`
        (`python -m bnjax.analyze --all_steps`); without it, `--all_steps`
        measures each checkpoint on its own with `from_checkpoint`.

and, to refuse what it cannot measure before anything runs (`check`),

    RECORDINGS: tuple[str, ...]
        The kinds a model must record for it (conv_out, block_out, ...;
        `bnjax.models.family`).
    check(config) -> None
        Raises `errors.ConfigError`, one sentence, for settings that do not
        fit the config's models (a layer outside them, ...).

Importing this package imports no experiment.
"""

import importlib
import importlib.util
import pkgutil
import types
from collections.abc import Callable
from typing import Any

from bnjax import distributed, errors, workdir as workdir_lib

_PACKAGE = __name__


def names() -> list[str]:
  """The experiments bnjax ships, by module name."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def module_name(name: str) -> str:
  """The module that `name` refers to: dotted names are taken as they are."""
  return name if "." in name else f"{_PACKAGE}.{name}"


def exists(name: str) -> bool:
  """Whether `name` names an importable experiment module (without importing it)."""
  try:
    return importlib.util.find_spec(module_name(name)) is not None
  except ModuleNotFoundError:  # a dotted name whose package is missing
    return False


def get(name: str) -> types.ModuleType:
  """The experiment module called `name`; one sentence if there is none."""
  if not exists(name):
    raise errors.ConfigError(
        f"Unknown experiment {name!r}; use one of {names()} or an importable module path.")
  return importlib.import_module(module_name(name))


def from_checkpoint_names() -> list[str]:
  """The shipped experiments that can measure a checkpointed sweep."""
  return [n for n in names() if hasattr(get(n), "from_checkpoint")]


def check(name: str, config: Any) -> None:
  """Refuses, in one sentence, a config the experiment `name` cannot measure.

  Every arm's model must record the experiment's `RECORDINGS`, and its own
  `check(config)` must pass. `bnjax.main` calls this before a job touches
  the workdir, `bnjax.analyze` before it restores a checkpoint.
  """
  from bnjax import models, sweep  # here: sweep imports config, which imports this package
  experiment = get(name)
  needed = tuple(getattr(experiment, "RECORDINGS", ()))
  if needed:
    for arm in sweep.make_arms(config):
      recorded = models.recordings(sweep.build_model(arm, config))
      missing = [kind for kind in needed if kind not in recorded]
      if missing:
        raise errors.ConfigError(
            f"The {stem(name)} analysis reads the recordings {list(needed)}, and the model"
            f" {models.describe(arm.model_config)} ({arm.model_config['name']}) records"
            f" {sorted(recorded) or 'none'}, not {missing}; pick another analysis, or make the"
            f" model sow them (bnjax/models/family.py).")
  own = getattr(experiment, "check", None)
  if own is not None:
    own(config)


def stem(name: str) -> str:
  """An experiment's file stem: its module's last name (my_lab.weight_norms: weight_norms)."""
  return name.rsplit(".", 1)[-1]


def write(workdir: str, stem: str, result: dict[str, Any],
          figures: Callable[[dict[str, Any], str, str], list[str]]) -> list[str]:
  """Writes DIR/analysis/<stem>.json, then draws `figures` from it; returns the paths.

  In a multi-process run every process measures and process 0 alone writes
  (the others return []).
  """
  if not distributed.is_writer():
    return []
  written = [workdir_lib.write_analysis(workdir, stem, result)]
  return written + figures(workdir_lib.jsonable(result), workdir, stem)
