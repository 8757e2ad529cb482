"""F3 and F7: weight and output gradients, BN against none.

Every member (arm x seed) at initialisation (`python -m bnjax.main
--config=configs/gradients.py`), or one seed's members of a trained sweep
(`python -m bnjax.analyze --analyses=gradients`), on the training batch of
its step: ∂L/∂logits per image and class (F7 heatmap, first member of each
arm and rate) with the scalars that say how input-independent it is; the weight
gradients of weight layer `histogram_layer` (F3 histogram; a number or a
position such as "middle", resolved against each model:
`analysis.common.resolve_layer`) and every weight layer's gradient norm
against depth. Any model family works: it needs weight layers, nothing
recorded. Writes DIR/analysis/<stem>.json ({batch_size, step,
histogram_layer, setting, members: [{arm, seed, step[, lr, member],
finite, loss, histogram_layer (the resolved number), ...}]}) and the
figures <stem>_f7_heatmap and <stem>_f3_histogram.
"""

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnjax import data, plots, workdir as workdir_lib
from bnjax.analysis import common, gradients as grad
from bnjax.experiments import _members

RECORDINGS = ()  # parameters and the logits only


def defaults() -> ml_collections.ConfigDict:
  """F3's layer, the middle weight layer: ResNet-110's layer 55, as in the paper."""
  return ml_collections.ConfigDict(dict(histogram_layer=common.layer_choice("middle")))


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses a `histogram_layer` that some arm's model does not have, in one sentence."""
  for name, model in _members.arm_models(config):
    common.resolve_layer(config.analysis.histogram_layer, common.num_weight_layers(model),
                         "config.analysis.histogram_layer", name)


def histogram(values: np.ndarray, bins: int = 81) -> dict[str, Any]:
  """Counts on symmetric bins spanning ±max|value|, plus spread numbers."""
  values = np.asarray(values, np.float64)
  edge = float(np.max(np.abs(values))) or 1.0
  counts, edges = np.histogram(values, bins=bins, range=(-edge, edge))
  return {"counts": counts, "edges": edges, "std": float(np.std(values)),
          "max_abs": edge, "p99_abs": float(np.percentile(np.abs(values), 99))}


def measure(config: ml_collections.ConfigDict, subjects: Iterable[_members.Subject],
            dataset: data.Dataset, step: int, seed: int | None = None) -> dict[str, Any]:
  """Every subject's gradient summary; the first of each arm (and rate) keeps its F7 heatmap.

  On training batch `step`, the one the subjects (all at that step) train on next.
  """
  layer = config.analysis.histogram_layer
  images, labels = _members.train_batch(config, dataset, step, seed=seed)
  summary = lambda model, variables, x, y: grad.gradient_summary(model, variables, x, y, layer)
  members, seen = [], set()
  for subject, out in _members.measure_each(subjects, summary, images, labels):
    record = {**subject.identity(), "finite": bool(out["finite"]), "loss": out["loss"],
              "histogram_layer": int(out["layer"])}
    if record["finite"]:  # an overflowed pass has only NaN gradients to show
      panel = (subject.arm, subject.lr)
      record.update(_finite_record(out, labels, with_heatmap=panel not in seen))
      seen.add(panel)
    members.append(record)
  return {"batch_size": int(labels.shape[0]), "step": step, "histogram_layer": layer,
          "setting": plots.setting(config), "members": members}


def _finite_record(out: dict[str, Any], labels_B: jax.Array, with_heatmap: bool
                   ) -> dict[str, Any]:
  """The F3/F7 numbers of one member with a finite gradient (`gradient_summary` output)."""
  probs_BxK = out["output_grad_BxK"] * labels_B.shape[0] + np.eye(data.NUM_CLASSES)[labels_B]
  predictions = grad.input_independence(jnp.asarray(probs_BxK))
  record = {"same_class_share": out["same_class_share"], "mean_cosine": out["mean_cosine"],
            "prediction_share": predictions["same_class_share"],
            "mean_max_probability": float(np.mean(np.max(probs_BxK, axis=1))),
            "weight_grad_norms": out["weight_grad_norms_L"],
            "layer_histogram": histogram(out["layer_grad_values"])}
  if with_heatmap:
    record["output_grad"] = out["output_grad_BxK"]
    record["labels"] = np.asarray(labels_B)
  return record


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """The F7 heatmap and the F3 histogram with gradient norms against depth."""
  members, when = result["members"], _members.when(result["step"])
  if not any("layer_histogram" in m for m in members):
    return []
  paths = [workdir_lib.figure_path(workdir, f"{stem}{suffix}")
           for suffix in ("_f7_heatmap", "_f3_histogram")]
  output_gradient_figure(members, paths[0], when, result.get("setting"))
  gradient_histogram_figure(members, paths[1], when, result.get("setting"))
  return paths


def output_gradient_figure(members: list[dict], path: str, when: str,
                           setting: str | None) -> None:
  """F7: ∂L/∂logits per image (rows) and class (columns), BN and no-BN side by side."""
  records = [r for r in members if r.get("output_grad") is not None]
  fig, axes = plots.subplots(1, len(records), figsize=(4.5 * len(records), 6), squeeze=False)
  for ax, r in zip(axes[0], records):
    g = np.asarray([plots.as_float(row) for row in r["output_grad"]])
    bound = np.nanmax(np.abs(g))
    im = ax.imshow(g, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="∂L/∂logit (batch-mean loss)")
    ax.set_title(f"{plots.panel_label(r)}\nsame top class"
                 f" {plots.number(r['same_class_share'], '.2f')}, mean cosine"
                 f" {plots.number(r['mean_cosine'], '.2f')}\npredicted-class share"
                 f" {plots.number(r['prediction_share'], '.2f')}",
                 fontsize=9)
    ax.set_xlabel("class")
    ax.set_ylabel("image in batch")
    ax.set_xticks(range(g.shape[1]))
  plots.save(fig, path, f"Output-layer gradient {when}", setting)


def gradient_histogram_figure(members: list[dict], path: str, when: str,
                              setting: str | None) -> None:
  """F3: histogram of one weight layer's gradients per arm, and gradient norms vs depth.

  Each histogram keeps its own horizontal range (the no-BN one is far
  wider); the last panel puts every weight layer's gradient norm on a log
  axis, the histogram's layer dotted.
  """
  groups = plots.by_arm(members, "layer_histogram")  # members that overflowed have none
  fig, axes = plots.subplots(1, len(groups) + 1, figsize=(4.6 * (len(groups) + 1), 4),
                             squeeze=False)
  for i, (ax, (arm, records)) in enumerate(zip(axes[0], groups.items())):
    h = records[0]["layer_histogram"]
    edges = plots.as_float(h["edges"])
    ax.stairs(h["counts"], edges, fill=True, color=f"C{i}", alpha=0.7)
    ax.set_title(f"{arm}: layer {records[0]['histogram_layer']},"
                 f" std {plots.number(h['std'], '.3g')}", fontsize=10)
    ax.set_xlabel("weight gradient ∂L/∂w")
    ax.set_ylabel("count")
  norm_ax = axes[0][-1]
  for i, (arm, records) in enumerate(groups.items()):
    for j, r in enumerate(records):
      norms = plots.as_float(r["weight_grad_norms"])
      norm_ax.plot(np.arange(1, len(norms) + 1), norms, color=f"C{i}", alpha=1.0 if j == 0 else 0.4,
                   label=arm if j == 0 else None)
  for layer in sorted({r["histogram_layer"] for records in groups.values() for r in records}):
    norm_ax.axvline(layer, color="gray", ls=":", lw=1)
  norm_ax.set_yscale("log")
  norm_ax.set_xlabel("weight layer (depth order)")
  norm_ax.set_ylabel("‖∂L/∂W‖ (Frobenius)")
  norm_ax.set_title("Gradient norm vs depth (one line per seed)", fontsize=10)
  norm_ax.grid(alpha=0.3, which="both")
  norm_ax.legend(fontsize=8)
  plots.save(fig, path, f"Weight gradients {when}", setting)


run, from_checkpoint = _members.entry_points("gradients", measure, figures)
