"""The training loop of a sweep: all arms advance step by step together.

Each arm has one compiled step for all its members. The host only dispatches
steps; it fetches metrics every `log_every` steps and evaluates every
`eval_every` steps (and at step 0 and the end).
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from bnjax import data, executor as executor_lib, plots, sweep, train, workdir as workdir_lib
from bnjax.models import make_model


@dataclasses.dataclass
class ArmRun:
  """An arm and the executor that holds and advances its members."""

  arm: sweep.Arm
  executor: executor_lib.ArmExecutor


def build_arm(arm: sweep.Arm, config: ml_collections.ConfigDict) -> ArmRun:
  """Initialises an arm's members; compiles nothing yet (jit is lazy)."""
  model = make_model(arm.model_config, num_classes=data.NUM_CLASSES,
                     dtype=config.train.compute_dtype)
  tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
  size = executor_lib.chunk_size(config.executor, len(arm.members), config.chunk_size)
  return ArmRun(arm, executor_lib.ArmExecutor.create(
      step_fn=train.make_arm_step(model, tx, config.train.to_dict(), config.data.augmentation),
      eval_fn=train.make_arm_eval(model, config.eval_batch_size),
      states=train.init_arm(model, tx, arm.seeds, arm.lrs),
      size=size))


def _member_status(run: ArmRun) -> list[tuple[bool, int]]:
  states = run.executor.states
  diverged, steps = jax.device_get((states["diverged"], states["diverged_step"]))
  return [(bool(d), int(s)) for d, s in zip(diverged, steps)]


def members_table(runs: list[ArmRun], fields: tuple[str, ...], finished: bool) -> list[dict]:
  """members.json records: identity, status and diverged_step."""
  records = []
  for run in runs:
    for member, (diverged, step) in zip(run.arm.members, _member_status(run)):
      status = "diverged" if diverged else ("trained" if finished else "running")
      records.append({**member.record(fields), "status": status,
                      "diverged_step": step if diverged else None})
  return records


def _metric_records(run: ArmRun, step: int, interval_start: int, fields: tuple[str, ...],
                    lr_factor: float, train_means: dict | None, test: dict | None) -> list[dict]:
  """One metrics.jsonl record per member still training at `step`.

  `step` counts completed updates, and the train metrics are means over
  updates interval_start..step-1. A member that diverged before that
  interval is left out: its curves end where it diverged.
  """
  records = []
  for i, (member, (diverged, d_step)) in enumerate(zip(run.arm.members, _member_status(run))):
    if diverged and d_step < interval_start:
      continue
    record = {"step": step, **member.record(fields), "learning_rate": member.lr * lr_factor}
    for source in (train_means, test):
      if source is not None:
        record.update({k: float(v[i]) for k, v in source.items()})
    records.append(record)
  return records


def train_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs the whole sweep into `workdir`; returns the final members table."""
  dataset = data.load(config.data)  # fails fast, before the workdir is touched
  workdir_lib.prepare(workdir, config)
  fields = sweep.arm_fields(config)
  runs = [build_arm(arm, config) for arm in sweep.make_arms(config)]
  num_members = sum(len(r.arm.members) for r in runs)
  workdir_lib.write_members(workdir, members_table(runs, fields, finished=False))
  writer = workdir_lib.MetricsWriter(workdir)
  num_steps = config.train.num_steps
  logging.info("Training %d members in %d arm(s) for %d steps.", num_members, len(runs), num_steps)

  def log(step: int, interval_start: int, fetched: dict[int, dict]) -> None:
    factor = float(train.lr_factor(max(step - 1, 0), config.train))
    for run in runs:
      test = run.executor.evaluate(dataset) if _is_eval(step, config) else None
      writer.write(_metric_records(run, step, interval_start, fields, factor,
                                   fetched.get(run.arm.index), test))

  log(0, 0, {})
  last_log_step, last_log_time = 0, time.perf_counter()
  for step in range(num_steps):
    step_array = jnp.asarray(step, jnp.int32)
    for run in runs:
      run.executor.step(dataset, step_array)
    done = step + 1
    if done % config.log_every == 0 or done == num_steps or _is_eval(done, config):
      fetched = {run.arm.index: run.executor.take_metric_means(done - last_log_step)
                 for run in runs}
      log(done, last_log_step, fetched)
      now = time.perf_counter()
      _log_progress(done, num_steps, done - last_log_step, now - last_log_time,
                    config.train.batch_size * num_members)
      last_log_step, last_log_time = done, now
      workdir_lib.write_members(workdir, members_table(runs, fields, finished=False))
  writer.close()
  table = members_table(runs, fields, finished=True)
  workdir_lib.write_members(workdir, table)
  plots.accuracy_figure(workdir_lib.read_metrics(workdir), table, fields,
                        workdir_lib.figure_path(workdir, "accuracy"), num_steps)
  return table


def _is_eval(step: int, config: ml_collections.ConfigDict) -> bool:
  return step % config.eval_every == 0 or step == config.train.num_steps


def _log_progress(step: int, num_steps: int, steps: int, seconds: float,
                  images_per_step: int) -> None:
  rate = steps / max(seconds, 1e-9)
  eta = (num_steps - step) / rate
  logging.info("step %d/%d  %.2f steps/s  %.0f images/s (all members)  ETA %s",
               step, num_steps, rate, rate * images_per_step, _format_duration(eta))


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
