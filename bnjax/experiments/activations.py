"""F6 and F5: channel moments against depth, and along a diverging update; signal propagation.

Every member (arm x seed) at initialisation (`python -m bnjax.main
--config=configs/activations.py`), or one seed's members of a trained sweep
(`python -m bnjax.analyze --analyses=activations`), on the training batch
of its step: per-channel moments of every weight layer against depth (F6),
the signal propagation summaries of Brock et al. (2021), and the
per-channel moments of `update_layers` while the SGD step −update_lr·g is
applied in `num_fractions` steps from 0 to 1 (F5). Layers are weight
layers, numbered or named by position ("middle", a fraction of depth:
`analysis.common.resolve_layer`), so the defaults fit any model. A model
must record conv_out and the logits (`RECORDINGS`); signal propagation is
measured and drawn for models that record residual blocks (block_out,
branch_out). Writes DIR/analysis/<stem>.json ({batch_size, step,
update_lr, update_layers, fractions, setting, members: [{arm, seed, step[,
lr, member], finite, update_layers (the resolved numbers), ...}]}) and the
figures <stem>_f6_depth, <stem>_signal (with blocks) and <stem>_f5_update.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from bnjax import data, plots, workdir as workdir_lib
from bnjax.analysis import activations as act, common
from bnjax.experiments import _members

RECORDINGS = ("conv_out", "logits")


def defaults() -> ml_collections.ConfigDict:
  """The paper's F5 step (lr 3e-3) at 0.07, 0.4 and 0.73 of the depth.

  In a ResNet-110 those are the paper's layers 8, 44 and 80 (one in each
  stage: 16, 32 and 64 channels).
  """
  return ml_collections.ConfigDict(dict(
      update_lr=3e-3, update_layers=common.layer_choice((0.07, 0.4, 0.73)), num_fractions=21))


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses `update_layers` that some arm's model does not have, in one sentence."""
  for name, model in _members.arm_models(config):
    common.resolve_layers(config.analysis.update_layers, act.num_numbered_layers(model),
                          "config.analysis.update_layers", name)


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
                model, variables, x, y, a.update_lr, fractions, a.update_layers))
  layers = lambda update: sorted(int(k.split("_")[1]) for k in update if k.startswith("mean_"))
  members = []
  for subject, (moments, signal, stats, update) in _members.measure_each(
      subjects, analysis, images, labels):
    members.append({
        **subject.identity(), "finite": bool(moments["finite"]),
        "log10_abs_mean": [channel_summary(m) for m in moments["abs_mean_C"]],
        "log10_std": [channel_summary(s) for s in moments["std_C"]],
        "signal_propagation": signal,
        "rms": {kind: [s["rms"] for s in layer] for kind, layer in stats.items()},
        "update_layers": layers(update),
        "update": {"loss": update["loss_S"],
                   "relative_loss": update["loss_S"] / update["loss_S"][0],
                   **{k: v for k, v in update.items() if k != "loss_S"}}})
  return {"batch_size": int(labels.shape[0]), "step": step, "update_lr": a.update_lr,
          "update_layers": a.update_layers, "fractions": fractions,
          "setting": plots.setting(config), "members": members}


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """F6 against depth, signal propagation (models with residual blocks), and F5 along the update."""
  members, when, setting = result["members"], _members.when(result["step"]), result.get("setting")
  if not members:
    return []
  path = lambda suffix: workdir_lib.figure_path(workdir, f"{stem}{suffix}")
  paths = [path("_f6_depth"), path("_f5_update")]
  moments_vs_depth_figure(members, paths[0], when, setting)
  diverging_update_figure(members, result["fractions"], result["update_lr"], paths[1], when,
                          setting)
  with_blocks = [m for m in members if m["signal_propagation"]]
  if with_blocks:
    paths.append(path("_signal"))
    signal_propagation_figure(with_blocks, paths[-1], when, setting)
  return paths


def moments_vs_depth_figure(members: list[dict], path: str, when: str,
                            setting: str | None) -> None:
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
    ax.set_xlabel("weight layer (outputs before normalisation, in depth order; logits last)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("log10 magnitude (mean ± std over channels)")
  plots.save(fig, path, f"Channel moments vs depth {when}", setting)


def signal_propagation_figure(members: list[dict], path: str, when: str,
                              setting: str | None) -> None:
  """Signal propagation plot (Brock et al. 2021) at every residual block, per arm, log y."""
  groups = plots.by_arm(members)
  fig, axes = plots.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True,
                             squeeze=False)
  names = (("mean_sq_N", "avg squared channel mean"), ("var_N", "avg channel variance"),
           ("branch_var_N", "avg residual-branch variance"))
  for ax, (arm, records) in zip(axes[0], groups.items()):
    for i, (key, label) in enumerate(names):
      for j, r in enumerate(records):
        if key not in r["signal_propagation"]:
          continue
        values = plots.as_float(r["signal_propagation"][key])
        ax.plot(np.arange(1, len(values) + 1), values, "o-", ms=3, color=f"C{i}",
                alpha=1.0 if j == 0 else 0.4, label=label if j == 0 else None)
    ax.set_yscale("log")
    ax.set_title(arm)
    ax.set_xlabel("residual block")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("value (activation units squared)")
  plots.save(fig, path, f"Signal propagation {when} (one line per seed)", setting)


def diverging_update_figure(members: list[dict], fractions: Sequence[float], lr: float,
                            path: str, when: str, setting: str | None) -> None:
  """F5: per-channel means and log10 variances of chosen layers along θ + s·Δθ.

  Rows: for each arm (its first seed), channel means then log10 channel
  variances; columns: the chosen layers. Horizontal axis: channel; vertical: the fraction s of
  the SGD step −lr·g applied. Non-finite values are left blank.
  """
  records = [group[0] for group in plots.by_arm(members, "update").values()]
  columns = max(len(r["update_layers"]) for r in records)
  fig, axes = plots.subplots(2 * len(records), columns, squeeze=False,
                             figsize=(4.2 * columns, 3.0 * 2 * len(records)))
  extent_s = (fractions[0], fractions[-1])
  for a, record in enumerate(records):
    for ax in axes[2 * a, len(record["update_layers"]):]:
      ax.axis("off")
    for ax in axes[2 * a + 1, len(record["update_layers"]):]:
      ax.axis("off")
    for c, key in enumerate(f"mean_{k}" for k in record["update_layers"]):
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
        ax.set_title(f"{plots.panel_label(record)}: layer {layer}", fontsize=9)
        ax.set_xlabel("channel")
        ax.set_ylabel("fraction of step applied")
  plots.save(fig, path, f"Activations during the SGD step −{lr:g}·g {when}", setting)


run, from_checkpoint = _members.entry_points("activations", measure, figures)
