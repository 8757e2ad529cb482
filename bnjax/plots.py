"""Matplotlib figures in the style of the paper, one function per figure.

Figures are `matplotlib.figure.Figure` objects, not pyplot ones: writing a
file then needs no backend, so importing this module leaves the caller's
backend (a notebook's, say) as it was.
"""

import collections
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float],
              **kwargs: Any) -> tuple[Figure, Any]:
  """A new figure and its grid of axes, as `pyplot.subplots` makes them, without pyplot."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig: Figure, path: str, title: str) -> None:
  """Titles, lays out and writes (PNG, 120 dpi) a figure."""
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _arm_label(record: dict[str, Any], fields: Sequence[str]) -> str:
  parts = [f"{f}={record[f]}" for f in fields]
  return ", ".join(parts + [f"lr={record['lr']:g}"])


def _curves(metrics: list[dict], key: str, group_of: dict[int, tuple]
            ) -> dict[tuple, dict[int, dict[int, float]]]:
  """group -> member -> step -> value, for records that carry `key`."""
  curves: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
  for r in metrics:
    if r.get(key) is not None:
      curves[group_of[r["member"]]][r["member"]][r["step"]] = r[key]
  return curves


def _mean_and_spread(per_member: dict[int, dict[int, float]]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Steps where any seed has a value; mean, min and max over those seeds."""
  steps = sorted({s for values in per_member.values() for s in values})
  rows = [[values.get(s, np.nan) for s in steps] for values in per_member.values()]
  table = np.asarray(rows, dtype=float)
  with np.errstate(all="ignore"):
    return (np.asarray(steps), np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0))


def accuracy_figure(metrics: list[dict], members: list[dict], fields: Sequence[str],
                    path: str, num_steps: int) -> None:
  """F1: train and test accuracy against % of training, per (arm, lr).

  Lines are the mean over seeds, the band spans min to max; a group whose
  members diverged says so in the legend, and its curve ends there.
  """
  groups = {m["member"]: tuple(m[f] for f in fields) + (m["lr"],) for m in members}
  label_of = {groups[m["member"]]: _arm_label(m, fields) for m in members}
  diverged = collections.Counter(groups[m["member"]] for m in members if m["status"] == "diverged")
  size = collections.Counter(groups.values())
  fig, axes = _subplots(1, 2, figsize=(11, 4.2), sharey=True)
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, key, title in zip(axes, ("train_accuracy", "test_accuracy"), ("Train", "Test")):
    for i, (group, per_member) in enumerate(sorted(_curves(metrics, key, groups).items(), key=str)):
      steps, mean, low, high = _mean_and_spread(per_member)
      pct = 100.0 * steps / num_steps
      label = label_of[group]
      if diverged[group]:
        label += f" (diverged {diverged[group]}/{size[group]})"
      color = colors[i % len(colors)]
      ax.plot(pct, 100 * mean, color=color, label=label)
      ax.fill_between(pct, 100 * low, 100 * high, color=color, alpha=0.2, linewidth=0)
    ax.set_title(f"{title} accuracy")
    ax.set_xlabel("% of training")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy (%)")
  axes[1].legend(fontsize=7, loc="lower right")
  _save(fig, path, "Accuracy during training (mean and min-max over seeds: the spread over"
                   " initialisations, all seeds seeing the same data)")


# ---------------------------------------------------------------- layer analyses at initialisation


def _by_arm(members: list[dict], key: str | None = None) -> dict[str, list[dict]]:
  """Member records grouped by arm label, in order, keeping those that carry `key`."""
  groups: dict[str, list[dict]] = collections.defaultdict(list)
  for m in members:
    if key is None or m.get(key) is not None:
      groups[m["arm"]].append(m)
  return dict(groups)


def _as_float(values: Sequence[Any]) -> np.ndarray:
  """JSON numbers with null as NaN (NaN leaves a gap in a line plot)."""
  return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def moments_vs_depth_figure(members: list[dict], path: str) -> None:
  """F6: log10 |channel mean| and log10 channel std of every weight layer vs depth.

  One panel per arm (BN and no-BN side by side, shared y); points are the
  mean over channels of the first seed, error bars the std over channels.
  Layers are the conv outputs (before normalisation) and the logits last.
  """
  groups = _by_arm(members)
  fig, axes = _subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True, squeeze=False)
  for ax, (arm, records) in zip(axes[0], groups.items()):
    for key, label, color in (("log10_abs_mean", "|channel mean|", "C0"),
                              ("log10_std", "channel std", "C3")):
      rows = records[0][key]
      layers = np.arange(1, len(rows) + 1)
      ax.errorbar(layers, _as_float([r["mean"] for r in rows]), yerr=_as_float([r["std"] for r in rows]),
                  fmt="o-", ms=3, capsize=2, color=color, label=label)
    ax.set_title(arm)
    ax.set_xlabel("layer (conv outputs in depth order, then logits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("log10 magnitude (mean ± std over channels)")
  _save(fig, path, "Channel moments vs depth at initialisation (step 0, training batch 0)")


def signal_propagation_figure(members: list[dict], path: str) -> None:
  """Signal propagation plot (Brock et al. 2021) at every residual block, per arm, log y."""
  groups = _by_arm(members)
  fig, axes = _subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True, squeeze=False)
  names = (("mean_sq_N", "avg squared channel mean"), ("var_N", "avg channel variance"),
           ("branch_var_N", "avg residual-branch variance"))
  for ax, (arm, records) in zip(axes[0], groups.items()):
    for i, (key, label) in enumerate(names):
      for j, r in enumerate(records):
        values = _as_float(r["signal_propagation"][key])
        ax.plot(np.arange(1, len(values) + 1), values, "o-", ms=3, color=f"C{i}",
                alpha=1.0 if j == 0 else 0.4, label=label if j == 0 else None)
    ax.set_yscale("log")
    ax.set_title(arm)
    ax.set_xlabel("residual block")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("value (activation units squared)")
  _save(fig, path, "Signal propagation at initialisation (step 0; one line per seed)")


def diverging_update_figure(members: list[dict], fractions: Sequence[float], lr: float,
                            path: str) -> None:
  """F5: per-channel means and log10 variances of chosen layers along θ + s·Δθ.

  Rows: for each arm (its first seed), channel means then log10 channel
  variances; columns: the chosen layers. Horizontal axis: channel; vertical: the fraction s of
  the SGD step −lr·g applied. Non-finite values are left blank.
  """
  records = [group[0] for group in _by_arm(members, "update").values()]
  layer_keys = sorted((k for k in records[0]["update"] if k.startswith("mean_")),
                      key=lambda k: int(k.split("_")[1]))
  fig, axes = _subplots(2 * len(records), len(layer_keys), squeeze=False,
                        figsize=(4.2 * len(layer_keys), 3.0 * 2 * len(records)))
  extent_s = (fractions[0], fractions[-1])
  for a, record in enumerate(records):
    for c, key in enumerate(layer_keys):
      layer = key.split("_")[1]
      means = np.asarray([_as_float(row) for row in record["update"][key]])
      variances = np.asarray([_as_float(row) for row in record["update"][f"var_{layer}"]])
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
  _save(fig, path, f"Activations during the SGD step −{lr:g}·g at initialisation (step 0)")


def output_gradient_figure(members: list[dict], path: str) -> None:
  """F7: ∂L/∂logits per image (rows) and class (columns), BN and no-BN side by side."""
  records = [r for r in members if r.get("output_grad") is not None]
  fig, axes = _subplots(1, len(records), figsize=(4.5 * len(records), 6), squeeze=False)
  for ax, r in zip(axes[0], records):
    g = np.asarray([_as_float(row) for row in r["output_grad"]])
    bound = np.nanmax(np.abs(g))
    im = ax.imshow(g, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="∂L/∂logit (batch-mean loss)")
    ax.set_title(f"{r['arm']}\nsame top class {r['same_class_share']:.2f}, mean cosine"
                 f" {r['mean_cosine']:.2f}\npredicted-class share {r['prediction_share']:.2f}",
                 fontsize=9)
    ax.set_xlabel("class")
    ax.set_ylabel("image in batch")
    ax.set_xticks(range(g.shape[1]))
  _save(fig, path, "Output-layer gradient at initialisation (step 0, training batch 0)")


def gradient_histogram_figure(members: list[dict], layer: int, path: str) -> None:
  """F3: histogram of one conv layer's weight gradients per arm, and gradient norms vs depth.

  Each histogram keeps its own horizontal range (the no-BN one is far
  wider); the last panel puts every conv layer's gradient norm on a log axis.
  """
  groups = _by_arm(members, "layer_histogram")  # members that overflowed have none
  fig, axes = _subplots(1, len(groups) + 1, figsize=(4.6 * (len(groups) + 1), 4), squeeze=False)
  for i, (ax, (arm, records)) in enumerate(zip(axes[0], groups.items())):
    h = records[0]["layer_histogram"]
    edges = _as_float(h["edges"])
    ax.stairs(h["counts"], edges, fill=True, color=f"C{i}", alpha=0.7)
    ax.set_title(f"{arm}: layer {layer}, std {h['std']:.3g}", fontsize=10)
    ax.set_xlabel("weight gradient ∂L/∂w")
    ax.set_ylabel("count")
  norm_ax = axes[0][-1]
  for i, (arm, records) in enumerate(groups.items()):
    for j, r in enumerate(records):
      norms = _as_float(r["conv_grad_norms"])
      norm_ax.plot(np.arange(1, len(norms) + 1), norms, color=f"C{i}", alpha=1.0 if j == 0 else 0.4,
                   label=arm if j == 0 else None)
  norm_ax.axvline(layer, color="gray", ls=":", lw=1)
  norm_ax.set_yscale("log")
  norm_ax.set_xlabel("conv layer")
  norm_ax.set_ylabel("‖∂L/∂W‖ (Frobenius)")
  norm_ax.set_title("Gradient norm vs depth (one line per seed)", fontsize=10)
  norm_ax.grid(alpha=0.3, which="both")
  norm_ax.legend(fontsize=8)
  _save(fig, path, "Weight gradients at initialisation (step 0, training batch 0)")


def random_matrix_figure(results: dict, path: str) -> None:
  """F8: singular values of products of k Gaussian matrices; the network Jacobian's.

  Top row: one histogram per k (density). Bottom row: the Jacobian's
  singular values of every arm, as they are and divided by the largest,
  largest first on a log axis.
  """
  products = results["products"]
  arms = _by_arm(results["jacobian"])
  cols = max(len(products), 2)
  fig, axes = _subplots(2, cols, figsize=(4.2 * cols, 7), squeeze=False)
  for ax, (name, p) in zip(axes[0], products.items()):
    s = _as_float(p["singular_values"])
    ax.hist(s, bins=60, density=True, color="C0")
    ax.set_title(f"k = {name[1:]} Gaussian matrices (N={results['matrix_size']})", fontsize=10)
    ax.set_xlabel("singular value")
    ax.set_ylabel("density")
  sorted_ax, spread_ax = axes[1][0], axes[1][1]
  for i, (arm, records) in enumerate(arms.items()):
    for j, r in enumerate(records):
      s = _as_float(r["singular_values"])
      label = f"{arm} (log10 cond {r['log10_condition']:.2f})" if j == 0 else None
      alpha = 1.0 if j == 0 else 0.4
      sorted_ax.plot(np.arange(1, len(s) + 1), s, "o-", ms=2, color=f"C{i}", alpha=alpha, label=label)
      spread_ax.plot(np.arange(1, len(s) + 1), s / np.nanmax(s), "o-", ms=2, color=f"C{i}",
                     alpha=alpha, label=label)
  for ax, what in ((sorted_ax, "singular value"), (spread_ax, "singular value / largest")):
    ax.set_yscale("log")
    ax.set_xlabel("index (largest first)")
    ax.set_ylabel(what)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  sorted_ax.set_title("Network Jacobian (logits w.r.t. images)", fontsize=10)
  spread_ax.set_title("Network Jacobian, normalised by the largest", fontsize=10)
  for ax in list(axes[0][len(products):]) + list(axes[1][2:]):
    ax.axis("off")
  _save(fig, path, "Singular values: random matrix products and the network's input-output"
        f" Jacobian at initialisation (step 0, {results['jacobian_batch']} images)")


# ---------------------------------------------------------------- optimisation analyses


def _norm_title(arm: dict[str, Any]) -> str:
  name = "BN" if arm.get("norm") == "batch" else "no BN"
  return f"{name}, ResNet-{arm.get('depth')}"


def divergence_figure(result: dict[str, Any], path: str) -> None:
  """F4: relative loss L(θ − ηg)/L(θ) against η (log-log), BN and no BN side by side.

  Top row: one line per measured minibatch, the divergence threshold dashed.
  Bottom row: gradient predictiveness ‖∇L(θ − ηg) − g‖ (Santurkar et al.).
  """
  arms = result["arms"]
  fig, axes = _subplots(2, len(arms), figsize=(5.2 * len(arms), 7.5), squeeze=False)
  for col, arm in enumerate(arms):
    top, bottom = axes[0, col], axes[1, col]
    for m in arm["minibatches"]:
      eta = _as_float(m["eta_E"])
      name = m.get("label", f"minibatch {m['minibatch']}")
      top.plot(eta, _as_float(m["relative_loss_E"]), marker="o", ms=3,
               label=f"{name} (max stable η {m['max_stable_eta']:.2g})")
      bottom.plot(eta, _as_float(m["grad_change_E"]), marker="o", ms=3,
                  label=f"{name} (β-smoothness {m['beta_smoothness']:.2g})")
    top.axhline(result["threshold"], color="k", ls="--", lw=1, label="divergence threshold")
    top.axhline(1.0, color="gray", lw=0.5)
    top.set_title(_norm_title(arm) + (f", lr {arm['lr']:g}" if "lr" in arm else ""))
    top.set_ylabel("relative loss L(θ − ηg) / L(θ)")
    bottom.set_ylabel("‖∇L(θ − ηg) − g‖")
    for ax in (top, bottom):
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel("step size η")
      ax.grid(alpha=0.3, which="both")
      ax.legend(fontsize=7)
  steps = sorted({m["minibatch"] for arm in arms for m in arm["minibatches"]})
  where = (f"at checkpoint step {result['step']}" if "step" in result
           else f"before the update of minibatches {', '.join(map(str, steps))}")
  _save(fig, path, f"Divergence along the minibatch gradient (train-mode BN), {where}")


def sgd_noise_figure(result: dict[str, Any], path: str) -> None:
  """F2: SGD noise against the learning rate α (log-log), BN and no BN side by side.

  Top row: the bound α²C/|B|, its expectation without replacement, the
  measured noise (fixed-statistics and train-mode gradients). Bottom row:
  per-layer C of the conv and dense kernels in depth order, one line per rate.
  """
  arms = result["arms"]
  fig, axes = _subplots(2, len(arms), figsize=(5.2 * len(arms), 7.5), squeeze=False)
  for col, arm in enumerate(arms):
    top, bottom = axes[0, col], axes[1, col]
    alive = [m for m in arm["members"] if not m["diverged"]]
    lr = np.asarray([m["lr"] for m in alive])
    series = (("bound", "bound α²C/|B|", "k", "-"),
              ("expected_without_replacement", "expected, without replacement", "gray", ":"),
              ("measured", "measured (BN stats fixed)", "C0", "none"),
              ("measured_train_mode", "measured (train-mode gradient)", "C3", "none"))
    for key, label, color, ls in series:
      top.plot(lr, _as_float([m[key] for m in alive]), color=color, ls=ls,
               marker="o" if ls == "none" else None, label=label)
    for m in arm["members"]:
      if m["diverged"]:
        top.axvline(m["lr"], color="r", lw=0.8, ls="--", label=f"lr {m['lr']:g} diverged")
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_xlabel("learning rate α")
    top.set_ylabel("E‖α∇ℓ − α∇_SGD‖²")
    top.set_title(f"{_norm_title(arm)}, |B|={result['batch_size']}, pool N={result['pool_size']}")
    for m in alive:
      kernels = [(k, v) for k, v in m["layer_C"].items() if k.endswith("kernel")]
      bottom.plot(range(len(kernels)), _as_float([v for _, v in kernels]), marker=".",
                  label=f"lr {m['lr']:g}  (B_simple {m['b_simple']:.3g},"
                        f" two-batch {m['b_simple_two_batch_train_mode']:.3g})")
    bottom.set_yscale("log")
    bottom.set_xlabel("kernel in depth order (stem … classifier)")
    bottom.set_ylabel("per-layer C")
    for ax in (top, bottom):
      ax.grid(alpha=0.3, which="both")
      ax.legend(fontsize=7)
  where = (f"at checkpoint step {result['step']} (α: each member's rate there)" if "step" in result
           else f"after {result['train_steps']} steps at each rate")
  _save(fig, path, f"SGD noise and its bound {where}")
