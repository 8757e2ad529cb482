"""F5 and F6 of Bjorck et al. (2018), plus signal propagation plots, at initialisation.

    python -m bnjax.main --config=configs/activations.py --workdir=DIR
    python -m bnjax.main --config=configs/activations.py:smoke --workdir=DIR

Every member (norm batch / none x seeds) at initialisation, on training
batch 0: per-channel moments of every weight layer against depth (F6), the
signal propagation summaries of Brock et al. (2021), and the
per-channel moments of `update_layers` while the SGD step −update_lr·g is
applied in `num_fractions` steps from 0 to 1 (F5; the figure shows each
arm's first seed).

update_lr = 3e-3 is where the paper's no-BN ResNet-110 diverges along the
gradient (F4: relative loss past 1e6 by 3-5e-3); the BN members get the same
step for comparison. Default: ResNet-110, CIFAR-10, batch 128, the layers at
0.07, 0.4 and 0.73 of its depth: 8, 44, 80 (16, 32 and 64 channels) as in
the paper. `smoke`: a ResNet-32 (deep enough for no-BN growth to show,
shallow enough to stay finite) on synthetic data, batch 32, one seed, layers
3, 13, 23 (again 16, 32, 64 channels, at about the paper's relative depths);
under a minute on a CPU. Other layers: numbers or positions,
--config.analysis.update_layers='(2, "middle", "last")'.
"""

from bnjax import config as config_lib
from bnjax.experiments import activations


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "activations"
  config.analysis = activations.defaults()
  if variant == "smoke":
    config_lib.he_normal_smoke(config, depth=32, batch_size=32, train_size=256)
    config.sweep.seeds = (0,)
    config.analysis.update_layers = (3, 13, 23)
  return config
