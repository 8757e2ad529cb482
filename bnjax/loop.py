"""The training loop of a sweep: all arms advance step by step together.

Each arm has one compiled step for all its members. The host only dispatches
steps; it fetches metrics every `log_every` steps and evaluates every
`eval_every` steps (and at step 0 and the end).
"""

import contextlib
import dataclasses
import signal
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from bnjax import checkpoint, curves, data, distributed, errors, plots, progress, sweep, train
from bnjax import executor as executor_lib, mesh as mesh_lib, workdir as workdir_lib


@dataclasses.dataclass
class ArmRun:
  """An arm and the executor that holds and advances its members."""

  arm: sweep.Arm
  executor: executor_lib.ArmExecutor


def build_arm(arm: sweep.Arm, config: ml_collections.ConfigDict, mesh: mesh_lib.Mesh) -> ArmRun:
  """Initialises an arm's members on `mesh`; compiles nothing yet (jit is lazy)."""
  model = sweep.build_model(arm, config)
  tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
  size = executor_lib.chunk_size(
      config.executor, mesh_lib.padded_count(len(arm.members), mesh), config.chunk_size,
      member_devices=mesh_lib.member_devices(mesh))
  return ArmRun(arm, executor_lib.ArmExecutor.create(
      step_fn=train.make_arm_step(
          model, tx, config.train.to_dict(), config.data.augmentation,
          executor_lib.loop_members(config.executor, config.map_batch_size), mesh,
          config.mesh.bn_statistics),
      eval_fn=train.make_arm_eval(model, config.eval_batch_size, mesh),
      states=train.init_arm(model, tx, arm.seeds, arm.lrs),
      size=size, mesh=mesh, streams=arm.seeds))


def _member_status(run: ArmRun) -> list[tuple[bool, int]]:
  diverged, steps = run.executor.divergence()
  return [(bool(d), int(s)) for d, s in zip(diverged, steps)]


def members_table(runs: list[ArmRun], fields: tuple[str, ...], finished: bool,
                  data_stream: str = "shared") -> list[dict]:
  """members.json records: identity, status, diverged_step, and the data stream it saw.

  `data_stream` is config.train.data_stream: "shared" (every member batch t
  of one stream) or "per_seed" (each seed its own).
  """
  records = []
  for run in runs:
    for member, (diverged, step) in zip(run.arm.members, _member_status(run)):
      status = "diverged" if diverged else ("trained" if finished else "running")
      records.append({**member.record(fields), "status": status,
                      "diverged_step": step if diverged else None, "data_stream": data_stream})
  return records


def _metric_records(run: ArmRun, status: list[tuple[bool, int]], step: int, interval_start: int,
                    fields: tuple[str, ...], lr_factor: float, train_means: dict | None,
                    test: dict | None) -> list[dict]:
  """One metrics.jsonl record per member still training at `step`.

  `step` counts completed updates, and the train metrics are means over
  updates interval_start..step-1; `status` is each member's (diverged,
  diverged_step). A member that diverged before that interval is left out:
  its curves end where it diverged.
  """
  records = []
  for i, (member, (diverged, d_step)) in enumerate(zip(run.arm.members, status)):
    if diverged and d_step < interval_start:
      continue
    record = {"step": step, **member.record(fields), "learning_rate": member.lr * lr_factor}
    for source in (train_means, test):
      if source is not None:
        record.update({k: float(v[i]) for k, v in source.items()})
    records.append(record)
  return records


class _StopSignals:
  """Notes SIGTERM (how clusters announce preemption) and SIGINT (Ctrl-C) instead of dying on them.

  Either makes the run save a checkpoint and stop (`errors.Preempted`, exit
  status 128 + the signal's number); a second Ctrl-C stops at once, without
  saving. Each process sees only its own signal. One process stops at the
  step after it; several agree at each `sync_point` (a log or checkpoint
  step, where they meet anyway) whether any of them saw one, so that all
  stop and save at the same step: the first such point after the signal, up
  to `log_every` steps on.
  """

  NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}

  def __enter__(self) -> "_StopSignals":
    self.received: int | None = None
    self._previous = {s: signal.signal(s, self._handle) for s in self.NAMES}
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self.received == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    if signum == signal.SIGINT:
      logging.warning("Ctrl-C: saving a checkpoint at the next step, then stopping; press Ctrl-C"
                      " again to stop at once, without saving.")
    self.received = self.received or signum

  def __exit__(self, *exc) -> None:
    # None: the previous handler was not Python's, and cannot be put back.
    for s, previous in self._previous.items():
      signal.signal(s, signal.SIG_DFL if previous is None else previous)

  def stops(self, sync_point: bool) -> bool:
    """Whether the run stops at this step; with several processes, a collective at sync points.

    Every process must call it at every step, with the same `sync_point`.
    """
    if jax.process_count() == 1:
      return self.received is not None  # no collective on the per-step path
    return sync_point and distributed.any_process(self.received is not None)

  def stopped(self, step: int, workdir: str) -> errors.Preempted:
    """The exception that ends the run after the save at `step`."""
    signum = self.received or signal.SIGTERM  # a process that saw none stops with the others
    return errors.Preempted(f"{self.NAMES[signum]} at step {step}: saved a checkpoint in"
                            f" {workdir}; rerun the same command to resume.", 128 + signum)


@contextlib.contextmanager
def _saving(manager) -> Iterator[None]:
  """Turns a failed checkpoint save (a full disk, say) into one sentence naming the directory.

  Orbax saves in the background and reports a failure at the next save or
  wait; the checkpoints saved before stay complete, and a rerun resumes from
  the latest.
  """
  try:
    yield
  except (errors.BnjaxError, KeyboardInterrupt):
    raise
  except Exception as e:  # Orbax and TensorStore raise many types
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    cause = ("the disk is full (No space left on device)" if "No space left" in text
             or "os_error_code='28'" in text else text[:300])
    raise errors.WorkdirError(
        f"Saving a checkpoint into {manager.directory} failed: {cause}; the checkpoints saved"
        " before are intact: fix that and rerun the same command to resume from the latest.")\
        from None


def _payload(runs: list[ArmRun]) -> list[dict]:
  """What a checkpoint holds of each arm, in buffers that training will not donate."""
  return [dict(zip(("states", "sums"), r.executor.snapshot())) for r in runs]


def _resume(runs: list[ArmRun], manager, workdir: str, mesh: mesh_lib.Mesh
            ) -> tuple[int, int] | None:
  """Restores the latest complete checkpoint into `runs`: (step, last_log_step).

  A checkpoint holds the members without padding, restored here onto every
  device of `mesh` and then laid out over it: whatever mesh saved it.
  """
  step = manager.latest_step()
  if step is None:
    return None
  arms, progress = checkpoint.restore(manager, step, _payload(runs), mesh_lib.replicated(mesh))
  for run, arm in zip(runs, arms):
    run.executor.load(arm["states"], arm["sums"])
  logging.info("Resuming %s from the checkpoint at step %d.", workdir, step)
  return progress["step"], progress["last_log_step"]


def train_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs the whole sweep into `workdir`, resuming from its latest checkpoint.

  Returns the final members table. Raises `Preempted` after saving when
  SIGTERM or SIGINT arrives, and WorkdirError when a save fails. In a
  multi-process run (`bnjax.distributed`) every process calls it alike: all
  fetch what is logged and save their parts of each checkpoint, and process
  0 alone claims and writes the workdir.
  """
  dataset = data.load(config.data)  # fails fast, before the workdir is touched
  mesh = mesh_lib.make_mesh(config.mesh)
  writes = distributed.is_writer()  # process 0 claims and writes the workdir (`workdir.claim`)
  workdir_lib.prepare(workdir, config)
  dataset = mesh_lib.place_replicated(dataset, mesh)
  fields = sweep.arm_fields(config)
  runs = [build_arm(arm, config, mesh) for arm in sweep.make_arms(config)]
  num_members = sum(len(r.arm.members) for r in runs)
  num_steps = config.train.num_steps
  manager = checkpoint.make_manager(workdir, config)
  with contextlib.ExitStack() as closing:  # however the run ends, saves finish and files close
    closing.callback(_close, manager)
    resumed = _resume(runs, manager, workdir, mesh)
    start, last_log_step = resumed or (0, 0)
    if writes:
      writer = workdir_lib.MetricsWriter(workdir, keep_through_step=start if resumed else None)
      closing.callback(writer.close)
      curve_writer = curves.open_writer(workdir, fields)  # None without tensorboardX
      if curve_writer is not None:
        closing.callback(curve_writer.close)

    # Every process fetches (a collective, `mesh_lib.fetch`); the writer writes.
    def log(step: int, interval_start: int, fetched: dict[int, dict]) -> list[str]:
      """Writes the step's metrics records; returns a progress line per arm."""
      factor = float(train.lr_factor(max(step - 1, 0), config.train))
      lines = []
      for run in runs:
        test = run.executor.evaluate(dataset) if _is_eval(step, config) else None
        status = _member_status(run)
        records = _metric_records(run, status, step, interval_start, fields, factor,
                                  fetched.get(run.arm.index), test)
        lines.append(progress.arm_line(progress.arm_label(run.arm.model_config, fields),
                                       fetched.get(run.arm.index), test,
                                       [diverged for diverged, _ in status]))
        if writes:
          writer.write(records)
          if curve_writer is not None:
            curve_writer.write(records)
      return lines

    def write_members(finished: bool) -> list[dict]:
      table = members_table(runs, fields, finished, config.train.data_stream)
      if writes:
        workdir_lib.write_members(workdir, table)
      return table

    def save(step: int, due: bool, preempted: bool = False) -> None:
      """Saves when `due` (`manager.should_save`, read before), and at any step on preemption.

      The payload copies every state, so it is built only for a save. bnjax
      notes SIGTERM itself; Orbax's PreemptionCheckpointingPolicy sees only
      JAX's multi-host preemption service, so a preempted save is forced.
      Every process saves (Orbax writes each one's part of the arrays).
      """
      if due or preempted:
        with _saving(manager):
          checkpoint.save(manager, step, _payload(runs),
                          {"step": step, "last_log_step": last_log_step}, force=preempted)

    write_members(finished=False)
    if not resumed:
      for line in [f"step 0/{num_steps}, before training:", *log(0, 0, {})]:
        logging.info("%s", line)
      save(0, manager.should_save(0))
    logging.info("Training %d members in %d arm(s), steps %d to %d.",
                 num_members, len(runs), start, num_steps)
    clock = progress.Clock()
    with _StopSignals() as signals:
      for step in range(start, num_steps):
        step_array = jnp.asarray(step, jnp.int32)
        for run in runs:
          run.executor.step(dataset, step_array)
        done = step + 1
        if step == start:  # one wait, so that compiling is timed apart from training
          jax.block_until_ready([run.executor.chunks for run in runs])
          logging.info("Step %d compiled and ran in %.1f s.", done, clock.started(done))
        logs = done % config.log_every == 0 or done == num_steps or _is_eval(done, config)
        if logs:
          fetched = {run.arm.index: run.executor.take_metric_means(done - last_log_step)
                     for run in runs}
          clock.trained()
          arm_lines = log(done, last_log_step, fetched)
          logging.info("%s", clock.line(done, num_steps, config.train.batch_size * num_members))
          for line in arm_lines:
            logging.info("%s", line)
          last_log_step = done
          write_members(finished=False)
        due = manager.should_save(done)
        preempted = signals.stops(sync_point=logs or due)  # read once: it forces the save
        save(done, due, preempted)
        if logs:
          clock.resumed()
        if preempted and done < num_steps:
          with _saving(manager):
            manager.wait_until_finished()
          raise signals.stopped(done, workdir)
    with _saving(manager):
      manager.wait_until_finished()
  table = write_members(finished=True)
  if writes:
    metrics = workdir_lib.read_metrics(workdir)
    plots.accuracy_figure(metrics, table, fields, workdir_lib.figure_path(workdir, "accuracy"),
                          num_steps, plots.training_setting(config))
    logging.info("Step %d: final accuracies per (arm, rate), means over the members that did"
                 " not diverge:", num_steps)
    for line in progress.summary_lines(metrics, table, fields):
      logging.info("  %s", line)
  return table


def _close(manager) -> None:
  with _saving(manager):
    manager.close()


def _is_eval(step: int, config: ml_collections.ConfigDict) -> bool:
  return step % config.eval_every == 0 or step == config.train.num_steps
