"""Internal covariate shift, measured (Santurkar et al. 2018, definition 2.1, figure 5).

From initialisation (`python -m bnjax.main --config=configs/ics.py`): one
member per arm (seed `sweep.seeds[0]`) trains at its arm's constant rate
(`analysis.lr_by_norm`, the run's SGD with momentum) and is measured at each
of `analysis.steps`. From a checkpoint (`python -m bnjax.analyze
--analyses=ics`): each live member of one seed, at the rate of its next step.
The measurement (`bnjax.analysis.ics`), on `analysis.num_minibatches`
training batches from the member's step on: per weight layer, ‖G − G'‖, the
cosine between G and G', and ‖G‖, where G' is the layer's gradient after the
layers before it took this step's plain SGD update at the member's rate.
Writes DIR/analysis/<stem>.json ({name, batch_size, steps, bn_mode, arms:
[{arm, norm, ..., lines: [{arm, seed, lr, step, minibatch[, member], loss,
finite, layers, l2, cosine, grad_norm}]}]}) and the figure <stem>_f5.
"""

from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from bnjax import data, errors, experiments, logs, plots, sweep, train, workdir as workdir_lib
from bnjax.analysis import ics
from bnjax.experiments import _members
from bnjax.experiments.divergence import LR_BY_NORM, usual_rate

BN_MODE = "train (batch statistics of the minibatch); G' after plain SGD on the earlier layers"
RECORDINGS = ()  # weight layers' gradients only


def defaults() -> ml_collections.ConfigDict:
  """Steps from initialisation into training; each arm at its usual rate (divergence's)."""
  return ml_collections.ConfigDict(dict(
      steps=(0, 100, 1000), num_minibatches=4, lr_by_norm=ml_collections.ConfigDict(LR_BY_NORM)))


# Jitted once per model for the whole run, not once per measurement.
_SHIFT = _members.per_model(ics.internal_covariate_shift)


def measure_subject(config: ml_collections.ConfigDict, subject: _members.Subject,
                    dataset: data.Dataset, eta: float) -> list[dict[str, Any]]:
  """The subject's lines: one per minibatch (training batches step, step + 1, ...)."""
  names = ics.layer_names(subject.model, subject.variables["params"])
  lines = []
  for k in range(config.analysis.num_minibatches):
    images, labels = _members.train_batch(config, dataset, subject.step + k, seed=subject.seed)
    out = jax.device_get(_SHIFT(subject.model, subject.variables, images, labels,
                                np.float32(eta)))
    line = {**subject.identity(), "lr": eta, "minibatch": k, "loss": out["loss"],
            "finite": bool(out["finite"]), "layers": names, "l2": out["l2_L"],
            "cosine": out["cosine_L"], "grad_norm": out["grad_norm_L"]}
    logging.info("ics %s step %d minibatch %d: loss %.3g, l2 %s", subject.arm, subject.step, k,
                 float(out["loss"]), np.round(out["l2_L"], 4))
    lines.append(line)
  return lines


def measure(config: ml_collections.ConfigDict, subjects: Iterable[_members.Subject],
            dataset: data.Dataset, step: int, seed: int | None = None) -> dict[str, Any]:
  """Every subject (all at `step`) at the rate of its next step, on its own stream's batches.

  That is its base rate times the schedule's; at initialisation, its arm's rate.
  """
  factor = float(train.lr_factor(step, config.train))
  arms: dict[str, dict[str, Any]] = {}
  subjects = list(subjects)
  progress = logs.Progress("ics", len(subjects))
  for subject in subjects:
    lr = subject.lr if subject.lr is not None else usual_rate(config, subject.model_config)
    _members.grouped(arms, subject, "lines").extend(
        measure_subject(config, subject, dataset, lr * factor))
    progress.done(_members.describe(subject))
  return _result(config, arms, (step,))


def _result(config: ml_collections.ConfigDict, arms: dict[str, dict[str, Any]],
            steps: tuple[int, ...]) -> dict[str, Any]:
  return {"name": "ics", "batch_size": config.train.batch_size, "steps": list(steps),
          "bn_mode": BN_MODE, "setting": plots.setting(config), "arms": list(arms.values())}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """From initialisation: one member per arm, trained at its arm's rate, measured at each step."""
  steps = tuple(sorted(int(s) for s in config.analysis.steps))
  if steps and steps[0] < 0:
    raise errors.ConfigError(f"config.analysis.steps {steps} has a negative step; measure at"
                             " steps >= 0.")
  for arm in sweep.make_arms(config):  # before the workdir is touched
    usual_rate(config, arm.model_config)
  dataset = _members.load_then_prepare(config, workdir)
  arms: dict[str, dict[str, Any]] = {}
  for subject in _members.at_init(config, seeds=(int(config.sweep.seeds[0]),)):
    lr = usual_rate(config, subject.model_config)
    subject = _members.with_rate(config, subject, lr)
    step_fn = _members.trainer(config, subject.model)
    for step in steps:
      while subject.step < step and not subject.diverged:
        subject = _members.stepped(config, dataset, subject, step_fn)
      if subject.diverged:
        logging.info("ics %s diverged before step %d; not measured", subject.arm, step)
        break
      _members.grouped(arms, subject, "lines").extend(
          measure_subject(config, subject, dataset, lr))
  result = _result(config, arms, steps)
  experiments.write(workdir, "ics", result, figures)
  return result


_, from_checkpoint = _members.entry_points("ics", measure, lambda *_: [])


def _mean_by_step(lines: list[dict[str, Any]], key: str) -> dict[int, np.ndarray]:
  """{step: per-layer mean of `key` over the finite minibatches at that step}."""
  by_step: dict[int, list[np.ndarray]] = {}
  for line in lines:
    if line["finite"]:
      by_step.setdefault(line["step"], []).append(plots.as_float(line[key]))
  return {s: np.mean(v, axis=0) for s, v in sorted(by_step.items())}


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """Santurkar et al.'s figure 5: per layer ‖G − G'‖ and cos(G, G'), BN vs none, per step.

  One row per step; the ℓ2 panel is on a log axis, so layer 1 (0 by
  definition) is not drawn there. Means over the minibatches.
  """
  arms, steps = result["arms"], result["steps"]
  if not arms or not steps:
    return []
  fig, axes = plots.subplots(len(steps), 2, figsize=(11, 3.4 * len(steps)), squeeze=False)
  for i, arm in enumerate(arms):
    l2, cos = _mean_by_step(arm["lines"], "l2"), _mean_by_step(arm["lines"], "cosine")
    for row, step in enumerate(steps):
      if step not in l2:
        continue
      layers = np.arange(1, len(l2[step]) + 1)
      shown = l2[step] > 0
      axes[row, 0].plot(layers[shown], l2[step][shown], "o-", ms=3, color=f"C{i}",
                        label=arm["arm"])
      axes[row, 1].plot(layers, cos[step], "o-", ms=3, color=f"C{i}", label=arm["arm"])
  for row, step in enumerate(steps):
    left, right = axes[row]
    left.set_yscale("log")
    left.set_ylabel("‖G − G'‖ (ℓ2)")
    right.set_ylabel("cos(G, G')")
    right.set_ylim(-1.05, 1.05)
    for ax, what in ((left, "ℓ2 difference"), (right, "cosine")):
      ax.set_title(f"{what}, step {step}", fontsize=10)
      ax.set_xlabel("weight layer (depth order)")
      ax.grid(alpha=0.3, which="both")
      ax.legend(fontsize=8)
  path = workdir_lib.figure_path(workdir, f"{stem}_f5")
  plots.save(fig, path, f"Internal covariate shift (Santurkar et al. def. 2.1) at steps"
                        f" {', '.join(map(str, steps))}, batch {result['batch_size']}",
             result.get("setting"))
  return [path]
