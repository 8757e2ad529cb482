"""The stable-rate map: the largest learning rate that trains, by depth, with and without BN.

    python -m bnjax.main --config=configs/stable_rates.py --workdir=DIR
    python -m bnjax.main --config=configs/stable_rates.py:smoke --workdir=DIR

Every member of depths x norms x rates x seeds trains a short fixed budget at
a constant rate (no decay boundaries, no warm-up); the map records which
diverged, their final train loss and, per norm and depth, the largest rate
at and below which nothing diverged. More norms: e.g.
--config.sweep.arms.norm='("batch", "none", "fixup")'.
Default: ResNet-8/20/56/110, CIFAR-10, batch 128, 11 rates 1e-4..10 (half
decades), 3 seeds, 200 steps, the default Glorot-uniform initialiser.
`smoke`: ResNet-8/14 on synthetic data, batch 16, 7 rates 1e-3..10, one
seed, 30 steps, ~1 min on a CPU. It uses He-normal weights, like the other
smoke variants: at small depth they put a no-BN network about where the
default puts a ResNet-110 (README, "Does it reproduce the paper?"), so the
no-BN network diverges at rates the BN one trains at.
`cpu`: the default's depths at CPU size: BN, none, Fixup and SkipInit, the
default initialiser, 9 rates 1e-4..1 (half decades), synthetic data, batch
16, one seed, 30 steps (23 min on a 2-core CPU). `depth110`: its
ResNet-110 column alone (~15 min).
"""

from bnjax import config as config_lib
from bnjax.experiments import stable_rates


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, ("smoke", "cpu", "depth110"))
  config = config_lib.base_config()
  config.job = "stable_rates"
  config.analysis = stable_rates.defaults()
  config.sweep.arms = config_lib.sweep_arms(depth=(8, 20, 56, 110), norm=("batch", "none"))
  config.sweep.lrs = stable_rates.lr_grid(1e-4, 10.0, 11)
  config.train.num_steps = 200
  config.train.lr_boundaries = ()  # a constant rate: the map asks which rates train at all
  config.train.warmup_steps = 0
  # Frozen as diverged past this loss, not only at inf/NaN: ~4000x chance (ln 10), above the
  # no-BN Glorot ResNet-110's 350 at initialisation, below a BN member whose logits blew up.
  # (A He-normal no-BN ResNet-110 starts at 2.6e8: every rate "diverges" at step 0.)
  config.train.max_loss = 1e4
  config.log_every = 20  # the final train loss is the mean over the last 20 steps
  config.eval_every = config.train.num_steps  # test accuracy at the first and last step
  config.checkpoint.every = 1_000_000  # checkpoints at the first and last step only
  if variant in ("cpu", "depth110"):
    config.sweep.arms.depth = (8, 20, 56, 110) if variant == "cpu" else (110,)
    config.sweep.arms.norm = ("batch", "none", "fixup", "skipinit")
    config.sweep.lrs = stable_rates.lr_grid(1e-4, 1.0, 9)
  if variant == "smoke":
    config.model.initializer = "he_normal"
    config.sweep.arms.depth = (8, 14)
    config.sweep.lrs = stable_rates.lr_grid(1e-3, 10.0, 7)
  if variant:
    config.sweep.seeds = (0,)
    config.data.name = "synthetic"
    config.data.synthetic_train_size = 1024
    config.data.synthetic_test_size = 64
    config.train.batch_size = 16
    config.train.num_steps = 30
    config.log_every = 10
    config.eval_every = 30
    config.eval_batch_size = 64
  return config
