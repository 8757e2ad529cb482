"""F4 of Bjorck et al. (2018): relative loss along the gradient, with and without BN.

    python -m bnjax.main --config=configs/divergence.py --workdir=DIR
    python -m bnjax.main --config=configs/divergence.py:smoke --workdir=DIR

A member per norm trains from seed `sweep.seeds[0]` at its normal rate (0.1
with BN, 1e-4 without; `analysis.lr_by_norm`) with the usual SGD step, and
before the updates of minibatches 1, 4 and 7 the relative loss
L(θ − ηg)/L(θ) and the Santurkar et al. measures are taken on that
minibatch for η on a log grid (train-mode BN, as the optimizer sees it).
Default: ResNet-110, CIFAR-10, batch 128, η in 1e-5..1e-1.
`smoke`: a ResNet-14 on synthetic data, batch 16, η in 1e-5..1 (deep enough
for the no-BN loss to blow up, shallow enough to stay finite), ~1 min on a CPU.
"""

from bnjax import config as config_lib
from bnjax.experiments import divergence


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "divergence"
  config.sweep.lrs = (0.1, 1e-4)  # documentation only: the rates are per norm below
  config.sweep.seeds = (0,)
  config.analysis = divergence.defaults()
  if variant == "smoke":
    config_lib.he_normal_smoke(config, depth=14, batch_size=16, train_size=1024)
    config.analysis.eta_high = 1.0
    config.analysis.num_etas = 11
  return config
