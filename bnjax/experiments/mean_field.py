"""Mean-field check: per-layer gradient growth of a deep BN-ReLU MLP against Yang et al. (2019).

    python -m bnjax.main --config=configs/mean_field.py --workdir=DIR
    python -m bnjax.main --config=configs/mean_field.py:smoke --workdir=DIR

Every arm (norm batch / none) x seed of a `bnjax.models.mlp` network at
initialisation, on training batch 0 in train mode (BN uses the batch's
statistics): the Frobenius norm of ∂L/∂W of each hidden layer's weights and
of ∂L/∂h of its pre-activations (the Dense output, before BN), input side
first. The per-layer growth factor going backwards is exp(-slope) of a
least-squares line through log norm against layer, the first and last
`fit_skip` layers left out (boundary layers differ). Mean-field theory
predicts sqrt(π/(π-1)) ≈ 1.211 per layer for the norm with BN (π/(π-1) for
the squared norm, docs/mean_field.md) and 1 without. Writes
DIR/analysis/<stem>.json ({batch_size, depth, width, predicted_factor,
predicted_factor_squared, arms: {norm: {weight_grad, preact_grad:
{mean, std, log_mean, log_std, per_seed, fitted_factor}, ...}}}) and the
figure <stem>.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bnjax import data, errors, experiments, plots, sweep, train, workdir as workdir_lib
from bnjax.experiments import _members
from bnjax.models import mlp

# Yang et al. (2019), ReLU with BN, large width and batch: the squared gradient
# norm grows by π/(π-1) per layer going backwards (docs/mean_field.md).
SQUARED_FACTOR_RELU_BN = math.pi / (math.pi - 1)
KINDS = ("weight_grad", "preact_grad")
MODEL = "bnjax.models.mlp"
RECORDINGS = ()  # the MLP's perturbed pre-activations, not its recordings


def defaults() -> ml_collections.ConfigDict:
  """Leave out one layer at each end of the fit (input layer, layer below the classifier)."""
  return ml_collections.ConfigDict(dict(fit_skip=1))


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses, in one sentence, a model other than the MLP, whose pre-activations it perturbs."""
  if config.model.name != MODEL:
    raise errors.ConfigError(f"mean_field measures the {MODEL!r} model (it perturbs its"
                             f" pre-activations), not {config.model.name!r}; set"
                             f" --config.model.name={MODEL}.")


def predicted_factor(norm: str) -> float:
  """The mean-field per-layer growth of the gradient norm (not squared) going backwards."""
  return math.sqrt(SQUARED_FACTOR_RELU_BN) if norm == "batch" else 1.0


def gradient_norms(model: mlp.MLP, variables: dict[str, Any], images: jax.Array,
                   labels_B: jax.Array) -> dict[str, jax.Array]:
  """Per hidden layer (input first): ‖∂L/∂W‖ and ‖∂L/∂h‖, L the batch-mean cross-entropy."""
  twin = model.clone(perturbed=True)
  zeros_BxW = jnp.zeros((images.shape[0], model.width), jnp.float32)
  names = [mlp.layer_name(i) for i in range(model.depth)]
  perturbations = {n: {"preact": zeros_BxW} for n in names}

  def loss(params: Any, perturbations: Any) -> jax.Array:
    logits_BxK, _ = twin.apply(
        {"params": params, "batch_stats": variables["batch_stats"],
         "perturbations": perturbations}, images, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()

  grads, pgrads = jax.grad(loss, argnums=(0, 1))(variables["params"], perturbations)
  return {"weight_grad": jnp.stack([jnp.linalg.norm(grads[n]["dense"]["kernel"])
                                    for n in names]),
          "preact_grad": jnp.stack([jnp.linalg.norm(pgrads[n]["preact"]) for n in names])}


def fitted_factor(log_norms_L: np.ndarray, skip: int) -> float:
  """exp(-slope) of log norm against layer index, `skip` layers dropped at each end."""
  layers = np.arange(len(log_norms_L))
  keep = slice(skip, len(layers) - skip) if len(layers) > 2 * skip + 1 else slice(None)
  slope = np.polyfit(layers[keep], log_norms_L[keep], 1)[0]
  return float(np.exp(-slope))


def summarise(norms_SxL: np.ndarray, seeds: list[int], skip: int) -> dict[str, Any]:
  """Mean and spread over seeds per layer, and the growth factor fitted to the mean log norm."""
  logs_SxL = np.log(norms_SxL)
  return {"mean": norms_SxL.mean(0), "std": norms_SxL.std(0),
          "log_mean": logs_SxL.mean(0), "log_std": logs_SxL.std(0),
          "per_seed": {str(s): row for s, row in zip(seeds, norms_SxL)},
          "fitted_factor": fitted_factor(logs_SxL.mean(0), skip),
          "fitted_factor_per_seed": [fitted_factor(row, skip) for row in logs_SxL]}


def measure(config: ml_collections.ConfigDict, dataset: data.Dataset) -> dict[str, Any]:
  """Every arm's per-layer gradient norms over the config's seeds, on training batch 0."""
  images, labels = _members.train_batch(config, dataset, 0)
  seeds = [int(s) for s in config.sweep.seeds]
  arms = {}
  for arm in sweep.make_arms(config):
    model = sweep.build_model(arm, config)
    compiled = jax.jit(lambda v, x, y, model=model: gradient_norms(model, v, x, y))
    out = [jax.device_get(compiled(train.init_variables(model, s), images, labels))
           for s in seeds]
    label = _members.arm_label(config, arm)
    norm = arm.model_config["norm"]
    arms[label] = {"norm": norm, "predicted_factor": predicted_factor(norm),
                   "finite": bool(all(np.isfinite(o[k]).all() for o in out for k in KINDS)),
                   **{k: summarise(np.stack([o[k] for o in out]).astype(np.float64), seeds,
                                   config.analysis.fit_skip) for k in KINDS}}
  return {"batch_size": int(labels.shape[0]), "depth": config.model.depth,
          "width": config.model.width, "seeds": seeds, "fit_skip": config.analysis.fit_skip,
          "setting": plots.setting(config),
          "predicted_factor": predicted_factor("batch"),
          "predicted_factor_squared": SQUARED_FACTOR_RELU_BN, "arms": arms}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Measures every arm x seed at initialisation; writes the JSON and the figure."""
  check(config)
  dataset = data.load(config.data)  # fails before the workdir is touched
  workdir_lib.prepare(workdir, config)
  result = measure(config, dataset)
  experiments.write(workdir, "mean_field", result, figures)
  return result


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """Log gradient norm against layer, one panel per kind, with the predicted slopes."""
  path = workdir_lib.figure_path(workdir, stem)
  fig, axes = plots.subplots(1, len(KINDS), figsize=(6 * len(KINDS), 4.5), squeeze=False)
  titles = {"weight_grad": "‖∂L/∂W‖ of each hidden layer",
            "preact_grad": "‖∂L/∂h‖ of each pre-activation"}
  for ax, kind in zip(axes[0], KINDS):
    for i, (label, arm) in enumerate(result["arms"].items()):
      s = arm[kind]
      mean, std = plots.as_float(s["log_mean"]), plots.as_float(s["log_std"])
      layers = np.arange(1, len(mean) + 1)
      ax.plot(layers, np.exp(mean), "o-", ms=3, color=f"C{i}",
              label=f"{label}: fit {plots.number(s['fitted_factor'], '.3f')}/layer")
      ax.fill_between(layers, np.exp(mean - std), np.exp(mean + std), color=f"C{i}", alpha=0.2)
      anchor = len(mean) - 1 - result["fit_skip"]  # the line passes the last fitted layer
      predicted = np.exp(mean[anchor]) * arm["predicted_factor"] ** (layers[anchor] - layers)
      ax.plot(layers, predicted, "--", color=f"C{i}", lw=1,
              label=f"{label}: mean field {arm['predicted_factor']:.3f}/layer")
    ax.set_yscale("log")
    ax.set_xlabel("hidden layer (1 = input side)")
    ax.set_ylabel("gradient norm (mean over seeds, ±1 sd in log)")
    ax.set_title(titles[kind], fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  plots.save(fig, path, f"Gradients at initialisation (step 0): depth {result['depth']}, width"
             f" {result['width']}, batch {result['batch_size']}, {len(result['seeds'])} seeds",
             result.get("setting"))
  return [path]
