"""F1 of Bjorck et al. (2018): ResNet-110 on CIFAR-10, with and without BN, over rates.

    python -m bnjax.main --config=configs/lr_sweep.py --workdir=DIR
    python -m bnjax.main --config=configs/lr_sweep.py:smoke --workdir=DIR

Default: the paper's grid (rates 1e-4, 3e-3, 0.1 x norms batch, none x 3
seeds), batch 128, 64k steps, rate x0.1 at 32k and 48k, and the 400-step
warm-up He et al. use for ResNet-110 (at 0.1 of each member's rate).
`smoke`: a ResNet-8 on the synthetic data, 600 steps of batch 16 on a CPU:
long enough for the no-BN members at the smallest rate to come close to the
BN ones (the paper's F1 claim), with a rate at which no-BN members diverge
or stall while the BN members train. (After 120 steps of batch 32 no BN was
still at 0.2 test accuracy at 0.01, BN at 0.8: no-BN leaves its initial
plateau later, not never.)
"""

from bnjax import config as config_lib


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.train.warmup_steps = 400
  if variant == "smoke":
    config.model.depth = 8
    config.data.name = "synthetic"
    config.data.synthetic_train_size = 8192
    config.data.synthetic_test_size = 512
    config.data.synthetic_noise = 1.0
    config.sweep.lrs = (0.01, 0.05, 0.3)
    config.sweep.seeds = (0, 1)
    config.train.batch_size = 16
    config.train.num_steps = 600
    config.train.warmup_steps = 0
    config.log_every = 25
    config.eval_every = 50
    config.eval_batch_size = 512
  return config
