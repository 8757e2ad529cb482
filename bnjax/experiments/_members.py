"""Where an experiment's members come from, and the batches they are measured on.

A `Subject` is one member to measure: its model, identity and variables.
Experiments get them at initialisation from a config (`at_init`), trained
at a constant rate from there (`trained`), or restored from a sweep's
checkpoint (`at_checkpoint`), and measure each with the same function, so
both entry paths of an experiment write one schema.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bnjax import checkpoint, data, experiments, logs, models, sweep, train
from bnjax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Subject:
  """One member to measure.

  Attributes:
    arm: label of its arm, the swept fields ("norm=batch").
    model_config: its arm's model config.
    model: its Flax model (one module per block).
    seed: its initialisation seed (all members share the data stream).
    lr: its base learning rate (None at initialisation, where none applies).
    step: updates it has made (0 at initialisation).
    state: its member state, variables one entry per block.
    member: its index in the run's members.json (None outside a run).
  """

  arm: str
  model_config: dict[str, Any]
  model: nn.Module
  seed: int
  lr: float | None
  step: int
  state: train.MemberState
  member: int | None = None

  @property
  def variables(self) -> dict[str, Any]:
    """{params, batch_stats}, what `model.apply` takes."""
    return train.model_variables(self.state)

  @property
  def diverged(self) -> bool:
    return bool(self.state.diverged)

  def identity(self) -> dict[str, Any]:
    """The fields that say which member a result line is about."""
    record = {"arm": self.arm, "seed": self.seed, "step": self.step}
    if self.lr is not None:
      record["lr"] = self.lr
    if self.member is not None:
      record["member"] = self.member
    return record


def load_then_prepare(config: ml_collections.ConfigDict, workdir: str) -> data.Dataset:
  """The config's dataset, loaded before the workdir is touched (`workdir.prepare`).

  A run that fails for want of its data then leaves no config.json, which
  would make the rerun with the right data_dir look like a different run.
  """
  dataset = data.load(config.data)
  workdir_lib.prepare(workdir, config)
  return dataset


def arm_label(config: ml_collections.ConfigDict, arm: sweep.Arm) -> str:
  """E.g. "norm=batch": the fields the sweep varies, as a legend label."""
  return ", ".join(f"{f}={arm.model_config[f]}" for f in sweep.arm_fields(config))


def arm_models(config: ml_collections.ConfigDict) -> Iterator[tuple[str, nn.Module]]:
  """(description, model) of every arm: what an experiment's `check` fits its settings to."""
  for arm in sweep.make_arms(config):
    yield models.describe(arm.model_config), sweep.build_model(arm, config)


def optimizer(config: ml_collections.ConfigDict):
  """The run's optimizer (SGD with momentum and weight decay)."""
  return train.make_optimizer(config.train.momentum, config.train.weight_decay)


def at_init(config: ml_collections.ConfigDict, seeds: tuple[int, ...] | None = None
            ) -> Iterator[Subject]:
  """Every arm x seed (default: the config's seeds) at initialisation; rates play no part."""
  tx = optimizer(config)
  for arm in sweep.make_arms(config):
    model = sweep.build_model(arm, config)
    for seed in config.sweep.seeds if seeds is None else seeds:
      state = train.init_member(model, tx, int(seed), 0.0)
      yield Subject(arm_label(config, arm), arm.model_config, model, int(seed), None, 0, state)


def constant_rate(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The train config with no schedule: the member's rate at every step."""
  return {**config.train.to_dict(), "lr_boundaries": (), "warmup_steps": 0}


def trainer(config: ml_collections.ConfigDict, model: nn.Module
            ) -> Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[Any, Any]]:
  """The jitted SGD step of one member at its constant base rate (momentum, weight decay)."""
  return jax.jit(functools.partial(train.member_step, model, optimizer(config),
                                   constant_rate(config)))


def train_batch(config: ml_collections.ConfigDict, dataset: data.Dataset, step: int,
                batch_size: int | None = None, seed: int | None = None
                ) -> tuple[jax.Array, jax.Array]:
  """Training batch `step` of the config's data stream: images (B, 32, 32, 3), labels (B,).

  With `train.data_stream="per_seed"` and a `seed`, the batch of that seed's
  own stream: the one the loop gives its members at `step`. Without a seed
  (several seeds measured on one batch), the shared stream's.
  """
  stream = seed if config.train.data_stream == "per_seed" else None
  return data.train_batch(dataset, config.train.data_seed, step,
                          batch_size or config.train.batch_size, config.data.augmentation, stream)


def with_rate(config: ml_collections.ConfigDict, subject: Subject, lr: float) -> Subject:
  """`subject` about to train at base rate `lr`: its variables, a fresh optimizer state."""
  return dataclasses.replace(
      subject, lr=lr, state=train.member_state(subject.variables, optimizer(config), lr))


def stepped(config: ml_collections.ConfigDict, dataset: data.Dataset, subject: Subject,
            step_fn: Callable) -> Subject:
  """`subject` after one `step_fn` update on training batch `subject.step`."""
  images, labels = train_batch(config, dataset, subject.step, seed=subject.seed)
  state, _ = step_fn(subject.state, images, labels, jnp.asarray(subject.step, jnp.int32))
  return dataclasses.replace(subject, state=state, step=subject.step + 1)


def trained(config: ml_collections.ConfigDict, dataset: data.Dataset, subject: Subject,
            lr: float, num_steps: int, step_fn: Callable | None = None) -> Subject:
  """`subject` after `num_steps` SGD updates at the constant rate `lr` from its variables."""
  step_fn = step_fn or trainer(config, subject.model)
  subject = with_rate(config, subject, lr)
  for _ in range(num_steps):
    subject = stepped(config, dataset, subject, step_fn)
  return subject


def measured_seed(run: checkpoint.Run, seed: int | None) -> int:
  """The seed whose members an analysis of `run` measures: `seed`, else the run's first."""
  return run.config.sweep.seeds[0] if seed is None else seed


def at_checkpoint(run: checkpoint.Run, seed: int | None = None) -> Iterator[Subject]:
  """The run's members of `seed` (default: the first), one per (arm, rate), in rate order.

  Their identity carries the rate, so that figures drawn per arm
  (`plots.by_arm`) show one panel per (arm, rate).
  """
  seed = measured_seed(run, seed)
  for arm in run.arms:
    label = arm_label(run.config, arm)
    for m in arm.members:
      if m.seed == seed:
        model, state = run.unrolled(m.index)
        yield Subject(label, arm.model_config, model, m.seed, m.lr, run.step, state, m.index)


def grouped(arms: dict[str, dict[str, Any]], subject: Subject, key: str) -> list[dict]:
  """The list under `key` of the subject's arm record in `arms`, created on first use.

  An arm record is the arm's model config, its label, and that list of lines.
  """
  arm = arms.setdefault(subject.arm, {**subject.model_config, "arm": subject.arm, key: []})
  return arm[key]


def live_at_checkpoint(run: checkpoint.Run, seed: int | None = None) -> list[Subject]:
  """`at_checkpoint`'s members that have not diverged (a diverged one is frozen, not measurable)."""
  return [s for s in at_checkpoint(run, seed) if not s.diverged]


def entry_points(name: str, measure: Callable[..., dict[str, Any]],
                 figures: Callable[..., list[str]]) -> tuple[Callable, Callable]:
  """`run` and `from_checkpoint` of an experiment that measures members as they are.

  `measure(config, subjects, dataset, step, seed)` gets every member at
  initialisation (step 0, seed None), or one seed's live members of a
  checkpoint at its step, and measures them on training batch `step` of
  that seed's stream (`train_batch`): the batch they would train on next.
  """
  def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    dataset = load_then_prepare(config, workdir)
    result = measure(config, at_init(config), dataset, 0, None)
    experiments.write(workdir, name, result, figures)
    return result

  def from_checkpoint(run_: checkpoint.Run, config: ml_collections.ConfigDict,
                      dataset: data.Dataset, seed: int | None = None) -> dict[str, Any]:
    seed = measured_seed(run_, seed)
    return measure(config, live_at_checkpoint(run_, seed), dataset, run_.step, seed)

  return run, from_checkpoint


def per_model(analysis: Callable[..., Any]) -> Callable[..., Any]:
  """`analysis(model, variables, *args)` jitted once per model, variables traced."""
  @functools.lru_cache(maxsize=None)
  def compiled(model: nn.Module) -> Callable[..., Any]:
    return jax.jit(lambda variables, *args: analysis(model, variables, *args))
  return lambda model, variables, *args: compiled(model)(variables, *args)


def measure_each(subjects: Iterable[Subject], analysis: Callable[..., Any], *args: Any
                 ) -> Iterator[tuple[Subject, Any]]:
  """(subject, analysis(model, variables, *args) fetched to the host) for each subject.

  The analysis is jitted once per model and takes the variables as an argument.
  Each subject measured is logged, out of the total, with an ETA, under the
  name of the analysis' module ("activations: 2/6 ...").
  """
  compiled = per_model(analysis)
  subjects = list(subjects)
  progress = logs.Progress(getattr(analysis, "__module__", "measure").rsplit(".", 1)[-1],
                           len(subjects))
  for subject in subjects:
    out = jax.device_get(compiled(subject.model, subject.variables, *args))
    progress.done(describe(subject))
    yield subject, out


def describe(subject: Subject) -> str:
  """E.g. "norm=batch, lr 0.05, seed 0, step 600": which member a progress line is about."""
  parts = [subject.arm] if subject.arm else []
  if subject.lr is not None:
    parts.append(f"lr {subject.lr:g}")
  return ", ".join(parts + [f"seed {subject.seed}", f"step {subject.step}"])


def when(step: int) -> str:
  """Where in training a measurement was taken, for figure titles."""
  if step == 0:
    return "at initialisation (step 0, training batch 0)"
  return f"at step {step} (training batch {step})"
