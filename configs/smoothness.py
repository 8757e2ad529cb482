"""Landscape smoothness over training (Santurkar et al. 2018, figure 4), BN vs none.

    python -m bnjax.main --config=configs/smoothness.py --workdir=DIR
    python -m bnjax.main --config=configs/smoothness.py:smoke --workdir=DIR

Trains norms batch and none at rates 1e-4 and 0.1 with the ordinary loop,
then measures each norm at its usual rate (0.1 with BN, 1e-4 without;
`analysis.lr_by_norm`) at every kept checkpoint: the loss range, the range
of gradient change and the effective β-smoothness along its minibatch
gradient, η on Santurkar et al.'s log grid, 0.5 to 4 times the member's
rate (`analysis.eta_low`..`eta_high`, `eta_unit="lr"`), and β over 3
smaller steps (from 1e-3 times the rate) reported apart.
`--config.analysis.rates=all` measures both rates of each norm.
Both variants keep the paper's schedule (rate x0.1 at 50% and 75% of training).
Default: ResNet-110, CIFAR-10, batch 128, the paper's 64k steps with its
warm-up, seed 0, checkpoints at steps 250, 500, 1000 and every 2000.
`smoke`: a He-normal ResNet-8 on synthetic data, batch 16, 100 steps, a
checkpoint every 20, η in [0.5, 4] x the rate (6 points); about a minute on a CPU.
"""

from bnjax import config as config_lib
from bnjax.experiments import smoothness


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "smoothness"
  config.analysis = smoothness.defaults()
  config.analysis.rates = "usual"
  config.sweep.lrs = (1e-4, 0.1)
  config.sweep.seeds = (0,)
  config.train.warmup_steps = 400  # as configs/lr_sweep.py
  config.checkpoint.every = 2000
  config.checkpoint.keep_steps = (250, 500, 1000) + tuple(range(2000, 64_001, 2000))
  if variant == "smoke":
    config_lib.he_normal_smoke(config, depth=8, batch_size=16, train_size=1024)
    config.train.num_steps = 100
    config.train.warmup_steps = 0
    config.checkpoint.every = 20
    config.checkpoint.keep_steps = tuple(range(0, 101, 20))
    config.log_every = 20
    config.eval_every = 100
    config.eval_batch_size = 64
    config.analysis.num_etas = 6
  return config
