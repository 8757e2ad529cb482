"""Internal covariate shift, measured (Santurkar et al. 2018, definition 2.1), BN vs none.

    python -m bnjax.main --config=configs/ics.py --workdir=DIR
    python -m bnjax.main --config=configs/ics.py:smoke --workdir=DIR

One member per arm (norm batch / none, first seed) trains at its arm's rate
and is measured at `analysis.steps`: per weight layer, the ℓ2 distance and
cosine between its gradient before and after the earlier layers' SGD
update. Default: ResNet-110, CIFAR-10, batch 128, steps 0, 100, 1000.
`smoke`: a ResNet-8 on synthetic data, batch 16, steps 0 and 5, two
minibatches; well under a minute on a CPU.
"""

from bnjax import config as config_lib
from bnjax.experiments import ics


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "ics"
  config.analysis = ics.defaults()
  if variant == "smoke":
    config_lib.he_normal_smoke(config, depth=8, batch_size=16, train_size=256)
    config.sweep.seeds = (0,)
    config.analysis.steps = (0, 5)
    config.analysis.num_minibatches = 2
  return config
