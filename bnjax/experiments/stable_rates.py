"""The stable-rate map: the largest learning rate that trains, against depth, per norm.

    python -m bnjax.main --config=configs/stable_rates.py --workdir=DIR

Every member of depths x norms x rates x seeds (`config.sweep.arms.depth`,
`.norm`, `config.sweep.lrs`, `.seeds`) trains `config.train.num_steps` steps
with the sweep's loop (`bnjax.loop.train_sweep`: one program per arm, each
member frozen once it diverges); then members.json and metrics.jsonl become
DIR/analysis/stable_rates.json and DIR/figures/stable_rates.png.

A member diverged when the loop froze it (its loss or parameters not
finite, or its loss above `config.train.max_loss`). A rate is stable for an
arm when every seed trained at it; the arm's largest stable rate is the
largest rate of the grid at and below which every rate is stable (null when
the smallest rate already diverges). The paper's prediction: without BN it
is lower, and falls with depth.

The JSON: {name, num_steps, batch_size, initializer, data, max_loss,
schedule, lrs, seeds, depths, series_fields, arms: [{arm, depth, <series
fields>, largest_stable_lr, rates: [{lr, diverged, diverged_fraction,
final_train_loss, members: [{member, seed, status, diverged_step,
final_train_loss, final_train_accuracy}]}]}], series: [{series, <series
fields>, depths, largest_stable_lr}]}. Series are the arms' fields other
than depth (usually just norm); `final_train_loss` is the train loss
averaged over the last logged interval (`log_every` steps), null for a
diverged member, and over the trained seeds for a rate.
"""

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bnjax import errors, experiments, loop, plots, sweep, workdir as workdir_lib

NAME = "stable_rates"
RECORDINGS = ()  # trains; measures nothing in the models
REQUIRED_ARMS = ("depth", "norm")
HEATMAP_COLUMNS = 2  # heatmaps per row of the figure


def defaults() -> ml_collections.ConfigDict:
  """No settings of its own: the grid is the sweep's, the budget `config.train.num_steps`."""
  return ml_collections.ConfigDict()


def lr_grid(low: float, high: float, num: int) -> tuple[float, ...]:
  """`num` rates log-spaced from `low` to `high`, rounded to 3 significant digits."""
  return tuple(float(f"{lr:.3g}") for lr in np.geomspace(low, high, num))


def largest_stable_rate(diverged_by_lr: Mapping[float, Sequence[bool]]) -> float | None:
  """The largest rate at and below which no member diverged; None if the smallest did.

  `diverged_by_lr` maps each rate of the grid to its members' (seeds')
  divergence. A stable rate above a diverged one does not count: the map
  asks how far the rate can be raised, so it stops at the first divergence.
  """
  stable = None
  for lr in sorted(diverged_by_lr):
    if any(diverged_by_lr[lr]):
      break
    stable = float(lr)
  return stable


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the grid, then writes the table and its figure; returns the table."""
  check(config)
  loop.train_sweep(config, workdir)
  result = table(config, workdir_lib.read_members(workdir), workdir_lib.read_metrics(workdir))
  experiments.write(workdir, NAME, result, figures)
  for series in result["series"]:
    logging.info("stable_rates %s: largest stable lr by depth %s", series["series"],
                 dict(zip(series["depths"], series["largest_stable_lr"])))
  return result


def check(config: ml_collections.ConfigDict) -> None:
  """The map's axes are swept arms: config.sweep.arms must name depth and norm."""
  missing = [f for f in REQUIRED_ARMS if f not in sweep.arm_fields(config)]
  if missing:
    raise errors.ConfigError(
        f"The stable-rate map sweeps depth and norm, but config.sweep.arms lacks {missing}; "
        f"set e.g. --config.sweep.arms.depth='(8, 20)' (configs/stable_rates.py sets both).")


def _final_metrics(metrics: list[dict], num_steps: int) -> dict[int, dict]:
  """Each member's metrics record at the last step (train means over its last interval)."""
  return {r["member"]: r for r in metrics if r["step"] == num_steps}


def _member_row(member: dict, final: dict | None) -> dict[str, Any]:
  """One member's row: its status, and its final train numbers only if it trained."""
  trained = member["status"] == "trained"
  final = final if (trained and final is not None) else {}
  return {"member": member["member"], "seed": member["seed"], "status": member["status"],
          "diverged_step": member["diverged_step"],
          "final_train_loss": final.get("train_loss"),
          "final_train_accuracy": final.get("train_accuracy")}


def _rate_row(lr: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
  """One rate of an arm: its seeds' rows, whether any diverged, their mean final loss."""
  diverged = [r["status"] == "diverged" for r in rows]
  losses = [r["final_train_loss"] for r in rows if r["final_train_loss"] is not None]
  return {"lr": lr, "diverged": any(diverged), "diverged_fraction": float(np.mean(diverged)),
          "final_train_loss": float(np.mean(losses)) if losses else None, "members": rows}


def table(config: ml_collections.ConfigDict, members: list[dict],
          metrics: list[dict]) -> dict[str, Any]:
  """The result: per arm, per rate, divergence and final loss; per series, stable rate by depth.

  `members` and `metrics` are members.json and metrics.jsonl of the run.
  A member still "running" (a table of an unfinished run) counts as not diverged.
  """
  fields = sweep.arm_fields(config)
  series_fields = tuple(f for f in fields if f != "depth")
  final = _final_metrics(metrics, config.train.num_steps)
  grouped: dict[tuple, dict[float, list]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for m in members:
    grouped[tuple(m[f] for f in fields)][m["lr"]].append(_member_row(m, final.get(m["member"])))
  arms = []
  for key, by_lr in grouped.items():
    arm = dict(zip(fields, key))
    rates = [_rate_row(lr, sorted(rows, key=lambda r: r["seed"]))
             for lr, rows in sorted(by_lr.items())]
    stable = largest_stable_rate({r["lr"]: [m["status"] == "diverged" for m in r["members"]]
                                  for r in rates})
    arms.append({"arm": _label(arm, fields), **arm, "largest_stable_lr": stable, "rates": rates})
  train = config.train
  return {"name": NAME, "num_steps": train.num_steps, "batch_size": train.batch_size,
          "initializer": config.model.get("initializer"), "data": config.data.name,
          "setting": plots.setting(config),
          "max_loss": train.max_loss, "schedule": _schedule(train),
          "lrs": sorted({float(lr) for lr in config.sweep.lrs}),
          "seeds": [int(s) for s in config.sweep.seeds],
          "depths": sorted({a["depth"] for a in arms}), "series_fields": list(series_fields),
          "arms": arms, "series": _series(arms, series_fields)}


def _series(arms: list[dict[str, Any]], series_fields: Sequence[str]) -> list[dict[str, Any]]:
  """Per series (the arm fields but depth), the largest stable rate at each depth."""
  by_series: dict[tuple, list] = collections.defaultdict(list)
  for arm in arms:
    by_series[tuple(arm[f] for f in series_fields)].append(arm)
  out = []
  for key, group in by_series.items():
    group = sorted(group, key=lambda a: a["depth"])
    fields = dict(zip(series_fields, key))
    out.append({"series": _label(fields, series_fields), **fields,
                "depths": [a["depth"] for a in group],
                "largest_stable_lr": [a["largest_stable_lr"] for a in group]})
  return out


def _label(values: Mapping[str, Any], fields: Sequence[str]) -> str:
  """"norm=batch, depth=8": the fields' values in the order the sweep names them."""
  return ", ".join(f"{f}={values[f]}" for f in fields)


def _schedule(train: ml_collections.ConfigDict) -> str:
  """The learning-rate schedule in words: the map means a constant rate."""
  if not train.lr_boundaries and not train.warmup_steps:
    return "constant"
  return (f"x{train.lr_decay:g} at fractions {list(train.lr_boundaries)} of training, "
          f"x{train.warmup_factor:g} for the first {train.warmup_steps} steps")


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """Diverged fraction over (depth, rate), one panel per series, and the stable rate by depth.

  The heatmaps fill `HEATMAP_COLUMNS` columns, row by row; the last column
  is the stable-rate panel.

  In each heatmap a row is a depth and a column a rate of the grid; the
  outlined cell is the arm's largest stable rate, and each cell shows the
  final train loss of its trained seeds, or the step the first one diverged
  at. The last panel draws the largest stable rate against depth (log
  scale), one line per series; a depth where even the smallest rate
  diverged is drawn at the bottom edge with an open marker.
  """
  series, lrs, depths = result["series"], result["lrs"], result["depths"]
  n = len(series)
  cols = min(n, HEATMAP_COLUMNS)
  rows = -(-n // cols)
  width, height = max(4.0, 0.55 * len(lrs) + 1.5), 2.4 + 0.6 * len(depths)
  fig = Figure(figsize=(width * cols + 5.5, height * rows))
  grid = fig.add_gridspec(rows, cols + 2, width_ratios=[width] * cols + [0.2, 4.5])
  arms = {(a["depth"], _series_key(a, result)): a for a in result["arms"]}
  for k, s in enumerate(series):
    image = _heatmap(fig.add_subplot(grid[k // cols, k % cols]), s, arms, lrs, depths, result)
  fig.colorbar(image, cax=fig.add_subplot(grid[:, cols]), label="diverged fraction of seeds")
  _stable_panel(fig.add_subplot(grid[:, cols + 1]), series, lrs)
  path = workdir_lib.figure_path(workdir, stem)
  plots.save(fig, path, f"Largest stable learning rate: {result['num_steps']} steps at a"
                        f" {result['schedule']} rate, batch {result['batch_size']}",
             result.get("setting"))
  return [path]


def _series_key(arm: Mapping[str, Any], result: Mapping[str, Any]) -> tuple:
  """The values of the series fields of an arm (or a series), to match the two."""
  return tuple(arm[f] for f in result["series_fields"])


def _heatmap(ax: Any, s: dict[str, Any], arms: dict, lrs: list[float], depths: list[int],
             result: dict[str, Any]) -> Any:
  """One series' (depth x rate) grid of diverged fractions, annotated; returns the image."""
  fraction = np.full((len(depths), len(lrs)), np.nan)
  key = _series_key(s, result)
  for i, depth in enumerate(depths):
    arm = arms.get((depth, key))
    for rate in (arm or {}).get("rates", []):
      j = lrs.index(rate["lr"])
      fraction[i, j] = rate["diverged_fraction"]
      ax.text(j, i, _cell_text(rate), ha="center", va="center", fontsize=6,
              color="white" if rate["diverged_fraction"] > 0.5 else "black")
    if arm and arm["largest_stable_lr"] is not None:
      j = lrs.index(arm["largest_stable_lr"])
      ax.add_patch(_outline(j, i))
  image = ax.imshow(fraction, cmap="Reds", norm=mcolors.Normalize(0.0, 1.0), aspect="auto",
                    origin="lower")
  ax.set_xticks(range(len(lrs)), [f"{lr:.2g}" for lr in lrs], rotation=60, fontsize=7)
  ax.set_yticks(range(len(depths)), [str(d) for d in depths])
  ax.set_xlabel("learning rate (cells: final train loss, or div@step)")
  ax.set_ylabel("depth")
  ax.set_title(s["series"] + " (outlined: largest stable rate)", fontsize=9)
  return image


def _cell_text(rate: Mapping[str, Any]) -> str:
  """The final train loss of the trained seeds, else the step the first seed diverged at."""
  if rate["final_train_loss"] is not None:
    return f"{rate['final_train_loss']:.2g}"
  steps = [m["diverged_step"] for m in rate["members"] if m["diverged_step"] is not None]
  return f"div@{min(steps)}" if steps else "-"


def _outline(col: int, row: int) -> Rectangle:
  """A cell's outline in an imshow grid (cell centres at integers)."""
  return Rectangle((col - 0.5, row - 0.5), 1.0, 1.0, fill=False, edgecolor="blue", lw=2.0)


def _stable_panel(ax: Any, series: list[dict[str, Any]], lrs: list[float]) -> None:
  """The largest stable rate against depth, log scale, one line per series."""
  floor = min(lrs) / 2.0  # where a depth with no stable rate is drawn
  for k, s in enumerate(series):
    depths = np.asarray(s["depths"], float)
    stable = plots.as_float(s["largest_stable_lr"])
    size = 4.0 + 3.0 * (len(series) - 1 - k)  # earlier series larger: coinciding points show
    lines = ax.plot(depths, stable, marker="o", ms=size, label=s["series"])
    none = np.isnan(stable)
    if none.any():
      ax.plot(depths[none], np.full(none.sum(), floor), ls="none", marker="o", ms=size,
              mfc="none", color=lines[0].get_color())
  ax.set_yscale("log")
  ax.set_xticks(sorted({d for s in series for d in s["depths"]}))
  ax.set_ylim(floor / 1.5, max(lrs) * 1.5)
  ax.axhline(floor, color="gray", lw=0.5, ls=":")
  ax.set_xlabel("depth")
  ax.set_ylabel("largest stable learning rate")
  ax.set_title("Largest stable rate by depth\n(open marker: none stable)", fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
