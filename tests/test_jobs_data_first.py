"""Layer-analysis jobs load the data before touching the workdir.

A run that fails for want of CIFAR-10 must leave no config.json behind:
otherwise the rerun with the right data_dir is refused as a different config.
"""

import pytest

from bnjax import data, experiments

from conftest import load_config


@pytest.mark.parametrize("name", ["activations", "gradients", "random_matrix"])
def test_missing_data_leaves_no_workdir(name: str, tmp_path) -> None:
  config = load_config(name, "smoke")
  config.data.update(name="cifar10", data_dir=str(tmp_path / "tfds"), download=False)
  workdir = tmp_path / "run"
  with pytest.raises(data.DataError):
    experiments.get(name).run(config, str(workdir))
  assert not workdir.exists()
