"""F2 of Bjorck et al. (2018): SGD noise against its bound α²C/|B|, with and without BN.

    python -m bnjax.main --config=configs/sgd_noise.py --workdir=DIR
    python -m bnjax.main --config=configs/sgd_noise.py:smoke --workdir=DIR

For each norm and rate α of `sweep.lrs` a member trains `analysis.train_steps`
SGD steps at constant rate α; then on a pool of `analysis.pool_size`
training examples (the "full" set) C = E_i‖∇ℓ_i − ∇ℓ‖² is computed from
per-example gradients (BN statistics of the pool held fixed), next to the
measured noise over `analysis.num_batches` sampled minibatches, the
train-mode noise over `analysis.num_train_batches`, and McCandlish et al.'s
B_simple both from per-example gradients and from minibatch sizes |B| and
`analysis.big_batch`.
Default: ResNet-110, CIFAR-10, batch 128, the paper's rates.
`smoke`: a ResNet-8 on synthetic data, batch 16, pool 128, ~1 min on a CPU.
"""

from bnjax import config as config_lib
from bnjax.experiments import sgd_noise


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "sgd_noise"
  config.sweep.seeds = (0,)
  config.analysis = sgd_noise.defaults()
  if variant == "smoke":
    config_lib.he_normal_smoke(config, depth=8, batch_size=16, train_size=1024)
    config.analysis.pool_size = 128
    config.analysis.num_train_batches = 12
    config.analysis.big_batch = 64
    config.analysis.train_steps = 20
  return config
