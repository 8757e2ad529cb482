"""Recomputes a training sweep's figures and analyses from its files.

    python -m bnjax.analyze --workdir=DIR [--step=N] [--analyses=divergence,sgd_noise]

Reads what `python -m bnjax.main --config=configs/lr_sweep.py --workdir=DIR`
wrote: the accuracy figure (F1) is redrawn from metrics.jsonl; the members
restored from the Orbax checkpoint at `--step` (default: the latest) are
measured with

* divergence (F4): the relative loss L(θ − ηg)/L(θ) along the gradient of
  the minibatch the member would train on next (training batch `step`),
  train-mode BN, with the Santurkar et al. measures;
* sgd_noise (F2): C, the bound α²C/|B| at the member's rate at that step, the
  measured noise and B_simple on a pool of training examples.

One member per (arm, rate) is measured (the first seed, or `--seed`);
diverged members are listed as such. Outputs: DIR/figures/accuracy.png,
DIR/analysis/<name>_step<N>.json and DIR/figures/<name>_step<N>.png.
"""

import sys
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging

from bnjax import checkpoint, data, errors, plots, sweep, train, workdir as workdir_lib
from bnjax.analysis import jobs_optim, landscape

ANALYSES = ("divergence", "sgd_noise")

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a finished or running sweep.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to analyse (default: the latest).")
_ANALYSES = flags.DEFINE_list("analyses", list(ANALYSES), f"Which of {ANALYSES} to run.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the members to measure (default: the first).")
_NUM_ETAS = flags.DEFINE_integer("num_etas", 25, "Points of the η grid (1e-5..1e-1).")
_POOL = flags.DEFINE_integer("pool_size", 256,
                             "Training examples standing in for the full set (F2).")
_BATCHES = flags.DEFINE_integer("num_train_batches", 16,
                                "Train-mode minibatch gradients per size (F2).")
flags.mark_flags_as_required(["workdir"])


def accuracy(workdir: str, config: ml_collections.ConfigDict) -> None:
  """F1 from metrics.jsonl and members.json."""
  plots.accuracy_figure(workdir_lib.read_metrics(workdir), workdir_lib.read_members(workdir),
                        sweep.arm_fields(config), workdir_lib.figure_path(workdir, "accuracy"),
                        config.train.num_steps)


def analysis_config(config: ml_collections.ConfigDict, run_step: int, seed: int | None = None,
                    num_etas: int = 25, pool_size: int = 256, num_train_batches: int = 16
                    ) -> ml_collections.ConfigDict:
  """The run's config with the `analysis` section the measurements read."""
  config = ml_collections.ConfigDict(config.to_dict())
  pool = min(pool_size, config.data.synthetic_train_size if config.data.name == "synthetic"
             else pool_size)
  config.analysis = ml_collections.ConfigDict(dict(
      eta_low=1e-5, eta_high=1e-1, num_etas=num_etas, threshold=landscape.DIVERGENCE_THRESHOLD,
      pool_size=pool, num_batches=4096, num_train_batches=num_train_batches,
      big_batch=min(4 * config.train.batch_size, pool), chunk=32, seed=0, train_steps=run_step,
      member_seed=config.sweep.seeds[0] if seed is None else seed))
  return config


def chosen_members(run: checkpoint.Run, seed: int) -> list[tuple[sweep.Arm, list[int]]]:
  """Per arm, the member indices of seed `seed`, in rate order."""
  return [(arm, [m.index for m in arm.members if m.seed == seed]) for arm in run.arms]


def _is_diverged(run: checkpoint.Run, member: int) -> bool:
  return bool(run.member_state(member)["diverged"])


def divergence(run: checkpoint.Run, config, dataset: data.Dataset) -> dict[str, Any]:
  """F4 at the checkpoint: one line per member, one panel per arm."""
  a = config.analysis
  etas = tuple(float(e) for e in landscape.log_grid(a.eta_low, a.eta_high, a.num_etas))
  images, labels = data.train_batch(dataset, config.train.data_seed, run.step,
                                    config.train.batch_size, config.data.augmentation)
  arms = []
  for arm, members in chosen_members(run, a.member_seed):
    lines = []
    for member in members:
      lr = run.members[member]["lr"]
      if _is_diverged(run, member):
        logging.info("divergence: member %d (lr %g) diverged; skipped", member, lr)
        continue
      found = landscape.along_gradient_host(run.model(member), run.variables(member),
                                            images, labels, etas, a.threshold)
      lines.append({"member": member, "lr": lr, "minibatch": run.step + 1, "step": run.step,
                    "label": f"lr {lr:g}", **jax.device_get(found)})
    arms.append({**arm.model_config, "minibatches": lines})
  return {"name": "divergence", "step": run.step, "threshold": a.threshold,
          "bn_mode": "train (batch statistics of the minibatch)", "arms": arms}


def sgd_noise(run: checkpoint.Run, config, dataset: data.Dataset) -> dict[str, Any]:
  """F2 at the checkpoint, each member at its base rate."""
  n = config.analysis.pool_size
  pool = (data.normalize(dataset.train.images_Nx32x32x3[:n], dataset), dataset.train.labels_N[:n])
  arms = []
  for arm, members in chosen_members(run, config.analysis.member_seed):
    program, records = jobs_optim.NoiseProgram(config, sweep.build_model(arm, config)), []
    for member in members:
      base_lr = run.members[member]["lr"]
      lr = base_lr * float(train.lr_factor(run.step, config.train))  # the rate of the next step
      record = {"member": member, "base_lr": base_lr, "lr": lr,
                "diverged": _is_diverged(run, member)}
      if not record["diverged"]:
        record.update(jax.device_get(jobs_optim.noise_member(
            config, program, run.member_state(member), pool, lr)))
      records.append(record)
    arms.append({**arm.model_config, "members": records})
  return {"name": "sgd_noise", "step": run.step, "batch_size": config.train.batch_size,
          "pool_size": n, "train_steps": run.step,
          "bn_mode": "per-example gradients with BN statistics of the pool held fixed;"
                     " measured_train_mode uses train-mode minibatch gradients",
          "arms": arms}


FIGURES = {"divergence": plots.divergence_figure, "sgd_noise": plots.sgd_noise_figure}
MEASURES = {"divergence": divergence, "sgd_noise": sgd_noise}


def analyze(workdir: str, step: int | None = None, analyses: tuple[str, ...] = ANALYSES,
            **settings: Any) -> list[str]:
  """Writes the figures and analyses of `workdir`; returns the files written.

  `settings` are `analysis_config`'s keywords (seed, num_etas, pool_size,
  num_train_batches).
  """
  unknown = sorted(set(analyses) - set(ANALYSES))
  if unknown:
    raise errors.ConfigError(
        f"Unknown analyses {unknown} (--analyses); use some of {list(ANALYSES)}.")
  config = checkpoint.read_config(workdir)
  accuracy(workdir, config)
  written = [workdir_lib.figure_path(workdir, "accuracy")]
  if not analyses:
    return written
  run = checkpoint.load(workdir, step)
  config = analysis_config(run.config, run.step, **settings)
  dataset = data.load(config.data)
  for name in analyses:
    result = MEASURES[name](run, config, dataset)
    stem = f"{name}_step{run.step}"
    written.append(workdir_lib.write_analysis(workdir, stem, result))
    FIGURES[name](workdir_lib.jsonable(result), workdir_lib.figure_path(workdir, stem))
    written.append(workdir_lib.figure_path(workdir, stem))
  return written


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    written = analyze(_WORKDIR.value, _STEP.value, tuple(_ANALYSES.value), seed=_SEED.value,
                      num_etas=_NUM_ETAS.value, pool_size=_POOL.value,
                      num_train_batches=_BATCHES.value)
  except errors.BnjaxError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  for path in written:
    logging.info("wrote %s", path)


if __name__ == "__main__":
  app.run(main)
