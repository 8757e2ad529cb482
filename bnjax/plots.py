"""Matplotlib figures in the style of the paper, one function per figure."""

import collections
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
  fig.suptitle("Accuracy during training (mean and min-max over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _norm_title(arm: dict[str, Any]) -> str:
  name = "BN" if arm.get("norm") == "batch" else "no BN"
  return f"{name}, ResNet-{arm.get('depth')}"


def _as_float(values: Sequence[Any]) -> np.ndarray:
  """JSON numbers with null as NaN (NaN leaves a gap in a line plot)."""
  return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def divergence_figure(result: dict[str, Any], path: str) -> None:
  """F4: relative loss L(θ − ηg)/L(θ) against η (log-log), BN and no BN side by side.

  Top row: one line per measured minibatch, the divergence threshold dashed.
  Bottom row: gradient predictiveness ‖∇L(θ − ηg) − g‖ (Santurkar et al.).
  """
  arms = result["arms"]
  fig, axes = plt.subplots(2, len(arms), figsize=(5.2 * len(arms), 7.5), squeeze=False)
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
  fig.suptitle(f"Divergence along the minibatch gradient (train-mode BN), {where}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def sgd_noise_figure(result: dict[str, Any], path: str) -> None:
  """F2: SGD noise against the learning rate α (log-log), BN and no BN side by side.

  Top row: the bound α²C/|B|, its expectation without replacement, the
  measured noise (fixed-statistics and train-mode gradients). Bottom row:
  per-layer C of the conv and dense kernels in depth order, one line per rate.
  """
  arms = result["arms"]
  fig, axes = plt.subplots(2, len(arms), figsize=(5.2 * len(arms), 7.5), squeeze=False)
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
  fig.suptitle(f"SGD noise and its bound {where}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
