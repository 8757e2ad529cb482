"""Entry point: `python -m bnjax.main --config=configs/lr_sweep.py[:smoke] --workdir=DIR`.

Any config field can be overridden with `--config.field=value`; given twice,
the last value counts (a tuple too: `--config.sweep.seeds='(0,1)'`).
"""

import os
import re
import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from bnjax import config as config_lib, distributed, errors, experiments, logs, ownership
from bnjax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':variant'; with"
    " --config.model.name=FAMILY, that model family at its defaults.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the run's outputs.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete a run with a different config in --workdir and start anew.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Join a multi-process run: jax.distributed.initialize(); also on with BNJAX_DISTRIBUTED=1.")
flags.mark_flags_as_required(["config", "workdir"])


# 128 + SIGINT, as a shell reports a process ended by Ctrl-C; a run stopped by
# SIGTERM exits 143 (`errors.Preempted`).
INTERRUPTED_EXIT_CODE = 130


class _FamilyConfigParser(flags.ArgumentParser):
  """config_flags' loader of the --config file, then the model family --config.model.name names.

  config_flags gives every `--config.FIELD` override the type of the loaded
  config's field before it applies any, then applies them in command-line
  order; so another family's fields (`--config.model.width` of an MLP) can
  be set only if that family's config is in place as the file is loaded.
  Here it is: a name other than the file's swaps in that family's defaults
  (`config.use_model`), and every `--config.model.*` override then applies
  to them, whatever their order.
  """

  def __init__(self, loader: flags.ArgumentParser):
    self.loader = loader
    self.argv: list[str] = sys.argv

  def flag_type(self) -> str:
    return self.loader.flag_type()

  def parse(self, path: str) -> ml_collections.ConfigDict:
    config = self.loader.parse(path)
    name = _model_name(self.argv)
    if isinstance(config, ml_collections.ConfigDict) and name not in (None, config.model.name):
      config_lib.use_model(config, name)
    return config


flags.FLAGS["config"].parser = _FamilyConfigParser(flags.FLAGS["config"].parser)


def _model_name(argv: list[str]) -> str | None:
  """The last value of --config.model.name in `argv`, or None without one."""
  name = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(r"--?config\.model\.name(?:=(.*))?", arg)
    if match:
      name = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return name


def _config_spec(argv: list[str]) -> str | None:
  """The value of --config in `argv` ("FILE[:variant]"), or None without one."""
  for i, arg in enumerate(argv):
    match = re.fullmatch(r"--?config(?:=(.*))?", arg)
    if match:
      if match.group(1) is not None:
        return match.group(1)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def _missing_override(argv: list[str]) -> tuple[str, str, list[str]] | None:
  """The first `--config.FIELD` override in `argv` the config lacks, and its section's fields."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  config = flags.FLAGS["config"].parser.parse(spec)
  for arg in argv:
    match = re.match(r"--?config\.([^=]+)", arg)
    if match:
      try:
        config_path.get_type(match.group(1), config)
      except (AttributeError, KeyError, IndexError):
        return match.group(1), *_section_fields(config, match.group(1))
  return None


def _section_fields(config: ml_collections.ConfigDict, field: str) -> tuple[str, list[str]]:
  """The deepest existing section on `field`'s path ("config.model") and its fields.

  The model section is named by its family, which owns its fields.
  """
  section = "config"
  for name in field.split(".")[:-1]:
    if not isinstance(config.get(name), ml_collections.ConfigDict):
      break
    config, section = config[name], f"{section}.{name}"
  if section == "config.model":
    section = f"config.model of the {config.name!r} model (--config.model.name picks another)"
  return section, sorted(config)


def _check_config_file(argv: list[str]) -> None:
  """Exits with one sentence if --config names a file that does not exist."""
  spec = _config_spec(argv)
  if spec is not None and not os.path.isfile(spec.split(":", 1)[0]):
    sys.exit(f"error: the config file {spec.split(':', 1)[0]!r} (--config) does not exist; give"
             " a config file, e.g. --config=configs/lr_sweep.py:smoke.")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with bad config input reported in one sentence.

  config_flags loads the config file and resolves every `--config.FIELD`
  override while absl parses flags, before `main` runs: a missing file or
  one without get_config, or a field the config lacks, would end in a bare
  traceback there, and an unknown variant in a ConfigError one.
  """
  argv = config_lib.last_overrides(argv)
  _check_config_file(argv)
  flags.FLAGS["config"].parser.argv = argv
  try:
    return app.parse_flags_with_usage(argv)
  except errors.BnjaxError as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError, IndexError) as e:
    if isinstance(e, AttributeError) and "get_config" in str(e):
      sys.exit(f"error: the config file {_config_spec(argv).split(':', 1)[0]} (--config) has no"
               " get_config(arg); a config file defines one that returns its ConfigDict, as"
               " configs/lr_sweep.py does.")
    missing = _missing_override(argv)
    if missing is None:
      raise
    field, section, fields = missing
    sys.exit(f"error: config has no field {field!r} (--config.{field}); "
             f"check its spelling: {section} has the fields {fields}.")


def _drop_closed_loop_errors() -> None:
  """Silences "Event loop is closed" tracebacks, which TensorStore reports by the hundred
  (as unraisable exceptions, from its threads) when an Orbax save fails, a full disk say,
  after Orbax closed the save's event loop.

  The failure itself is reported once, by bnjax (`loop._saving`).
  """
  previous = sys.unraisablehook
  def hook(unraisable) -> None:
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  sys.unraisablehook = hook


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logs.setup()
  _drop_closed_loop_errors()
  config = _CONFIG.value
  try:
    # Before anything touches JAX's devices: they are fixed when its backend starts.
    distributed.initialize(_DISTRIBUTED.value)
    config_lib.validate(config)
    experiments.check(config.job, config)
    job = experiments.get(config.job).run
    # Held until the job ends: no other process writes this workdir meanwhile.
    workdir_lib.claim(_WORKDIR.value, config, overwrite=_OVERWRITE.value)
    job(config, _WORKDIR.value)
  except errors.BnjaxError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except errors.Preempted as e:
    logging.warning("%s", e)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C) before a checkpoint could be saved; rerun the same"
          " command to resume from the last one.", file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT_CODE)
  finally:
    ownership.release(_WORKDIR.value)
  logging.info("Done; outputs are in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
