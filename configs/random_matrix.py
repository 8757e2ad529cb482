"""F8 of Bjorck et al. (2018): singular values of random matrix products and of the network.

    python -m bnjax.main --config=configs/random_matrix.py --workdir=DIR
    python -m bnjax.main --config=configs/random_matrix.py:smoke --workdir=DIR

Products of k = 1, 3, 5 i.i.d. Gaussian matrices (matrix_size x matrix_size,
entries N(0, 1/matrix_size), `trials` products pooled per k), and the
singular values of each member's input-output Jacobian at initialisation:
the logits of a batch of `jacobian_batch` images with respect to those
images, in train mode (BN couples the batch), i.e. jacobian_batch x 10
singular values from as many vector-Jacobian products, `chunk` at a time.
Default: 1024 x 1024 matrices, ResNet-110 with 16 images (160 singular
values). `smoke`: 256 x 256 matrices (4 trials), a ResNet-20 with 4 images
(40 singular values), one seed; under a minute on a CPU.
"""

from bnjax import config as config_lib
from bnjax.experiments import random_matrix


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "random_matrix"
  config.analysis = random_matrix.defaults()
  if variant == "smoke":
    config_lib.he_normal_smoke(config, depth=20, batch_size=32, train_size=256)
    config.sweep.seeds = (0,)
    config.analysis.matrix_size = 256
    config.analysis.trials = 4
    config.analysis.jacobian_batch = 4
    config.analysis.chunk = 20
  return config
