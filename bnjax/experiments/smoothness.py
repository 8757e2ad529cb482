"""Landscape smoothness over training (Santurkar et al. 2018, figure 4), BN vs none.

At each checkpoint of a sweep, each measured member takes steps θ − ηg of
several sizes η along its minibatch gradient g, as `divergence` does at one
point, on the training batch it would train on next, and records

* the loss landscape: min and max of L(θ − ηg) over the η grid;
* gradient predictiveness: min and max of ‖∇L(θ − ηg) − g‖ over the grid;
* effective β-smoothness: max over the grid of ‖∇L(θ − ηg) − g‖ / ‖ηg‖.

The grid is Santurkar et al.'s by default: η from 0.5 to 4 times the
member's learning rate (`analysis.eta_unit="lr"`, `eta_low`, `eta_high`,
`num_etas` points, log-spaced; `eta_unit="absolute"` takes eta_low and
eta_high as step sizes), the range their figure 4 uses for a VGG, whose
step they cap at 0.4 × the gradient because the network without BN does
worse at larger steps. The effective β-smoothness depends on the grid: below about 1e-4 a
step crosses few of the ReLUs' kinks, each of which changes the gradient by
an amount that does not shrink with η, so ‖∇L(θ − ηg) − g‖ / ‖ηg‖ grows as
η falls and the maximum sits at the smallest step, a property of the grid
rather than of the network. Steps below the range (`small_num_etas` of
them, from `small_eta_low` in the same unit up to eta_low) are therefore
measured too but reported apart (`small_beta_smoothness`), never mixed into
the β of the range.

A point whose forward pass overflowed is non-finite (`bnjax.forward`): it
is counted in `num_nonfinite` and left out of the ranges, never reported as
a finite loss.

`python -m bnjax.main --config=configs/smoothness.py` trains the sweep
(`loop.train_sweep`), then measures every checkpoint it kept
(`from_workdir`, which also measures any other sweep's workdir:
`python -m bnjax.analyze --workdir=DIR --analyses=smoothness --all_steps`).
Without `--all_steps`, `bnjax.analyze` measures the one checkpoint step it
restores, in the same schema (one step per series).
Measured: one seed's members (the first, or `--seed`), each (arm, rate) with
`analysis.rates="all"`, or only each arm at its usual rate
(`analysis.lr_by_norm`) with "usual". A diverged member is frozen by the
loop: it is measured up to the last checkpoint before it diverged and
listed under `diverged`.

Writes DIR/analysis/<stem>.json: {name, bn_mode, batch_size, data_stream,
eta_range: {unit, low, high, num, source}, small_step_range: {unit, low,
high, num}, threshold, rates, steps, arms: [{arm, <model fields>, series:
[{arm, seed, lr, member, status, diverged_step, etas, small_etas, steps,
loss, loss_min, loss_max, num_nonfinite, grad_change_min, grad_change_max,
beta_smoothness, max_stable_eta, loss_SxE, grad_change_SxE,
small_beta_smoothness, small_beta_SxE}]}], diverged: [{arm, seed, lr,
member, diverged_step}]}; `etas` and `small_etas` are the series' step
sizes; every per-step field has one entry per measured step, null where
nothing finite was measured. Figure: DIR/figures/<stem>.png.
"""

import math
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from bnjax import checkpoint, data, errors, experiments, loop, models, plots, sweep
from bnjax import workdir as workdir_lib
from bnjax.analysis import landscape
from bnjax.experiments import _members, divergence

NAME = "smoothness"
RECORDINGS = ()  # the loss and its gradient only
RATES = ("all", "usual")
ETA_UNITS = ("lr", "absolute")
ETA_SOURCE = ("Santurkar et al. 2018 (arXiv 1805.11604), figure 4: eta in [0.5, 4] x the"
              " learning rate for their VGG, the step capped at 0.4 x the gradient")
BN_MODE = "train (batch statistics of the minibatch, recomputed at each θ − ηg)"
# Per-step numbers of a series, in the order the JSON lists them.
PER_STEP = ("loss", "loss_min", "loss_max", "num_nonfinite", "grad_change_min",
            "grad_change_max", "beta_smoothness", "max_stable_eta", "loss_SxE",
            "grad_change_SxE", "small_beta_smoothness", "small_beta_SxE")


def defaults() -> ml_collections.ConfigDict:
  """Santurkar et al.'s range, η in [0.5, 4] x each member's rate (8 points), and 3 smaller
  steps down to 1e-3 x the rate reported apart; every (arm, rate) measured."""
  return ml_collections.ConfigDict(dict(
      eta_unit="lr", eta_low=0.5, eta_high=4.0, num_etas=8, small_eta_low=1e-3,
      small_num_etas=3, threshold=landscape.DIVERGENCE_THRESHOLD, rates="all",
      lr_by_norm=ml_collections.ConfigDict(divergence.LR_BY_NORM)))


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError with one sentence for a bad `config.analysis` value."""
  a = config.analysis
  if a.rates not in RATES:
    raise errors.ConfigError(f"config.analysis.rates={a.rates!r} is not one of {list(RATES)};"
                             " use 'all' (every rate) or 'usual' (each arm's lr_by_norm rate).")
  if a.eta_unit not in ETA_UNITS:
    raise errors.ConfigError(
        f"config.analysis.eta_unit={a.eta_unit!r} is not one of {list(ETA_UNITS)}; use 'lr'"
        " (eta_low and eta_high are multiples of each member's rate) or 'absolute'.")
  if not (isinstance(a.num_etas, int) and a.num_etas >= 2):
    raise errors.ConfigError(f"config.analysis.num_etas={a.num_etas!r} cannot span a range;"
                             " give an integer >= 2.")
  if not (0 < a.eta_low < a.eta_high < math.inf):
    raise errors.ConfigError(
        f"config.analysis.eta_low={a.eta_low!r} and eta_high={a.eta_high!r} are no η range;"
        " give finite step sizes with 0 < eta_low < eta_high.")
  if not (isinstance(a.small_num_etas, int) and a.small_num_etas >= 0):
    raise errors.ConfigError(
        f"config.analysis.small_num_etas={a.small_num_etas!r} is not a count; give an integer"
        " >= 0 (0 measures no step below the range).")
  if a.small_num_etas and not 0 < a.small_eta_low < a.eta_low:
    raise errors.ConfigError(
        f"config.analysis.small_eta_low={a.small_eta_low!r} does not lie below"
        f" eta_low={a.eta_low!r}; give 0 < small_eta_low < eta_low, or small_num_etas=0.")


def step_grids(config: ml_collections.ConfigDict, lr: float) -> tuple[np.ndarray, np.ndarray]:
  """(the range's step sizes, the smaller steps' step sizes) of a member at rate `lr`.

  Log-spaced; the small steps run from small_eta_low up to, not including,
  eta_low. With eta_unit "lr" both scale with `lr`.
  """
  a = config.analysis
  scale = lr if a.eta_unit == "lr" else 1.0
  etas = landscape.log_grid(a.eta_low, a.eta_high, a.num_etas) * scale
  small = np.geomspace(a.small_eta_low, a.eta_low, a.small_num_etas + 1)[:-1] * scale
  return etas, small


def eta_ranges(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The JSON's statement of both grids, in `analysis.eta_unit`."""
  a = config.analysis
  return {"eta_range": {"unit": a.eta_unit, "low": a.eta_low, "high": a.eta_high,
                        "num": a.num_etas, "source": ETA_SOURCE},
          "small_step_range": {"unit": a.eta_unit, "low": a.small_eta_low, "high": a.eta_low,
                               "num": a.small_num_etas}}


def check_rates(config: ml_collections.ConfigDict) -> None:
  """With rates "usual", refuses a sweep that trains some arm without its usual rate."""
  if config.analysis.rates != "usual":
    return
  lrs = [float(lr) for lr in config.sweep.lrs]
  for arm in sweep.make_arms(config):
    lr = divergence.usual_rate(config, arm.model_config)
    if not any(math.isclose(lr, other, rel_tol=1e-6) for other in lrs):
      raise errors.ConfigError(
          f"config.analysis.rates='usual' measures norm={arm.model_config.get('norm')} at"
          f" {lr:g}, which config.sweep.lrs={tuple(lrs)} lacks; add it, or set rates='all'.")


def selected(config: ml_collections.ConfigDict, subjects: Iterable[_members.Subject]
             ) -> Iterator[_members.Subject]:
  """The subjects `analysis.rates` asks for: all, or those at their arm's usual rate."""
  for subject in subjects:
    usual = lambda: divergence.usual_rate(config, subject.model_config)
    if config.analysis.rates == "all" or math.isclose(subject.lr, usual(), rel_tol=1e-6):
      yield subject


def _largest(values_E: np.ndarray) -> float | None:
  finite = values_E[np.isfinite(values_E)]
  return float(finite.max()) if finite.size else None


def summarize(line: dict[str, Any], num_small: int = 0,
              threshold: float = landscape.DIVERGENCE_THRESHOLD) -> dict[str, Any]:
  """One step's numbers from a `divergence.measure` line, on the host.

  The line's first `num_small` points are the steps below the range: only
  their β is kept (`small_beta_*`); every other number is over the range's
  points. A point is finite when its loss is (`landscape.summarize` has set
  the loss of every point with a non-finite loss or gradient to NaN); the
  ranges are over finite points only and None when there is none.
  """
  eta_E = np.asarray(line["eta_E"], np.float64)[num_small:]
  loss_E = np.asarray(line["loss_E"], np.float64)[num_small:]
  change_E = np.asarray(line["grad_change_E"], np.float64)[num_small:]
  beta_all_E = np.asarray(line["beta_E"], np.float64)
  small_E, beta_E = beta_all_E[:num_small], beta_all_E[num_small:]
  finite_E = np.isfinite(loss_E) & np.isfinite(change_E)
  def extreme(values_E: np.ndarray, pick) -> float | None:
    return float(pick(values_E[finite_E])) if finite_E.any() else None
  relative_E = np.where(finite_E, loss_E, np.nan) / float(line["loss"])
  return {"loss": float(line["loss"]),
          "loss_min": extreme(loss_E, np.min), "loss_max": extreme(loss_E, np.max),
          "num_nonfinite": int((~finite_E).sum()),
          "grad_change_min": extreme(change_E, np.min),
          "grad_change_max": extreme(change_E, np.max),
          "beta_smoothness": _largest(np.where(finite_E, beta_E, np.nan)),
          "max_stable_eta": float(landscape.largest_stable_eta(eta_E, relative_E, threshold)),
          "loss_SxE": np.where(finite_E, loss_E, np.nan).tolist(),
          "grad_change_SxE": np.where(finite_E, change_E, np.nan).tolist(),
          "small_beta_smoothness": _largest(small_E),
          "small_beta_SxE": np.where(np.isfinite(small_E), small_E, np.nan).tolist()}


def measure_point(config: ml_collections.ConfigDict, subject: _members.Subject,
                  dataset: data.Dataset) -> dict[str, Any]:
  """The subject's numbers at its step: `divergence.measure` on its next batch, summarized.

  One line over the small steps and the range together, so that the
  gradient at θ is taken once.
  """
  batch = _members.train_batch(config, dataset, subject.step, seed=subject.seed)
  etas, small = step_grids(config, subject.lr)
  line = divergence.measure(config, subject, *batch, np.concatenate([small, etas]))
  return summarize(line, len(small), config.analysis.threshold)


def _series(config: ml_collections.ConfigDict, arms: dict[str, dict[str, Any]],
            subject: _members.Subject) -> dict[str, Any]:
  """The subject's series record in its arm's record, created on first use."""
  series = _members.grouped(arms, subject, "series")
  for record in series:
    if record["member"] == subject.member:
      return record
  identity = {k: v for k, v in subject.identity().items() if k != "step"}
  etas, small = step_grids(config, subject.lr)
  record = {**identity, "status": "trained", "diverged_step": None, "etas": etas.tolist(),
            "small_etas": small.tolist(), "steps": [], **{key: [] for key in PER_STEP}}
  series.append(record)
  return record


def measure_checkpoint(config: ml_collections.ConfigDict, run_: checkpoint.Run,
                       dataset: data.Dataset, arms: dict[str, dict[str, Any]],
                       seed: int | None = None) -> None:
  """Adds the selected members of `run_` at its step to their series in `arms`."""
  for subject in selected(config, _members.at_checkpoint(run_, seed)):
    record = _series(config, arms, subject)
    if subject.diverged:
      record["status"], record["diverged_step"] = "diverged", int(subject.state.diverged_step)
      logging.info("smoothness %s lr=%g diverged at step %d; not measured at step %d",
                   subject.arm, subject.lr, record["diverged_step"], run_.step)
      continue
    point = measure_point(config, subject, dataset)
    record["steps"].append(run_.step)
    for key in PER_STEP:
      record[key].append(point[key])
    logging.info("smoothness %s lr=%g step %d: loss %s..%s, β %s, %d non-finite",
                 subject.arm, subject.lr, run_.step, point["loss_min"], point["loss_max"],
                 point["beta_smoothness"], point["num_nonfinite"])


def _result(config: ml_collections.ConfigDict, arms: dict[str, dict[str, Any]],
            steps: list[int]) -> dict[str, Any]:
  diverged = [{k: s[k] for k in ("arm", "seed", "lr", "member", "diverged_step")}
              for arm in arms.values() for s in arm["series"] if s["status"] == "diverged"]
  return {"name": NAME, "bn_mode": BN_MODE, "batch_size": config.train.batch_size,
          "data_stream": config.train.data_stream, **eta_ranges(config),
          "threshold": config.analysis.threshold, "rates": config.analysis.rates,
          "steps": steps, "setting": plots.setting(config), "arms": list(arms.values()),
          "diverged": diverged}


def from_workdir(workdir: str, config: ml_collections.ConfigDict | None = None,
                 seed: int | None = None) -> dict[str, Any]:
  """Every checkpoint step of the sweep in `workdir`, oldest first, in the schema above.

  `config` gives the analysis settings (default: the run's config, with
  `defaults()` unless the run was this job).
  """
  run_config = checkpoint.read_config(workdir)
  if config is None:
    config = ml_collections.ConfigDict(run_config.to_dict())
    if config.job != NAME:  # another job's analysis settings are not these
      config.analysis = defaults()
  check(config)
  if seed is not None and seed not in run_config.sweep.seeds:
    raise errors.ConfigError(f"Seed {seed} is not a seed of the run in {workdir}; use one of"
                             f" {list(run_config.sweep.seeds)}.")
  steps = checkpoint.available_steps(workdir)
  if not steps:
    raise errors.WorkdirError(f"{workdir} has no complete checkpoint; train it first.")
  dataset = data.load(run_config.data)
  arms: dict[str, dict[str, Any]] = {}
  for step in steps:
    measure_checkpoint(config, checkpoint.load(workdir, step), dataset, arms, seed)
  return _result(config, arms, steps)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the sweep with the ordinary loop, then measures every checkpoint it kept."""
  check(config)
  check_rates(config)
  loop.train_sweep(config, workdir)
  result = from_workdir(workdir, config)
  experiments.write(workdir, NAME, result, figures)
  return result


def from_checkpoint(run_: checkpoint.Run, config: ml_collections.ConfigDict,
                    dataset: data.Dataset, seed: int | None = None) -> dict[str, Any]:
  """The members of `run_` at its one step: series of one point each."""
  check(config)
  arms: dict[str, dict[str, Any]] = {}
  measure_checkpoint(config, run_, dataset, arms, seed)
  return _result(config, arms, [run_.step])


def _series_label(arm: dict[str, Any], series: dict[str, Any]) -> str:
  label = f"{models.describe(arm)}, lr {series['lr']:g}"
  if series["status"] == "diverged":
    label += f" (diverged at step {series['diverged_step']})"
  return label


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """Santurkar et al.'s figure 4: three panels against the training step, one colour per series.

  (a) the loss over the η grid, shaded from min to max (and a bar at each
  step, so a one-step result shows its range too); (b) the gradient change
  ‖∇L(θ − ηg) − g‖, shaded likewise; (c) effective β-smoothness over the
  range (solid), and over the smaller steps (dotted), kept apart because
  there ReLU kinks make it a property of the grid. Log vertical axes. A step where some η overflowed gets a cross at the top
  of panel (a); a diverged member's colour gets a dotted line where it diverged.
  """
  fig, axes = plots.subplots(1, 3, figsize=(16, 4.6))
  loss_ax, change_ax, beta_ax = axes
  colour = 0
  for arm in result["arms"]:
    for series in arm["series"]:
      c, label = f"C{colour % 10}", _series_label(arm, series)
      colour += 1
      steps = np.asarray(series["steps"], float)
      for ax, key in ((loss_ax, "loss"), (change_ax, "grad_change")):
        low, high = plots.as_float(series[f"{key}_min"]), plots.as_float(series[f"{key}_max"])
        ax.fill_between(steps, low, high, color=c, alpha=0.3, linewidth=0)
        ax.vlines(steps, low, high, color=c, lw=2, alpha=0.5)  # the range at a lone step too
        ax.plot(steps, low, color=c, lw=0.8, marker=".")
        ax.plot(steps, high, color=c, lw=0.8, marker=".", label=label)
      beta_ax.plot(steps, plots.as_float(series["beta_smoothness"]), color=c, marker="o", ms=3,
                   label=label)
      if series["small_etas"]:
        beta_ax.plot(steps, plots.as_float(series["small_beta_smoothness"]), color=c, ls=":",
                     marker=".", ms=3)
      overflowed = steps[np.asarray(series["num_nonfinite"], int) > 0]
      loss_ax.plot(overflowed, np.ones_like(overflowed), ls="none", marker="x", color=c,
                   transform=loss_ax.get_xaxis_transform(), clip_on=False)
      if series["diverged_step"] is not None:
        for ax in axes:
          ax.axvline(series["diverged_step"], color=c, ls=":", lw=1)
  for ax, ylabel, title in (
      (loss_ax, "L(θ − ηg), min to max over η", "(a) loss landscape"),
      (change_ax, "‖∇L(θ − ηg) − g‖, min to max over η", "(b) gradient predictiveness"),
      (beta_ax, "max over η of ‖∇L(θ − ηg) − g‖ / ‖ηg‖", "(c) effective β-smoothness")):
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
  loss_ax.legend(fontsize=7)
  path = workdir_lib.figure_path(workdir, stem)
  steps = result["steps"]
  span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
  plots.save(fig, path, f"Landscape along −g at {span} (Santurkar et al. fig. 4):"
                        f" {_range_words(result)}, batch {result['batch_size']}, train-mode BN;"
                        " × = some η overflowed", result.get("setting"))
  return [path]


def _range_words(result: dict[str, Any]) -> str:
  """E.g. "η in [0.5, 4] × the member's rate (8 points); dotted β: 3 steps from 0.001 ×"."""
  grid, small = result["eta_range"], result["small_step_range"]
  unit = " × the member's rate" if grid["unit"] == "lr" else ""
  words = f"η in [{grid['low']:g}, {grid['high']:g}]{unit} ({grid['num']} points)"
  if small["num"]:
    words += f"; dotted β: {small['num']} smaller steps from {small['low']:g}{unit}"
  return words
