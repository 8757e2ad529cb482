"""What Bjorck et al. (2018) report, as bands a measurement can pass or fail.

Each `Claim` is one number read off the paper (its figures F1–F8, at
ResNet-110 on CIFAR-10, batch 128) with the band that counts as agreement.
Figure readings are approximate: a band is the reading's own uncertainty
(about ±0.5 decade on a log axis read by eye, ±15% on a linear one), never
widened to let a measurement pass. `bnjax.reproduce` measures the same
quantities and calls `verdict` on each.
"""

import dataclasses
import math


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


def _decade(key: str, figure: str, what: str, reading: str, centre: float,
            half_width: float = 0.5, note: str = "") -> Claim:
  return Claim(key, figure, what, reading, centre - half_width, centre + half_width, note)


_GRADIENT_SCALE = (
    "Without BN the gradients scale with the loss at initialisation, which the initialiser"
    " and the data set set and which the paper does not report; the initialiser table shows"
    " how far apart the candidates are.")
_LATER_MINIBATCHES = (
    "The first steps at 1e-4 shrink the no-BN network's large initial logits (F1's first"
    " steps: its loss falls by two decades), and from there the line is smooth; in the paper"
    " the curves at minibatches 4 and 7 blow up like minibatch 1's, which suggests a network"
    " that started nearer its trained loss scale.")
_GROWTH = (
    "No variance-scaling initialiser tried reproduces the paper's growth of channel moments"
    " from layer 6 to 110 (≈4.3 decades of std): Glorot-uniform and LeCun-normal grow less,"
    " He-normal far more (initialiser table). The paper's own initialiser is not named in its"
    " text; its data set (CIFAR-10) is the other difference when the synthetic data stands in.")


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
          "rises from η ≈ 1e-3, past 1e6 by η ≈ 3–5e-3", 1e-3, 5e-3),
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
          "variances ≤ 1", -math.inf, 0.0, _GROWTH),
    _decade("f5_log10_max_var/44", "F5", "no BN: log10 largest channel variance, layer 44",
            "≈ 5e6", math.log10(5e6), note=_GROWTH),
    _decade("f5_log10_max_var/80", "F5", "no BN: log10 largest channel variance, layer 80",
            "≈ 5e16", math.log10(5e16), note=_GROWTH),
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
          " output gradient in one class column; the classifier's initialiser and the data"
          " set are the untested candidates."),
    # F8: largest singular value of a product of k Gaussian matrices.
    Claim("f8_max_singular/1", "F8", "largest singular value, 1 matrix",
          "≈ 2 (spread over [0, 2])", 1.7, 2.3),
    Claim("f8_max_singular/3", "F8", "largest singular value, product of 3", "≈ 3.2", 2.7, 3.7),
    Claim("f8_max_singular/5", "F8", "largest singular value, product of 5", "≈ 4", 3.4, 4.6),
)
