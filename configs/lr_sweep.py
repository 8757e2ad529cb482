"""F1 of Bjorck et al. (2018): ResNet-110 on CIFAR-10, with and without BN, over rates.

    python -m bnjax.main --config=configs/lr_sweep.py --workdir=DIR
    python -m bnjax.main --config=configs/lr_sweep.py:smoke --workdir=DIR

Default: the paper's grid (rates 1e-4, 3e-3, 0.1 x norms batch, none x 3
seeds), batch 128, 64k steps, rate x0.1 at 32k and 48k, and the 400-step
warm-up He et al. use for ResNet-110 (at 0.1 of each member's rate).
`smoke`: a ResNet-8 on the synthetic data for 120 steps on a CPU, with a
rate at which the no-BN members diverge while the BN members train.
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
    config.train.batch_size = 32
    config.train.num_steps = 120
    config.train.warmup_steps = 0
    config.log_every = 20
    config.eval_every = 40
    config.eval_batch_size = 512
  return config
