"""F3 and F7 of Bjorck et al. (2018): gradients at initialisation, BN vs none.

    python -m bnjax.main --config=configs/gradients.py --workdir=DIR
    python -m bnjax.main --config=configs/gradients.py:smoke --workdir=DIR

Every member (norm batch / none x seeds) at initialisation, on training
batch 0: ∂L/∂logits per image and class (F7 heatmap, first seed) with the
scalars that say how input-independent it is; the weight gradients of weight
layer `histogram_layer` (F3 histogram; default "middle") and every weight
layer's gradient norm against depth. Default: ResNet-110, CIFAR-10, batch
128, its middle layer 55 as in the paper. `smoke`: a ResNet-32 on synthetic
data, batch 32, three seeds, its middle layer 16; under a minute on a CPU.
Any layer: --config.analysis.histogram_layer=20 (or first, last, 0.25).
"""

from bnjax import config as config_lib
from bnjax.experiments import gradients


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "gradients"
  config.analysis = gradients.defaults()
  if variant == "smoke":
    config_lib.he_normal_smoke(config, depth=32, batch_size=32, train_size=256)
  return config
