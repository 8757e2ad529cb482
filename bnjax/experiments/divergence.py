"""F4: the relative loss along the minibatch gradient, with and without BN.

From initialisation (`python -m bnjax.main --config=configs/divergence.py`):
one member per norm trains from seed `sweep.seeds[0]` at its normal rate
(`analysis.lr_by_norm`) with the usual SGD step, and before the updates of
`analysis.minibatches` the line θ − ηg is measured on that minibatch. From a
checkpoint (`python -m bnjax.analyze --analyses=divergence`): each member of
one seed is measured on the minibatch it would train on next.

Either way the result is one schema: per arm, `lines`, each one measurement
{arm, seed, lr, step, minibatch[, member], and `landscape.along_gradient`'s
numbers}, where minibatch k is update k − 1 (`step`), measured before it.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bnjax import checkpoint, data, errors, experiments, logs, models, plots, sweep
from bnjax import workdir as workdir_lib
from bnjax.analysis import common, landscape
from bnjax.experiments import _members

BN_MODE = "train (batch statistics of the minibatch)"
RECORDINGS = ()  # the loss and its gradient only


def defaults() -> ml_collections.ConfigDict:
  """The paper's grid: η in 1e-5..1e-1 (25 points), threshold 1e3, minibatches 1, 4, 7."""
  return ml_collections.ConfigDict(dict(
      minibatches=(1, 4, 7), eta_low=1e-5, eta_high=1e-1, num_etas=25,
      threshold=landscape.DIVERGENCE_THRESHOLD,
      lr_by_norm=ml_collections.ConfigDict(LR_BY_NORM)))


# Each arm's usual rate: the paper's 0.1 with BN and 1e-4 without; 0.1 for
# the normalisers and initialisations that are meant to replace BN (LayerNorm,
# GroupNorm, Fixup, SkipInit train at it in their papers); the paper's no-BN
# rate where BN is only in part of the network.
LR_BY_NORM = dict(batch=0.1, none=1e-4, layer=0.1, group=0.1, fixup=0.1, skipinit=0.1,
                  batch_first=1e-4, batch_last=1e-4, batch_except_last=1e-4, batch_head=1e-4)


def usual_rate(config: ml_collections.ConfigDict, model_config: dict[str, Any]) -> float:
  """The arm's usual rate, `analysis.lr_by_norm[norm]`; one sentence if it has none."""
  norm = model_config.get("norm")
  if norm not in config.analysis.lr_by_norm:
    raise errors.ConfigError(
        f"config.analysis.lr_by_norm has no rate for norm {norm!r} (the model"
        f" {models.describe(model_config)}); add one to the config's analysis.lr_by_norm.")
  return float(config.analysis.lr_by_norm[norm])


def etas(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  a = config.analysis
  return tuple(float(e) for e in landscape.log_grid(a.eta_low, a.eta_high, a.num_etas))


def along_gradient_host(model, variables, images_BxHxWxC: jax.Array, labels_B: jax.Array,
                        etas_E: Sequence[float], threshold: float = landscape.DIVERGENCE_THRESHOLD
                        ) -> dict[str, jax.Array]:
  """`landscape.along_gradient` with the loop over η on the host.

  XLA:CPU runs convolution gradients inside a loop body tens of times slower
  than outside one, so on a CPU each point is its own jitted call (one
  compile per model and shapes). The same dict as `along_gradient`.
  """
  loss, g = _jit_grad(model, variables, images_BxHxWxC, labels_B)
  eta_E = jnp.asarray(etas_E, jnp.float32)
  points = [_jit_point(model, variables, images_BxHxWxC, labels_B, g, eta) for eta in eta_E]
  loss_E, change_E = (jnp.stack(column) for column in zip(*points))
  return _jit_summary(loss, g, eta_E, loss_E, change_E, threshold)


def _summary(loss: jax.Array, g: Any, eta_E: jax.Array, loss_E: jax.Array, change_E: jax.Array,
             threshold: float) -> dict[str, jax.Array]:
  return landscape.summarize(loss, optax.tree.norm(g), eta_E, loss_E, change_E, threshold)


# One program, not a compile per eager op of the norm and summary (seconds on a CPU).
_jit_summary = jax.jit(_summary, static_argnums=5)
_jit_grad = jax.jit(common.loss_and_grad, static_argnums=0)
_jit_point = jax.jit(landscape.line_point, static_argnums=0)
_jit_line = jax.jit(landscape.along_gradient, static_argnums=(0, 4, 5))


def measure(config: ml_collections.ConfigDict, subject: _members.Subject, images: jax.Array,
            labels: jax.Array, etas_E: Sequence[float] | None = None) -> dict[str, Any]:
  """One line: the subject's landscape along the gradient of this minibatch.

  On `etas_E`, or by default the config's grid (`etas`).
  """
  a = config.analysis
  etas_E = etas(config) if etas_E is None else tuple(float(e) for e in etas_E)
  if jax.default_backend() == "cpu":
    found = along_gradient_host(subject.model, subject.variables, images, labels, etas_E,
                                a.threshold)
  else:
    found = _jit_line(subject.model, subject.variables, images, labels, etas_E, a.threshold)
  return {**subject.identity(), "minibatch": subject.step + 1, **jax.device_get(found)}


def _summary(subject: _members.Subject, line: dict[str, Any]) -> str:
  """E.g. "norm=batch, lr 0.01, seed 0, step 600, minibatch 601: loss 0.03, max stable η 0.1"."""
  return (f"{_members.describe(subject)}, minibatch {line['minibatch']}: loss {line['loss']:.3g},"
          f" max stable η {line['max_stable_eta']:.3g}")


def _result(config: ml_collections.ConfigDict, arms: dict[str, dict[str, Any]],
            **extra: Any) -> dict[str, Any]:
  return {"name": "divergence", "threshold": config.analysis.threshold, "bn_mode": BN_MODE,
          "setting": plots.setting(config), **extra, "arms": list(arms.values())}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """From initialisation: lines before the chosen updates of one member per norm."""
  for arm in sweep.make_arms(config):  # before the workdir is touched
    usual_rate(config, arm.model_config)
  dataset = _members.load_then_prepare(config, workdir)
  arms: dict[str, dict[str, Any]] = {}
  subjects = list(_members.at_init(config, seeds=(int(config.sweep.seeds[0]),)))
  progress = logs.Progress("divergence", len(subjects) * len(set(config.analysis.minibatches)))
  for subject in subjects:
    lr = usual_rate(config, subject.model_config)
    subject, step_fn = _members.with_rate(config, subject, lr), _members.trainer(config,
                                                                                 subject.model)
    for _ in range(max(config.analysis.minibatches)):
      if subject.step + 1 in config.analysis.minibatches:
        line = measure(config, subject, *_members.train_batch(config, dataset, subject.step,
                                                              seed=subject.seed))
        _members.grouped(arms, subject, "lines").append(line)
        progress.done(_summary(subject, line))
      subject = _members.stepped(config, dataset, subject, step_fn)
  result = _result(config, arms)
  experiments.write(workdir, "divergence", result, figures)
  return result


def from_checkpoint(run_: checkpoint.Run, config: ml_collections.ConfigDict,
                    dataset: data.Dataset, seed: int | None = None) -> dict[str, Any]:
  """Each live member of `seed` on the minibatch it would train on next (batch `run_.step`)."""
  seed = _members.measured_seed(run_, seed)
  images, labels = _members.train_batch(config, dataset, run_.step, seed=seed)
  arms: dict[str, dict[str, Any]] = {}
  skipped = []
  subjects = list(_members.at_checkpoint(run_, seed))
  progress = logs.Progress("divergence", len(subjects))
  for subject in subjects:
    lines = _members.grouped(arms, subject, "lines")
    if subject.diverged:
      skipped.append(subject.identity())
      progress.done(f"{_members.describe(subject)}: diverged in training, not measured")
    else:
      lines.append(measure(config, subject, images, labels))
      progress.done(_summary(subject, lines[-1]))
  return _result(config, arms, step=run_.step, diverged=skipped)


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """F4: relative loss L(θ − ηg)/L(θ) against η (log-log), one column per arm.

  Top row: one line per measurement, the divergence threshold dashed.
  Bottom row: gradient predictiveness ‖∇L(θ − ηg) − g‖ (Santurkar et al.).
  Lines are labelled by what varies within an arm: the minibatch or the rate.
  """
  arms = result["arms"]
  fig, axes = plots.subplots(2, len(arms), figsize=(5.2 * len(arms), 7.5), squeeze=False)
  for col, arm in enumerate(arms):
    top, bottom = axes[0, col], axes[1, col]
    for line in arm["lines"]:
      eta, name = plots.as_float(line["eta_E"]), _line_name(line, arm["lines"])
      top.plot(eta, plots.as_float(line["relative_loss_E"]), marker="o", ms=3,
               label=f"{name} (max stable η {plots.number(line['max_stable_eta'])})")
      bottom.plot(eta, plots.as_float(line["grad_change_E"]), marker="o", ms=3,
                  label=f"{name} (β-smoothness {plots.number(line['beta_smoothness'])})")
    top.axhline(result["threshold"], color="k", ls="--", lw=1, label="divergence threshold")
    top.axhline(1.0, color="gray", lw=0.5)
    rates = {line["lr"] for line in arm["lines"]}
    top.set_title(models.describe(arm) + (f", lr {rates.pop():g}" if len(rates) == 1 else ""),
                  fontsize=9)
    top.set_ylabel("relative loss L(θ − ηg) / L(θ)")
    bottom.set_ylabel("‖∇L(θ − ηg) − g‖")
    for ax in (top, bottom):
      plots.log_log(ax, "step size η")
  path = workdir_lib.figure_path(workdir, stem)
  plots.save(fig, path, f"Divergence along the minibatch gradient (train-mode BN), {_when(result)}",
             result.get("setting"))
  return [path]


def _line_name(line: dict[str, Any], lines: list[dict[str, Any]]) -> str:
  if len({other["lr"] for other in lines}) > 1:
    return f"lr {line['lr']:g}"
  return f"minibatch {line['minibatch']}"


def _when(result: dict[str, Any]) -> str:
  if "step" in result:
    return f"at checkpoint step {result['step']}"
  minibatches = sorted({line["minibatch"] for arm in result["arms"] for line in arm["lines"]})
  return f"before the update of minibatches {', '.join(map(str, minibatches))}"
