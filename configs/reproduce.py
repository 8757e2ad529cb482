"""The reproduction report: every figure of Bjorck et al. (2018) measured at the paper's size.

    python -m bnjax.main --config=configs/reproduce.py --workdir=DIR
    python -m bnjax.main --config=configs/reproduce.py:smoke --workdir=DIR

ResNet-110 with and without BN at initialisation over the seeds of
`sweep.seeds` (0-4): F2, F3, F5, F6 and F7 on training batch 0 of 128
images, every seed; F3, F5, F6 and F7 again on the stand-in inputs of
`analysis.inputs` (i.i.d. N(0, 1) and Gaussian 1/f² images); F4 at
minibatch 1 for the first `line_seeds` seeds; F2 on a pool of
`noise_pool_size` examples; F8's 1024 x 1024 random matrix products; and,
for the first seed only, F1's first `train_steps` SGD steps at the paper's
three rates (constant rate, batch `train_batch_size`), with F4 again at
minibatches 4 and 7 of the members at the F4 rates (0.1 with BN, 1e-4
without; as in He et al. 2016, a ResNet-110 at rate 0.1 takes its first 400
steps at 0.01), and the no-BN network under each of `compare_initializers`.
Each reading is judged against the paper's (bnjax/paper.py) by its median
over seeds, and by its whole range, in DIR/reproduction.md and
DIR/analysis/reproduction.json.

CIFAR-10 when prepared, else the synthetic data. The default sizes keep the
report within 15 minutes on a 2-core CPU: 5 seeds; batch 32 for the first
steps (the paper's 128 costs 4x as long on a CPU; on a GPU pass
--config.analysis.train_batch_size=128), 17 step sizes η, a pool of 64
examples for F2, and no network Jacobian (the paper's F8 has none).
`smoke`: a ResNet-14 on synthetic data with tiny sizes and 3 seeds, for the
tests.
"""

import ml_collections

from bnjax import config as config_lib


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke",))
  config = config_lib.base_config()
  config.job = "reproduce"
  config.sweep.seeds = (0, 1, 2, 3, 4)
  # Used only when CIFAR-10 is not prepared and the report falls back to synthetic data.
  config.data.synthetic_train_size = 4096
  config.data.synthetic_test_size = 512
  config.analysis = ml_collections.ConfigDict(dict(
      fallback_to_synthetic=True, batch_size=128, train_batch_size=32, train_steps=15,
      line_seeds=5, inputs=("data", "gaussian", "pink"),
      # Without BN a gradient is taken in chunks of grad_chunk examples (the same numbers,
      # cheaper on a CPU); as train_batch_size, so both share one compiled gradient.
      grad_chunk=32,
      warmup_from_lr=0.1, warmup_factor=0.1,  # He et al.: ResNet-110 at 0.1 starts at 0.01
      lr_by_norm=ml_collections.ConfigDict(dict(batch=0.1, none=1e-4)),
      eta_low=1e-5, eta_high=1e-1, num_etas=17, update_lr=3e-3,
      noise_pool_size=64, noise_batch_size=8, noise_num_batches=4096, noise_chunk=4,
      matrix_size=1024, ks=(1, 3, 5), trials=1,
      compare_initializers=("glorot_uniform", "lecun_normal", "he_normal")))
  if variant == "smoke":
    config.model.depth = 14
    config.data.name = "synthetic"
    config.data.synthetic_train_size = 256
    config.data.synthetic_test_size = 64
    config.sweep.seeds = (0, 1, 2)
    config.analysis.update(dict(
        batch_size=8, train_batch_size=8, train_steps=7, num_etas=5, noise_pool_size=16,
        line_seeds=2, grad_chunk=4,
        noise_batch_size=4, noise_chunk=8, matrix_size=64, compare_initializers=("he_normal",)))
  return config
