"""What Bjorck et al. (2018) report, as bands a measurement can pass or fail.

Each `Claim` is one number read off the paper (its figures F1–F8, at
ResNet-110 on CIFAR-10, batch 128) with the band that counts as agreement.
Figure readings are approximate: a band is the reading's own uncertainty
(about ±0.5 decade on a log axis read by eye, ±15% on a linear one), never
widened to let a measurement pass. `bnjax.experiments.reproduce` measures
the same quantities, one member per seed, and `judge` sets each claim's
members against its band: the verdict from their median, and whether their
whole range lies inside the band, outside it, or across it.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Claim:
  """One reading of the paper: `low <= measured <= high` agrees with it.

  key: the name the measurement is stored under in reproduction.json.
  figure: "F1" ... "F8".
  what: the quantity, in words.
  reading: what the paper shows, in words (with its ≈).
  low, high: the band (either may be infinite).
  note: what is known of why a measurement may land outside the band,
    shown in the report next to a reading that differs.
  """

  key: str
  figure: str
  what: str
  reading: str
  low: float = -math.inf
  high: float = math.inf
  note: str = ""


def verdict(claim: Claim, measured: float | None) -> str:
  """"agrees", "differs", or "not measured" (None or NaN: e.g. it overflowed)."""
  if measured is None or math.isnan(measured):
    return "not measured"
  return "agrees" if claim.low <= measured <= claim.high else "differs"


# Where the members' whole range lies against a band.
RANGES = ("inside", "outside", "straddles", "not measured")


def range_verdict(claim: Claim, low: float | None, high: float | None) -> str:
  """"inside" when [low, high] lies within the band, "outside" when it misses it, else "straddles".

  "not measured" when there is no range (no member measured).
  """
  if low is None or high is None:
    return "not measured"
  if claim.low <= low and high <= claim.high:
    return "inside"
  if high < claim.low or low > claim.high:
    return "outside"
  return "straddles"


def summary(members: Sequence[float | None]) -> dict[str, Any]:
  """Median, min and max of the measured members (None and NaN are not measured).

  The median of an even count is the mean of the middle two; inf counts
  (e.g. "no divergent η on the grid"). Every statistic is None when no
  member was measured.
  """
  measured = [float(m) for m in members if m is not None and not math.isnan(m)]
  if not measured:
    return {"median": None, "min": None, "max": None, "num_measured": 0}
  ordered = sorted(measured)
  middle = len(ordered) // 2
  median = (ordered[middle] if len(ordered) % 2
            else _midpoint(ordered[middle - 1], ordered[middle]))
  return {"median": median, "min": ordered[0], "max": ordered[-1],
          "num_measured": len(measured)}


def _midpoint(a: float, b: float) -> float:
  return a if a == b else (a + b) / 2  # a == b also keeps inf + inf from becoming nan


def judge(claim: Claim, members: Sequence[float | None]) -> dict[str, Any]:
  """A claim's row: its fields, its members, their `summary`, and both verdicts.

  "verdict" judges the median (`verdict`), "range" the whole [min, max]
  (`range_verdict`).
  """
  found = summary(members)
  return {**dataclasses.asdict(claim), "members": [None if m is None else float(m)
                                                   for m in members],
          **found, "verdict": verdict(claim, found["median"]),
          "range": range_verdict(claim, found["min"], found["max"])}


def _decade(key: str, figure: str, what: str, reading: str, centre: float,
            half_width: float = 0.5, note: str = "") -> Claim:
  return Claim(key, figure, what, reading, centre - half_width, centre + half_width, note)


_GRADIENT_SCALE = (
    "Without BN the weight gradients scale with the loss at initialisation, that is with the"
    " scale of the initial logits, which the initialiser sets: the initialiser table puts the"
    " candidates decades apart. The paper reports neither its initialiser nor its initial loss.")
_BLOW_UP = (
    "Where the no-BN loss blows up along −g depends on the initial weights: its range over"
    " seeds is the reading's own uncertainty, which one seed cannot show.")
_LATER_MINIBATCHES = (
    "The first steps at 1e-4 shrink the no-BN network's large initial logits (the F1 table:"
    " its loss falls by about two decades), and from there the line is smooth; in the paper"
    " the curves at minibatches 4 and 7 blow up like minibatch 1's, which suggests a network"
    " that started nearer its trained loss scale.")
_GROWTH = (
    "How the no-BN channel moments grow with depth depends on the initialiser: no"
    " variance-scaling initialiser tried gives the paper's ≈4.3 decades of std from layer 6"
    " to 110 (initialiser table: Glorot-uniform and LeCun-normal grow less, He-normal far"
    " more), and the paper's text names none. It depends on the seed and the input too: the"
    " ranges and the input table say by how much.")
_F5_STEP = (
    "F5's step −update_lr·g has one size for every seed, while the η at which the no-BN loss"
    " blows up (F4) varies by about a decade over seeds: the same step overflows float32 for"
    " some seeds (inf) and stays moderate for others, so the variances at its end span many"
    " decades. The growth of the channel moments with depth (see F6) sets their scale.")


CLAIMS: tuple[Claim, ...] = (
    # F1: at the small rate BN and no BN both train; no BN diverges at the larger rates.
    Claim("f1_trains/batch/0.0001", "F1", "BN at lr 1e-4 trains (1 = yes)",
          "trains (≈81% test accuracy at the end)", 1, 1),
    Claim("f1_trains/batch/0.003", "F1", "BN at lr 3e-3 trains (1 = yes)",
          "trains (≈90.5%)", 1, 1),
    Claim("f1_trains/batch/0.1", "F1", "BN at lr 0.1 trains (1 = yes)", "trains (≈93%)", 1, 1),
    Claim("f1_trains/none/0.0001", "F1", "no BN at lr 1e-4 trains (1 = yes)",
          "trains (≈82%, about equal to BN at 1e-4)", 1, 1),
    Claim("f1_trains/none/0.003", "F1", "no BN at lr 3e-3 trains (1 = yes)",
          "diverges", 0, 0),
    Claim("f1_trains/none/0.1", "F1", "no BN at lr 0.1 trains (1 = yes)", "diverges", 0, 0),
    # F2: the measured SGD noise stays below α²C/|B|.
    Claim("f2_noise_over_bound/batch", "F2", "BN: measured SGD noise / α²C/|B|",
          "≤ 1 (the bound)", 0, 1),
    Claim("f2_noise_over_bound/none", "F2", "no BN: measured SGD noise / α²C/|B|",
          "≤ 1 (the bound)", 0, 1),
    # F3: layer-55 weight gradients at initialisation.
    _decade("f3_max_abs_grad/batch", "F3", "BN: log10 max |∂L/∂w|, layer 55",
            "histogram within ≈ ±0.04", math.log10(0.04)),
    _decade("f3_max_abs_grad/none", "F3", "no BN: log10 max |∂L/∂w|, layer 55",
            "histogram over ≈ ±4", math.log10(4.0), note=_GRADIENT_SCALE),
    _decade("f3_spread_ratio", "F3", "log10 (no-BN / BN) max |∂L/∂w|, layer 55",
            "≈100× wider without BN", 2.0, note=_GRADIENT_SCALE),
    # F4: relative loss L(θ − ηg)/L(θ) on the log grid 1e-5..1e-1.
    Claim("f4_first_divergent_eta/none/1", "F4",
          "no BN, minibatch 1: first η with relative loss > 1e3",
          "rises from η ≈ 1e-3, past 1e6 by η ≈ 3–5e-3", 1e-3, 5e-3, _BLOW_UP),
    Claim("f4_first_divergent_eta/none/4", "F4",
          "no BN, minibatch 4: first η with relative loss > 1e3", "as minibatch 1", 1e-3, 5e-3,
          _LATER_MINIBATCHES),
    Claim("f4_first_divergent_eta/none/7", "F4",
          "no BN, minibatch 7: first η with relative loss > 1e3", "as minibatch 1", 1e-3, 5e-3,
          _LATER_MINIBATCHES),
    Claim("f4_max_relative_loss/batch/1", "F4", "BN, minibatch 1: largest relative loss",
          "stays within ≈ 0.65–3", 0.65, 3.0),
    Claim("f4_max_relative_loss/batch/4", "F4", "BN, minibatch 4: largest relative loss",
          "stays within ≈ 0.65–3", 0.65, 3.0),
    Claim("f4_max_relative_loss/batch/7", "F4", "BN, minibatch 7: largest relative loss",
          "stays within ≈ 0.65–3", 0.65, 3.0),
    Claim("f4_min_relative_loss/batch/1", "F4", "BN, minibatch 1: smallest relative loss",
          "stays within ≈ 0.65–3", 0.65, 3.0,
          "The band's lower edge is the paper's lowest point read by eye (≈0.65)."),
    # F5: no BN, channel variances at the end of the diverging step.
    Claim("f5_log10_max_var/8", "F5", "no BN: log10 largest channel variance, layer 8",
          "variances ≤ 1", -math.inf, 0.0, _F5_STEP),
    _decade("f5_log10_max_var/44", "F5", "no BN: log10 largest channel variance, layer 44",
            "≈ 5e6", math.log10(5e6), note=_F5_STEP),
    _decade("f5_log10_max_var/80", "F5", "no BN: log10 largest channel variance, layer 80",
            "≈ 5e16", math.log10(5e16), note=_F5_STEP),
    # F6: log10 channel moments at initialisation.
    _decade("f6_log10_abs_mean/none/6", "F6", "no BN: log10 |channel mean|, layer 6", "≈ −1.5",
            -1.5, note=_GROWTH),
    _decade("f6_log10_abs_mean/none/110", "F6", "no BN: log10 |channel mean|, layer 110",
            "≈ 3.5", 3.5, note=_GROWTH),
    _decade("f6_log10_std/none/6", "F6", "no BN: log10 channel std, layer 6", "≈ −1.3", -1.3,
            note=_GROWTH),
    _decade("f6_log10_std/none/110", "F6", "no BN: log10 channel std, layer 110", "≈ 3.0", 3.0,
            note=_GROWTH),
    Claim("f6_log10_abs_mean_range/batch", "F6",
          "BN: largest − smallest log10 |channel mean| over layers 6, 18, …, 110",
          "roughly flat (≈ −1.1…0.5: a span ≤ 1.6)", 0.0, 1.6),
    Claim("f6_log10_std_range/batch", "F6",
          "BN: largest − smallest log10 channel std over layers 6, 18, …, 110",
          "roughly flat (≈ −0.9…1.0: a span ≤ 1.9)", 0.0, 1.9),
    # F7: ∂L/∂logits at initialisation.
    Claim("f7_same_class_share/none", "F7",
          "no BN: share of images whose largest ∂L/∂logit is the most common class",
          "one class column positive for almost every image", 0.9, 1.0),
    Claim("f7_same_class_share/batch", "F7",
          "BN: share of images whose largest ∂L/∂logit is the most common class",
          "varies across images (no single column)", 0.0, 0.5,
          "Not explained: at initialisation the BN network here puts most images' largest"
          " output gradient in one class column for at least half the seeds. The input table"
          " says whether the input moves it; the classifier's initialiser is the untested"
          " candidate."),
    # F8: largest singular value of a product of k Gaussian matrices.
    Claim("f8_max_singular/1", "F8", "largest singular value, 1 matrix",
          "≈ 2 (spread over [0, 2])", 1.7, 2.3),
    Claim("f8_max_singular/3", "F8", "largest singular value, product of 3", "≈ 3.2", 2.7, 3.7),
    Claim("f8_max_singular/5", "F8", "largest singular value, product of 5", "≈ 4", 3.4, 4.6),
)
