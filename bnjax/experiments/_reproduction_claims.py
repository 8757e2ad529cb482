"""Which measured numbers are the members of each of the paper's claims (`bnjax.paper.CLAIMS`).

`bnjax.experiments.reproduce` measures arms of one member per seed; here
those measurements become, for each claim key, the list of members that
`paper.judge` summarises: one per seed for the readings at initialisation,
one per line seed for F4 at minibatch 1, one for F1 and F4's later
minibatches (the first seed's first steps).
"""

import math
from typing import Any

import ml_collections
import numpy as np

Numbers = dict[str, Any]

# The measured input, against which the verdicts are made.
DATA_INPUT = "data"
# The paper's F5 is the network without BN along a diverging step.
F5_NORMS = ("none",)
F3_LAYER = 55  # of ResNet-110, the paper's F3 histogram
F6_LAYERS = tuple(range(6, 110, 12)) + (110,)  # the paper's F6 points: 6, 18, ..., 102, 110


def paper_layer(layer: int, depth: int) -> int:
  """The weight layer of a depth-`depth` ResNet at the relative depth of ResNet-110's `layer`."""
  return max(1, min(depth, round(layer * depth / 110)))


def members(arms: dict[str, Numbers], config: ml_collections.ConfigDict,
            input_name: str = DATA_INPUT) -> dict[str, list[float]]:
  """{`paper.CLAIMS` key: its members} measured on `input_name`; one member per seed.

  F1 and F4's minibatches 4 and 7 come from the first seed's first steps
  and so have one member, F4's minibatch 1 one per line seed; F2 to F7 have
  one per seed. Only the at-initialisation readings F3, F5, F6 and F7 are
  measured on the stand-in inputs.
  """
  depth, found = config.model.depth, {}
  at = lambda k: paper_layer(k, depth) - 1
  for norm, arm in arms.items():
    init = arm["init"][input_name]
    found[f"f3_max_abs_grad/{norm}"] = [_log10(x) for x in init["max_abs_grad"]]
    found[f"f7_same_class_share/{norm}"] = list(init["same_class_share"])
    for name in ("log10_abs_mean", "log10_std"):
      per_seed = [np.asarray(layers_L) for layers_L in init[f"{name}_L"]]
      found[f"f6_{name}_range/{norm}"] = [
          float(np.ptp(layers_L[[at(k) for k in F6_LAYERS]])) for layers_L in per_seed]
      for k in (6, 110):
        found[f"f6_{name}/{norm}/{k}"] = [float(layers_L[at(k)]) for layers_L in per_seed]
    if norm in F5_NORMS:
      for k in (8, 44, 80):
        found[f"f5_log10_max_var/{k}"] = [float(v[at(k)])
                                          for v in init["update_log10_max_var_L"]]
    if input_name == DATA_INPUT:
      found.update(_training_members(norm, arm, config))
  if "batch" in arms and "none" in arms:
    found["f3_spread_ratio"] = [none - bn for none, bn in zip(
        found["f3_max_abs_grad/none"], found["f3_max_abs_grad/batch"])]
  return found


def _training_members(norm: str, arm: Numbers, config: ml_collections.ConfigDict
                      ) -> dict[str, list[float]]:
  """The members of F1, F2 and F4 of one arm (measured on the data only)."""
  found = {f"f2_noise_over_bound/{norm}": list(arm["noise"]["noise_over_bound"])}
  for run in arm["first_steps"]:
    found[f"f1_trains/{norm}/{run['lr']:g}"] = [float(run["trains"])]
  lines = {1: arm["lines"]}
  usual = next((r["lines"] for r in arm["first_steps"]
                if r["lr"] == config.analysis.lr_by_norm[norm]), {})
  lines.update({minibatch: [line] for minibatch, line in usual.items()})
  for minibatch, measured in lines.items():
    if not measured:
      continue
    found[f"f4_first_divergent_eta/{norm}/{minibatch}"] = [
        line["first_divergent_eta"] for line in measured]
    found[f"f4_max_relative_loss/{norm}/{minibatch}"] = [
        float(np.max(line["relative_loss"])) for line in measured]
    found[f"f4_min_relative_loss/{norm}/{minibatch}"] = [
        float(np.min(line["relative_loss"])) for line in measured]
  return found


def _log10(x: float) -> float:
  return math.log10(x) if x > 0 and math.isfinite(x) else math.nan
