"""Matplotlib figures in the style of the paper: F1, and what every experiment's figures share.

Each experiment draws its own figures (`bnjax.experiments.<name>.figures`)
with the helpers below.

Figures are `matplotlib.figure.Figure` objects, not pyplot ones: writing a
file then needs no backend, so importing this module leaves the caller's
backend (a notebook's, say) as it was.
"""

import collections
from collections.abc import Sequence
from typing import Any

import matplotlib
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from bnjax import config as config_lib, data, files, models


def subplots(nrows: int, ncols: int, figsize: tuple[float, float],
              **kwargs: Any) -> tuple[Figure, Any]:
  """A new figure and its grid of axes, as `pyplot.subplots` makes them, without pyplot."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig: Figure, path: str, title: str, setting: str | None = None,
         right: float = 1.0) -> None:
  """Titles, lays out and writes (PNG, 120 dpi) a figure, replacing `path` whole.

  `setting` (`setting`'s models and data) goes on a second title line; the
  axes fill the figure up to `right` (a fraction of its width), leaving
  the rest to a figure legend.
  """
  for ax in fig.axes:
    _note_if_nothing_to_draw(ax)
  fig.suptitle(title if setting is None else f"{title}\n{setting}",
               wrap=True)  # within a figure narrower than the title (one panel)
  fig.tight_layout(rect=(0, 0, right, 1))
  with files.replaced(path, binary=True) as f:
    fig.savefig(f, format="png", dpi=120)


def _note_if_nothing_to_draw(ax: Any) -> None:
  """A log axis with no positive finite value to draw (every measurement non-finite, say)
  gets a note saying so, and the range of the lines' own coordinates on it (or 0.1 to 10),
  where matplotlib would fail to place its ticks."""
  empty = False
  for axis, scale, (_, high), set_limits in (
      (0, ax.get_xscale(), ax.dataLim.intervalx, ax.set_xlim),
      (1, ax.get_yscale(), ax.dataLim.intervaly, ax.set_ylim)):
    if scale == "log" and not (np.isfinite(high) and high > 0):
      values = np.concatenate([np.asarray(line.get_data()[axis], float).ravel()
                               for line in ax.get_lines() if line.get_transform() is ax.transData]
                              + [np.zeros(0)])
      values = values[np.isfinite(values) & (values > 0)]
      low, high = (values.min(), values.max()) if values.size else (0.1, 10.0)
      set_limits(low, high if high > low else low * 10)
      empty = True
  if empty:
    ax.text(0.5, 0.5, "no finite values to draw", transform=ax.transAxes, ha="center",
            va="center", color="gray")


def number(value: float | None, spec: str = ".2g") -> str:
  """A measured number for a label; None (how JSON holds a non-finite one) as "non-finite"."""
  return "non-finite" if value is None else format(value, spec)


def setting(config: ml_collections.ConfigDict) -> str:
  """The models and data of a config, for a figure title.

  E.g. "ResNet-8, BN / no BN, glorot_uniform init; synthetic data (8192
  training images)": every arm's model in the words of its family
  (`models.describe`), the parts that differ between arms joined by "/".
  """
  described = describe_all([models.describe(arm) for arm in config_lib.arm_configs(config)])
  return f"{described}; {describe_data(config.data)}"


def training_setting(config: ml_collections.ConfigDict) -> str:
  """`setting` and the training: "...; 600 steps of batch 16"."""
  return f"{setting(config)}; {config.train.num_steps} steps of batch {config.train.batch_size}"


def describe_data(data_config: ml_collections.ConfigDict) -> str:
  """"CIFAR-10", or "synthetic data (N training images)"."""
  if data_config.name == "cifar10":
    return "CIFAR-10"
  return f"{data_config.name} data ({data_config.synthetic_train_size} training images)"


def describe_all(descriptions: Sequence[str]) -> str:
  """Several models' descriptions in one: each comma-separated part once, variants joined by "/".

  ["ResNet-8, BN, he_normal init", "ResNet-8, no BN, he_normal init"] gives
  "ResNet-8, BN / no BN, he_normal init"; a part some descriptions lack is
  left out of theirs only.
  """
  parts = [d.split(", ") for d in descriptions]
  columns = []
  for i in range(max((len(p) for p in parts), default=0)):
    column = dict.fromkeys(p[i] for p in parts if i < len(p))
    columns.append(" / ".join(column))
  return ", ".join(columns)


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


LINE_STYLES = ("-", "--", ":", "-.")


def accuracy_figure(metrics: list[dict], members: list[dict], fields: Sequence[str],
                    path: str, num_steps: int, setting_line: str = "") -> None:
  """F1: train and test accuracy against % of training, per (arm, lr).

  One colour per rate, one line style per arm; lines are the mean over
  seeds, the band spans min to max; a group whose members diverged says so
  in the legend, and its curve ends there. The legend sits beside the
  panels, clear of the curves and the chance line. `setting_line` (the
  models, data and steps) goes under the title.
  """
  groups = {m["member"]: tuple(m[f] for f in fields) + (m["lr"],) for m in members}
  label_of = {groups[m["member"]]: _arm_label(m, fields) for m in members}
  diverged = collections.Counter(groups[m["member"]] for m in members if m["status"] == "diverged")
  size = collections.Counter(groups.values())
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  rates = sorted({g[-1] for g in groups.values()})
  color_of = {lr: colors[i % len(colors)] for i, lr in enumerate(rates)}
  arms = list(dict.fromkeys(groups[m["member"]][:-1] for m in members))
  style_of = {arm: LINE_STYLES[i % len(LINE_STYLES)] for i, arm in enumerate(arms)}
  fig, axes = subplots(1, 2, figsize=(13, 4.6), sharey=True)
  for ax, key, title in zip(axes, ("train_accuracy", "test_accuracy"), ("Train", "Test")):
    curves = _curves(metrics, key, groups)
    for group in sorted(curves, key=lambda g: (arms.index(g[:-1]), g[-1])):
      steps, mean, low, high = _mean_and_spread(curves[group])
      pct = 100.0 * steps / num_steps
      label = label_of[group]
      if diverged[group]:
        label += f" (diverged {diverged[group]}/{size[group]})"
      color = color_of[group[-1]]
      ax.plot(pct, 100 * mean, color=color, ls=style_of[group[:-1]], label=label)
      ax.fill_between(pct, 100 * low, 100 * high, color=color, alpha=0.15, linewidth=0)
    ax.axhline(100.0 / data.NUM_CLASSES, color="gray", lw=0.8, ls=":", label="chance")
    ax.set_title(f"{title} accuracy")
    ax.set_xlabel("% of training")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy (%)")
  legend = {}  # label -> handle, over both panels (a member may diverge before its first eval)
  for ax in axes:
    legend.update(zip(*reversed(ax.get_legend_handles_labels())))
  fig.legend(legend.values(), legend.keys(), fontsize=7, loc="center left",
             bbox_to_anchor=(0.8, 0.5), title="mean, min-max over seeds", title_fontsize=7)
  per_seed = any(m.get("data_stream") == "per_seed" for m in members)
  spread = ("initialisations and data orders, each seed its own" if per_seed
            else "initialisations, all seeds seeing the same data")
  save(fig, path, f"Accuracy during training (spread over {spread})", setting_line or None,
       right=0.8)


# -------------------------------------------------------- shared by the experiments' figures


def panel_label(member: dict) -> str:
  """The arm label, and the rate for a member of a trained sweep ("norm=batch, lr 0.05").

  Members at initialisation carry no rate, and an arm's panel holds its
  seeds; members measured from a checkpoint differ by rate, one panel each.
  """
  lr = member.get("lr")
  return member["arm"] if lr is None else ", ".join(filter(None, (member["arm"], f"lr {lr:g}")))


def by_arm(members: list[dict], key: str | None = None) -> dict[str, list[dict]]:
  """Member records grouped by `panel_label`, in order, keeping those that carry `key`."""
  groups: dict[str, list[dict]] = collections.defaultdict(list)
  for m in members:
    if key is None or m.get(key) is not None:
      groups[panel_label(m)].append(m)
  return dict(groups)


def as_float(values: Sequence[Any]) -> np.ndarray:
  """JSON numbers with null as NaN (NaN leaves a gap in a line plot)."""
  return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def log_log(ax: Any, xlabel: str) -> None:
  """Log axes both ways, a grid and a small legend: the optimisation figures' panels."""
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
