"""Mean-field check (beyond the paper): gradient explosion of deep BN-ReLU MLPs at init.

    python -m bnjax.main --config=configs/mean_field.py --workdir=DIR
    python -m bnjax.main --config=configs/mean_field.py:smoke --workdir=DIR

A fully-connected ReLU network (`bnjax.models.mlp`, He-normal weights), BN
against none, every seed at initialisation on training batch 0: each
hidden layer's weight and pre-activation gradient norm, and the growth
factor per layer going backwards against Yang et al. (2019)'s mean-field
prediction (docs/mean_field.md). Default: depth 50, width 1024, batch 128
of CIFAR-10, five seeds (Yang et al.'s regime). `smoke`: synthetic data,
depth 20, width 256, batch 64, three seeds; seconds on a CPU.
"""

from bnjax import config as config_lib
from bnjax.experiments import mean_field


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "mean_field"
  config_lib.use_model(config, "bnjax.models.mlp")  # the base config's arms: norm batch, none
  config.model.update(width=1024, depth=50)
  config.sweep.seeds = (0, 1, 2, 3, 4)
  config.train.batch_size = 128
  config.analysis = mean_field.defaults()
  if variant == "smoke":
    config.model.update(width=256, depth=20)
    config.data.name = "synthetic"
    config.data.synthetic_train_size = 256
    config.data.synthetic_test_size = 64
    config.sweep.seeds = (0, 1, 2)
    config.train.batch_size = 64
  return config
