"""Config defaults, variant parsing and validation shared by `configs/*.py`.

A config file defines `get_config(arg)`; `arg` is what follows the colon in
`--config=configs/lr_sweep.py:smoke`. Every field a run reads is created
here, so that `--config.field=value` overrides work for any experiment.
"""

import math
import numbers
import re
from typing import Any

import ml_collections
from absl import logging

from bnjax import errors, executor as executor_lib, experiments, mesh as mesh_lib
from bnjax import models, train as train_lib
from bnjax.models.registry import DTYPES


def base_config() -> ml_collections.ConfigDict:
  """Defaults from He et al. (2016) wherever the paper is silent."""
  c = ml_collections.ConfigDict()
  c.job = "train"  # what bnjax.main runs: a module of bnjax/experiments/
  # The model family and its fields, at the family's defaults (the paper's
  # ResNet-110 with BN: bnjax/models/resnet.py); `use_model` swaps in another.
  c.model = model_config("resnet")
  c.data = ml_collections.ConfigDict(dict(
      name="cifar10", data_dir="", download=True, augmentation=True,
      synthetic_seed=0, synthetic_train_size=50_000, synthetic_test_size=10_000,
      synthetic_noise=0.6))
  # Members are the product arms x lrs x seeds; each key of `arms` is a
  # model field and its tuple the values it takes (see `sweep_arms`).
  c.sweep = ml_collections.ConfigDict(dict(
      lrs=(1e-4, 3e-3, 1e-1), seeds=(0, 1, 2),
      arms=sweep_arms("resnet", norm=("batch", "none"))))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=128, num_steps=64_000, momentum=0.9, weight_decay=1e-4,
      # The rate is base_lr * lr_decay**k after the k-th boundary (fractions
      # of num_steps), and base_lr * warmup_factor for the first warmup_steps.
      lr_boundaries=(0.5, 0.75), lr_decay=0.1, warmup_steps=0, warmup_factor=0.1,
      # A member is frozen as diverged once its loss or parameters are not
      # finite, or its loss exceeds max_loss.
      max_loss=math.inf, data_seed=0, compute_dtype="float32",
      # "shared": every member sees batch t of one stream (data_seed), so the
      # spread over seeds is over initialisations only; "per_seed": each seed
      # its own order and augmentation (data_seed, seed, t), over both.
      data_stream="shared"))
  # Orbax checkpoints under DIR/checkpoints: every `every` steps, the latest
  # `keep` kept, plus always the first, the last and `keep_steps`.
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, keep_steps=()))
  # How members share the device; see bnjax/executor.py.
  c.executor = "auto"
  c.chunk_size = 4  # members per call of the chunked executor
  c.map_batch_size = 1  # members vmapped per iteration of the map executor
  # The devices a sweep runs on (bnjax/mesh.py): `members` devices each train
  # whole members (0: every device `data` leaves), `data` devices split each
  # member's batch, with BN statistics of the whole batch ("global") or of
  # each device's part ("ghost").
  c.mesh = ml_collections.ConfigDict(dict(members=0, data=1, bn_statistics="global"))
  c.log_every = 100
  c.eval_every = 1000
  c.eval_batch_size = 1000
  return c


def model_config(name: str, **fields: Any) -> ml_collections.ConfigDict:
  """config.model of the model family `name`: its fields at their defaults, then `fields`.

  One sentence (ConfigError) when `name` is no family.
  """
  try:
    defaults = models.defaults(name)
  except (ValueError, TypeError):
    models.validate({"name": name})  # raises the one-sentence ConfigError
    raise
  return ml_collections.ConfigDict({**defaults, **fields})


def use_model(config: ml_collections.ConfigDict, name: str) -> None:
  """Makes `config` train the model family `name`, at its defaults, in place.

  config.model becomes `model_config(name)` and config.sweep.arms declares
  that family's fields; of the fields the sweep varied, those the family
  has stay swept, the others (meaningless to it) are dropped. A locked
  config stays locked: a field the family lacks is still refused.
  `bnjax.main` calls this for `--config.model.name=NAME` before it applies
  the other overrides, so that `--config.model.width=64` reaches an MLP.
  """
  model = model_config(name)
  swept = {f: v for f, v in swept_arms(config).items() if f in model and f != "name"}
  arms = sweep_arms(name, **swept)
  if config.is_locked:
    model.lock()
    arms.lock()
  config.model = model
  config.sweep.arms = arms


def sweep_arms(model: str = "resnet", **swept: tuple) -> ml_collections.ConfigDict:
  """config.sweep.arms sweeping `swept`, every other field of family `model` declared but unswept.

  An unswept field is an empty tuple placeholder (None), so that e.g.
  --config.sweep.arms.shortcut='("A", "none")' sweeps it from the command
  line (a locked config takes no new keys); `swept_arms` skips it.
  """
  arms = {f: ml_collections.config_dict.placeholder(tuple) for f in models.defaults(model)
          if f != "name"}
  return ml_collections.ConfigDict({**arms, **swept})


def swept_arms(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{model field: its values} for the fields config.sweep.arms sweeps (set, not None)."""
  return {f: tuple(v) for f, v in config.sweep.arms.items() if v is not None}


def he_normal_smoke(config: ml_collections.ConfigDict, depth: int, batch_size: int,
                    train_size: int, test_size: int = 64) -> None:
  """Shrinks `config` in place to the analyses' CPU smoke size: a He-normal ResNet-`depth`
  on `train_size` + `test_size` synthetic images, batch `batch_size`.

  He-normal puts a shallow no-BN network about where the default initialiser
  puts a ResNet-110 (README, "Does it reproduce the paper?"), so the paper's
  effects show at a size that takes a CPU minute.
  """
  config.model.initializer = "he_normal"
  config.model.depth = depth
  config.data.name = "synthetic"
  config.data.synthetic_train_size = train_size
  config.data.synthetic_test_size = test_size
  config.train.batch_size = batch_size


def parse_variant(arg: str | None, variants: tuple[str, ...]) -> str:
  """Returns the variant named by `arg` ("" for the default)."""
  arg = arg or ""
  if arg and arg not in variants:
    raise errors.ConfigError(
        f"Unknown config variant {arg!r}; use one of {list(variants)} or none.")
  return arg


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise errors.ConfigError(message)


_MISSING = object()


def _is_seed(seed: object) -> bool:
  """Whether `seed` is a whole number in [0, 2**32): train.init_arm casts seeds to uint32."""
  return isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and 0 <= seed < 2**32


def _literal(value: object) -> str:
  """`value` as a command-line tuple element, quoted for a shell's single quotes."""
  return f'"{value}"' if isinstance(value, str) else repr(value)


def _check_not_overridden(model: ml_collections.ConfigDict, field: str,
                          values: tuple) -> None:
  """Rejects config.model.FIELD set to a value that every arm of the sweep replaces.

  Each arm overrides the model field it sweeps, so a value outside the swept
  ones would be silently ignored; the family's default is what arms override.
  """
  value, base = model[field], models.complete({"name": model.name}).get(field, _MISSING)
  _check(value == base or value in values,
         f"config.model.{field}={value!r} is overridden by config.sweep.arms.{field}={values!r}, "
         f"so it would be ignored; to run it, sweep it instead, e.g. "
         f"--config.sweep.arms.{field}='({_literal(value)},)'.")


def _is_real(value: object) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_count(value: object, name: str, minimum: int = 1) -> None:
  """Rejects `value` unless it is a whole number >= `minimum` (a batch size, a step count)."""
  _check(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum,
         f"config.{name} must be a whole number >= {minimum}, got {value!r}.")


def _check_real(value: object, name: str, holds: bool, rule: str) -> None:
  """Rejects `value` unless it is a real number for which `holds` (NaN fails every comparison)."""
  _check(_is_real(value) and holds, f"config.{name} must be {rule}, got {value!r}.")


def _validate_numbers(config: ml_collections.ConfigDict) -> None:
  """Counts are whole and >= 1, rates and factors finite and in range: NaN passes nothing."""
  train = config.train
  for name, value in (("train.batch_size", train.batch_size),
                      ("train.num_steps", train.num_steps),
                      ("eval_batch_size", config.eval_batch_size),
                      ("log_every", config.log_every), ("eval_every", config.eval_every),
                      ("checkpoint.every", config.checkpoint.every),
                      ("checkpoint.keep", config.checkpoint.keep)):
    _check_count(value, name)
  _check_count(train.warmup_steps, "train.warmup_steps", minimum=0)
  finite = lambda x: _is_real(x) and math.isfinite(x)
  _check_real(train.momentum, "train.momentum", finite(train.momentum) and 0 <= train.momentum < 1,
              "in [0, 1) (the paper's is 0.9)")
  _check_real(train.weight_decay, "train.weight_decay",
              finite(train.weight_decay) and train.weight_decay >= 0, "a finite number >= 0")
  _check_real(train.lr_decay, "train.lr_decay", finite(train.lr_decay) and train.lr_decay > 0,
              "a finite number > 0 (the rate's factor at each boundary)")
  _check_real(train.warmup_factor, "train.warmup_factor",
              finite(train.warmup_factor) and train.warmup_factor > 0,
              "a finite number > 0 (the rate's factor during warm-up)")
  _check_real(train.max_loss, "train.max_loss", _is_real(train.max_loss) and train.max_loss > 0,
              "a number > 0, or inf for no limit")
  if config.data.name == "synthetic":
    _check_count(config.data.synthetic_test_size, "data.synthetic_test_size")
    _check_real(config.data.synthetic_noise, "data.synthetic_noise",
                finite(config.data.synthetic_noise) and config.data.synthetic_noise >= 0,
                "a finite number >= 0")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` with one sentence for the first problem found."""
  _check(experiments.exists(config.job),
         f"Unknown job {config.job!r} (config.job); use one of {experiments.names()}"
         " or an importable module path.")
  sweep, train = config.sweep, config.train
  lrs = tuple(sweep.lrs)
  _check(len(lrs) > 0, "config.sweep.lrs is empty; give at least one learning rate.")
  for lr in lrs:
    _check(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0,
           f"Learning rate {lr!r} in config.sweep.lrs is not a positive number; rates must be > 0.")
  _check(len(tuple(sweep.seeds)) > 0, "config.sweep.seeds is empty; give at least one seed.")
  for seed in sweep.seeds:
    _check(_is_seed(seed),
           f"Seed {seed!r} in config.sweep.seeds is not an integer in [0, 2**32); "
           f"give seeds from 0 to {2**32 - 1}.")
  _check(len(set(sweep.seeds)) == len(tuple(sweep.seeds)), "config.sweep.seeds repeats a seed; list each once.")
  models.validate({"name": config.model.get("name")})  # the family exists; arms check its fields
  fields = sorted(f for f in config.model if f != "name")
  for field, values in swept_arms(config).items():
    _check(field in fields, f"Sweep arm field {field!r} is not a field of the"
                            f" {config.model.name!r} model; use one of {fields}.")
    _check(len(tuple(values)) > 0, f"config.sweep.arms.{field} is empty; give at least one value.")
    _check_not_overridden(config.model, field, tuple(values))
  for arm in arm_configs(config):
    models.validate(arm)
  _validate_numbers(config)
  _check(train.compute_dtype in DTYPES,
         f"Unknown compute dtype {train.compute_dtype!r}; use one of {sorted(DTYPES)}.")
  _check(all(0 < b < 1 for b in train.lr_boundaries),
         "config.train.lr_boundaries must be fractions of training strictly between 0 and 1.")
  _check(train.data_stream in train_lib.DATA_STREAMS,
         f"Unknown config.train.data_stream {train.data_stream!r}; use one of"
         f" {list(train_lib.DATA_STREAMS)}.")
  _check(config.executor in executor_lib.EXECUTORS,
         f"Unknown executor {config.executor!r}; use one of {list(executor_lib.EXECUTORS)}.")
  _check(config.chunk_size >= 1, f"config.chunk_size must be >= 1, got {config.chunk_size}.")
  _check(config.map_batch_size >= 1,
         f"config.map_batch_size must be >= 1, got {config.map_batch_size}.")
  _check(config.mesh.bn_statistics in mesh_lib.BN_STATISTICS,
         f"Unknown config.mesh.bn_statistics {config.mesh.bn_statistics!r}; use one of"
         f" {list(mesh_lib.BN_STATISTICS)}.")
  _check(config.mesh.data >= 1 and train.batch_size % config.mesh.data == 0,
         f"config.train.batch_size={train.batch_size} does not split over config.mesh.data="
         f"{config.mesh.data} devices; make the batch a multiple of it.")
  _check(all(0 <= s <= train.num_steps for s in config.checkpoint.keep_steps),
         "config.checkpoint.keep_steps must lie between 0 and config.train.num_steps.")
  _check(config.data.name in ("cifar10", "synthetic"),
         f"Unknown dataset {config.data.name!r}; use 'cifar10' or 'synthetic'.")
  if config.data.name == "synthetic":
    _check(config.data.synthetic_train_size >= train.batch_size,
           "config.data.synthetic_train_size is smaller than one batch; make it >= train.batch_size.")


def last_overrides(argv: list[str]) -> list[str]:
  """`argv` with each `--config.FIELD=VALUE` given several times kept only where it last is.

  absl parses a tuple field's flag as a multi-flag, which joins repeats
  (`--config.sweep.seeds='(0,)' --config.sweep.seeds='(1,)'` would give
  (0, 1)); every other flag takes its last value, and so do these now.
  """
  fields = [_overridden_field(arg) for arg in argv]
  last = {field: i for i, field in enumerate(fields) if field is not None}
  for i, (arg, field) in enumerate(zip(argv, fields)):
    if field is not None and last[field] != i:
      logging.warning("%s is given again later; the later value replaces it.", arg)
  return [arg for i, (arg, field) in enumerate(zip(argv, fields))
          if field is None or last[field] == i]


def _overridden_field(arg: str) -> str | None:
  """FIELD of a `--config.FIELD=VALUE` argument, else None."""
  match = re.match(r"--?config\.([^=]+)=", arg)
  return match.group(1) if match else None


def arm_configs(config: ml_collections.ConfigDict) -> list[dict]:
  """The model config of every arm: the product of `config.sweep.arms`."""
  arms = [config.model.to_dict()]
  for field, values in swept_arms(config).items():
    arms = [{**arm, field: value} for arm in arms for value in values]
  return arms
