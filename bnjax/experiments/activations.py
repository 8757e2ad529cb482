"""F6 and F5: channel moments against depth, and along a diverging update; signal propagation.

Every member (arm x seed) at initialisation (`python -m bnjax.main
--config=configs/activations.py`), or one seed's members of a trained sweep
(`python -m bnjax.analyze --analyses=activations`), on the training batch
of its step: per-channel moments of every weight layer against depth (F6),
the signal propagation summaries of Brock et al. (2021), and the
per-channel moments of `update_layers` while the SGD step −update_lr·g is
applied in `num_fractions` steps from 0 to 1 (F5). Writes
DIR/analysis/<stem>.json ({batch_size, step, update_lr, update_layers,
fractions, members: [{arm, seed, step[, lr, member], finite, ...}]}) and
the figures <stem>_f6_depth, <stem>_signal and <stem>_f5_update.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from bnjax import data, plots, workdir as workdir_lib
from bnjax.analysis import activations as act
from bnjax.experiments import _members


def defaults() -> ml_collections.ConfigDict:
  """The paper's F5 step (lr 3e-3) at layers 8, 44 and 80 of a ResNet-110 (16/32/64 channels)."""
  return ml_collections.ConfigDict(dict(update_lr=3e-3, update_layers=(8, 44, 80),
                                        num_fractions=21))


def channel_summary(values_C: np.ndarray) -> dict[str, float]:
  """Mean and std over channels of log10(values), the paper's error bars."""
  logs = np.log10(np.maximum(np.asarray(values_C, np.float64), 1e-300))
  return {"mean": float(np.mean(logs)), "std": float(np.std(logs))}


def measure(config: ml_collections.ConfigDict, subjects: Iterable[_members.Subject],
            dataset: data.Dataset, step: int, seed: int | None = None) -> dict[str, Any]:
  """Every subject's F6 moments, signal propagation, layer statistics and F5 update.

  On training batch `step`, the one the subjects (all at that step) train on next.
  """
  a = config.analysis
  images, labels = _members.train_batch(config, dataset, step, seed=seed)
  fractions = jnp.linspace(0.0, 1.0, a.num_fractions)
  def analysis(model, variables, x, y):
    return (act.moments_vs_depth(model, variables, x), act.signal_propagation(model, variables, x),
            act.layer_statistics(model, variables, x), act.diverging_update_moments(
                model, variables, x, y, a.update_lr, fractions, tuple(a.update_layers)))
  members = []
  for subject, (moments, signal, stats, update) in _members.measure_each(
      subjects, analysis, images, labels):
    members.append({
        **subject.identity(), "finite": bool(moments["finite"]),
        "log10_abs_mean": [channel_summary(m) for m in moments["abs_mean_C"]],
        "log10_std": [channel_summary(s) for s in moments["std_C"]],
        "signal_propagation": signal,
        "rms": {kind: [s["rms"] for s in layer] for kind, layer in stats.items()},
        "update": {"loss": update["loss_S"],
                   "relative_loss": update["loss_S"] / update["loss_S"][0],
                   **{k: v for k, v in update.items() if k != "loss_S"}}})
  return {"batch_size": int(labels.shape[0]), "step": step, "update_lr": a.update_lr,
          "update_layers": list(a.update_layers), "fractions": fractions, "members": members}


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """F6 against depth, signal propagation, and F5 along the update."""
  members, when = result["members"], _members.when(result["step"])
  paths = [workdir_lib.figure_path(workdir, f"{stem}{suffix}")
           for suffix in ("_f6_depth", "_signal", "_f5_update")]
  if not members:
    return []
  moments_vs_depth_figure(members, paths[0], when)
  signal_propagation_figure(members, paths[1], when)
  diverging_update_figure(members, result["fractions"], result["update_lr"], paths[2], when)
  return paths


def moments_vs_depth_figure(members: list[dict], path: str, when: str) -> None:
  """F6: log10 |channel mean| and log10 channel std of every weight layer vs depth.

  One panel per arm (BN and no-BN side by side, shared y); points are the
  mean over channels of the first seed, error bars the std over channels.
  Layers are the conv outputs (before normalisation) and the logits last.
  """
  groups = plots.by_arm(members)
  fig, axes = plots.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True,
                             squeeze=False)
  for ax, (arm, records) in zip(axes[0], groups.items()):
    for key, label, color in (("log10_abs_mean", "|channel mean|", "C0"),
                              ("log10_std", "channel std", "C3")):
      rows = records[0][key]
      layers = np.arange(1, len(rows) + 1)
      ax.errorbar(layers, plots.as_float([r["mean"] for r in rows]),
                  yerr=plots.as_float([r["std"] for r in rows]),
                  fmt="o-", ms=3, capsize=2, color=color, label=label)
    ax.set_title(arm)
    ax.set_xlabel("layer (conv outputs in depth order, then logits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("log10 magnitude (mean ± std over channels)")
  plots.save(fig, path, f"Channel moments vs depth {when}")


def signal_propagation_figure(members: list[dict], path: str, when: str) -> None:
  """Signal propagation plot (Brock et al. 2021) at every residual block, per arm, log y."""
  groups = plots.by_arm(members)
  fig, axes = plots.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True,
                             squeeze=False)
  names = (("mean_sq_N", "avg squared channel mean"), ("var_N", "avg channel variance"),
           ("branch_var_N", "avg residual-branch variance"))
  for ax, (arm, records) in zip(axes[0], groups.items()):
    for i, (key, label) in enumerate(names):
      for j, r in enumerate(records):
        values = plots.as_float(r["signal_propagation"][key])
        ax.plot(np.arange(1, len(values) + 1), values, "o-", ms=3, color=f"C{i}",
                alpha=1.0 if j == 0 else 0.4, label=label if j == 0 else None)
    ax.set_yscale("log")
    ax.set_title(arm)
    ax.set_xlabel("residual block")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("value (activation units squared)")
  plots.save(fig, path, f"Signal propagation {when} (one line per seed)")


def diverging_update_figure(members: list[dict], fractions: Sequence[float], lr: float,
                            path: str, when: str) -> None:
  """F5: per-channel means and log10 variances of chosen layers along θ + s·Δθ.

  Rows: for each arm (its first seed), channel means then log10 channel
  variances; columns: the chosen layers. Horizontal axis: channel; vertical: the fraction s of
  the SGD step −lr·g applied. Non-finite values are left blank.
  """
  records = [group[0] for group in plots.by_arm(members, "update").values()]
  layer_keys = sorted((k for k in records[0]["update"] if k.startswith("mean_")),
                      key=lambda k: int(k.split("_")[1]))
  fig, axes = plots.subplots(2 * len(records), len(layer_keys), squeeze=False,
                        figsize=(4.2 * len(layer_keys), 3.0 * 2 * len(records)))
  extent_s = (fractions[0], fractions[-1])
  for a, record in enumerate(records):
    for c, key in enumerate(layer_keys):
      layer = key.split("_")[1]
      means = np.asarray([plots.as_float(row) for row in record["update"][key]])
      variances = np.asarray([plots.as_float(row) for row in record["update"][f"var_{layer}"]])
      with np.errstate(all="ignore"):
        log_var = np.log10(variances)
      bound = np.nanmax(np.abs(means)) if np.isfinite(means).any() else 1.0
      for row, values, cmap, lim, what in (
          (2 * a, means, "RdBu_r", (-bound, bound), "channel mean"),
          (2 * a + 1, log_var, "viridis", (None, None), "log10 channel variance")):
        ax = axes[row][c]
        im = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, vmin=lim[0], vmax=lim[1],
                       extent=(-0.5, values.shape[1] - 0.5, *extent_s), interpolation="nearest")
        fig.colorbar(im, ax=ax, label=what)
        ax.set_title(f"{record['arm']}: layer {layer}", fontsize=9)
        ax.set_xlabel("channel")
        ax.set_ylabel("fraction of step applied")
  plots.save(fig, path, f"Activations during the SGD step −{lr:g}·g {when}")


run, from_checkpoint = _members.entry_points("activations", measure, figures)
