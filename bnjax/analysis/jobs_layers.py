"""Jobs for the layer analyses at initialisation: activations, gradients, random matrices.

Each job is a function (config, workdir) -> None registered in bnjax/jobs.py.
It takes every member (arm x seed) of the config at initialisation, applies
the pure analysis functions to one training batch (batch 0 of the data
stream), and writes DIR/analysis/<job>.json (the numbers behind the figures,
strict JSON with non-finite values as null) and the figures under
DIR/figures/.
"""

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnjax import data, plots, sweep, workdir as workdir_lib
from bnjax.analysis import activations as act, common, gradients as grad, random_matrix as rm


def arm_label(config: ml_collections.ConfigDict, arm: sweep.Arm) -> str:
  """E.g. "norm=batch": the fields the sweep varies, as a legend label."""
  return ", ".join(f"{f}={arm.model_config[f]}" for f in sweep.arm_fields(config))


def members_at_init(config: ml_collections.ConfigDict, analysis: Callable[..., Any],
                    *args: Any) -> Iterator[tuple[str, int, Any]]:
  """(arm label, seed, analysis(model, variables at init, *args)) for every arm x seed.

  The analysis is jitted once per arm and gets the variables as an argument.
  Initialisation runs eagerly: on a CPU, compiling Flax's init (random
  bits for every parameter) takes longer than running it op by op.
  """
  for arm, model in common.arm_models(config):
    run = jax.jit(lambda variables, *a, m=model: analysis(m, variables, *a))
    for seed in config.sweep.seeds:
      variables = common.init_variables(model, int(seed))
      yield arm_label(config, arm), int(seed), jax.device_get(run(variables, *args))


def first_batch(config: ml_collections.ConfigDict, dataset: data.Dataset,
                batch_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Training batch 0 of the config's data stream: images (B, 32, 32, 3), labels (B,)."""
  return data.train_batch(dataset, config.train.data_seed, 0,
                          batch_size or config.train.batch_size, config.data.augmentation)


def _channel_summary(values_C: np.ndarray) -> dict[str, float]:
  """Mean and std over channels of log10(values), the paper's error bars."""
  logs = np.log10(np.maximum(np.asarray(values_C, np.float64), 1e-300))
  return {"mean": float(np.mean(logs)), "std": float(np.std(logs))}


def _histogram(values: np.ndarray, bins: int = 81) -> dict[str, Any]:
  """Counts on symmetric bins spanning ±max|value|, plus spread numbers."""
  values = np.asarray(values, np.float64)
  edge = float(np.max(np.abs(values))) or 1.0
  counts, edges = np.histogram(values, bins=bins, range=(-edge, edge))
  return {"counts": counts, "edges": edges, "std": float(np.std(values)),
          "max_abs": edge, "p99_abs": float(np.percentile(np.abs(values), 99))}


# ---------------------------------------------------------------- activations (F5, F6)


def activations(config: ml_collections.ConfigDict, workdir: str) -> None:
  """F6 moments vs depth, signal propagation, and F5 moments along a diverging step."""
  dataset = data.load(config.data)  # fails fast, before the workdir is touched
  workdir_lib.prepare(workdir, config)
  cfg = config.analysis
  images, labels = first_batch(config, dataset)
  fractions = jnp.linspace(0.0, 1.0, cfg.num_fractions)
  results: dict[str, Any] = {"batch_size": int(labels.shape[0]), "step": 0,
                             "update_lr": cfg.update_lr, "update_layers": list(cfg.update_layers),
                             "fractions": fractions, "members": []}
  def analysis(model, variables, x, y):
    return (act.moments_vs_depth(model, variables, x), act.signal_propagation(model, variables, x),
            act.layer_statistics(model, variables, x), act.diverging_update_moments(
                model, variables, x, y, cfg.update_lr, fractions, tuple(cfg.update_layers)))

  for label, seed, out in members_at_init(config, analysis, images, labels):
    moments, signal, stats, update = out
    record = {
        "arm": label, "seed": seed, "finite": bool(moments["finite"]),
        "log10_abs_mean": [_channel_summary(m) for m in moments["abs_mean_C"]],
        "log10_std": [_channel_summary(s) for s in moments["std_C"]],
        "signal_propagation": signal,
        "rms": {kind: [s["rms"] for s in layer] for kind, layer in stats.items()},
        "update": {"loss": update["loss_S"], "relative_loss": update["loss_S"] / update["loss_S"][0],
                   **{k: v for k, v in update.items() if k != "loss_S"}},
    }
    results["members"].append(record)
  workdir_lib.write_analysis(workdir, "activations", results)
  members = workdir_lib.jsonable(results["members"])
  plots.moments_vs_depth_figure(members, workdir_lib.figure_path(workdir, "activations_f6_depth"))
  plots.signal_propagation_figure(members, workdir_lib.figure_path(workdir, "activations_signal"))
  plots.diverging_update_figure(members, workdir_lib.jsonable(fractions), cfg.update_lr,
                                workdir_lib.figure_path(workdir, "activations_f5_update"))


# ---------------------------------------------------------------- gradients (F3, F7)


def gradients(config: ml_collections.ConfigDict, workdir: str) -> None:
  """F7 output-gradient heatmap with its input-independence scalars; F3 histogram and norms."""
  dataset = data.load(config.data)  # fails fast, before the workdir is touched
  workdir_lib.prepare(workdir, config)
  layer = config.analysis.histogram_layer
  images, labels = first_batch(config, dataset)
  results: dict[str, Any] = {"batch_size": int(labels.shape[0]), "step": 0,
                             "histogram_layer": layer, "members": []}
  summary = lambda model, variables, x, y: grad.gradient_summary(model, variables, x, y, layer)
  for label, seed, out in members_at_init(config, summary, images, labels):
    record = {"arm": label, "seed": seed, "finite": bool(out["finite"]), "loss": out["loss"]}
    if record["finite"]:  # an overflowed pass has only NaN gradients to show
      record.update(_gradient_record(out, labels, first_seed=seed == config.sweep.seeds[0]))
    results["members"].append(record)
  workdir_lib.write_analysis(workdir, "gradients", results)
  members = workdir_lib.jsonable(results["members"])
  plots.output_gradient_figure(members, workdir_lib.figure_path(workdir, "gradients_f7_heatmap"))
  plots.gradient_histogram_figure(members, layer,
                                  workdir_lib.figure_path(workdir, "gradients_f3_histogram"))


def _gradient_record(out: dict[str, Any], labels_B: jax.Array, first_seed: bool
                     ) -> dict[str, Any]:
  """The F3/F7 numbers of one member with a finite gradient (`gradient_summary` output)."""
  probs_BxK = out["output_grad_BxK"] * labels_B.shape[0] + np.eye(data.NUM_CLASSES)[labels_B]
  predictions = grad.input_independence(jnp.asarray(probs_BxK))
  record = {"same_class_share": out["same_class_share"], "mean_cosine": out["mean_cosine"],
            "prediction_share": predictions["same_class_share"],
            "mean_max_probability": float(np.mean(np.max(probs_BxK, axis=1))),
            "conv_grad_norms": out["conv_grad_norms_L"],
            "layer_histogram": _histogram(out["layer_grad_values"])}
  if first_seed:
    record["output_grad"] = out["output_grad_BxK"]
    record["labels"] = np.asarray(labels_B)
  return record


# ---------------------------------------------------------------- random matrices (F8)


def random_matrix(config: ml_collections.ConfigDict, workdir: str) -> None:
  """F8 spectra of Gaussian products, and the network Jacobian's spectrum at init."""
  dataset = data.load(config.data)  # fails fast, before the workdir is touched
  workdir_lib.prepare(workdir, config)
  cfg = config.analysis
  key = jax.random.key(cfg.matrix_seed)
  spectra = jax.jit(lambda k: rm.product_spectra(k, cfg.matrix_size, tuple(cfg.ks), cfg.trials))(key)
  images, _ = first_batch(config, dataset, cfg.jacobian_batch)
  results: dict[str, Any] = {
      "matrix_size": cfg.matrix_size, "trials": cfg.trials,
      "products": {k: {"singular_values": v, "max": float(jnp.max(v)),
                       "share_below_0.1": float(jnp.mean(v < 0.1))} for k, v in spectra.items()},
      "jacobian_batch": cfg.jacobian_batch, "jacobian": []}
  spectrum = lambda model, variables, x: rm.jacobian_singular_values(model, variables, x, cfg.chunk)
  for label, seed, out in members_at_init(config, spectrum, images):
    results["jacobian"].append({"arm": label, "seed": seed, **out})
  workdir_lib.write_analysis(workdir, "random_matrix", results)
  plots.random_matrix_figure(workdir_lib.jsonable(results), workdir_lib.figure_path(workdir, "random_matrix_f8"))
