"""What `python -m bnjax.main` runs for a config: `config.job` names it.

Each job is a function (config, workdir), named here as "module:function"
so that importing this registry imports no job.
"""

import importlib
from collections.abc import Callable

from bnjax import errors

JOBS: dict[str, str] = {
    "train": "bnjax.loop:train_sweep",
    "activations": "bnjax.analysis.jobs_layers:activations",
    "gradients": "bnjax.analysis.jobs_layers:gradients",
    "random_matrix": "bnjax.analysis.jobs_layers:random_matrix",
    "divergence": "bnjax.analysis.jobs_optim:divergence",
    "sgd_noise": "bnjax.analysis.jobs_optim:sgd_noise",
    "reproduce": "bnjax.reproduce:run",
}


def resolve(name: str) -> Callable[..., object]:
  """The job function registered as `name`."""
  if name not in JOBS:
    raise errors.ConfigError(f"Unknown job {name!r} (config.job); use one of {sorted(JOBS)}.")
  module, function = JOBS[name].split(":")
  return getattr(importlib.import_module(module), function)
