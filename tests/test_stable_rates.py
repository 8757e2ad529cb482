"""The stable-rate map: the largest stable rate of a table, and the job end to end."""

import json
import os

import ml_collections
import pytest

from bnjax import config as config_lib, errors, sweep
from bnjax.experiments import stable_rates

from conftest import load_config


@pytest.mark.parametrize("diverged_by_lr, expected", [
    ({1e-3: [False], 1e-2: [False, False], 1e-1: [False]}, 1e-1),  # all stable: the largest
    ({1e-1: [False], 1e-3: [True], 1e-2: [False]}, None),  # the smallest rate diverges
    ({1e-3: [False], 1e-2: [True], 1e-1: [False]}, 1e-3),  # stable above a divergence: ignored
    ({1e-3: [False, False], 1e-2: [False, True], 1e-1: [True, True]}, 1e-3),  # one seed is enough
    ({}, None),
])
def test_largest_stable_rate(diverged_by_lr, expected):
  assert stable_rates.largest_stable_rate(diverged_by_lr) == expected


def test_lr_grid_is_log_spaced_and_rounded():
  assert stable_rates.lr_grid(1e-4, 10.0, 11)[:3] == (1e-4, 3.16e-4, 1e-3)
  assert stable_rates.lr_grid(1e-4, 10.0, 11)[-1] == 10.0


def test_default_and_smoke_configs_sweep_depth_and_norm_at_a_constant_rate():
  for variant in (None, "smoke", "cpu", "depth110"):
    config = load_config("stable_rates", variant)
    config_lib.validate(config)
    assert sweep.arm_fields(config) == ("depth", "norm")
    assert tuple(config.train.lr_boundaries) == () and config.train.warmup_steps == 0
  assert tuple(load_config("stable_rates").sweep.arms.depth) == (8, 20, 56, 110)
  assert len(load_config("stable_rates").sweep.lrs) == 11
  deep = load_config("stable_rates", "depth110")
  assert tuple(deep.sweep.arms.depth) == (110,) and deep.model.initializer == "glorot_uniform"
  assert {"none", "fixup", "skipinit"} <= set(deep.sweep.arms.norm)


def test_invalid_depth_is_rejected_by_validation():
  config = load_config("stable_rates", "smoke")
  config.sweep.arms.depth = (8, 21)
  with pytest.raises(errors.ConfigError, match="21"):
    config_lib.validate(config)


def test_a_sweep_without_a_depth_arm_is_one_sentence(tmp_path):
  config = load_config("stable_rates", "smoke")
  del config.sweep.arms["depth"]
  with pytest.raises(errors.ConfigError, match="lacks \\['depth'\\]"):
    stable_rates.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def _tiny() -> ml_collections.ConfigDict:
  """The smoke config cut to ResNet-8, two rates (one absurd), one seed, 4 steps of batch 8."""
  config = load_config("stable_rates", "smoke")
  config.sweep.arms.depth = (8,)
  config.sweep.lrs = (0.01, 1e4)
  config.data.synthetic_train_size = 256
  config.data.synthetic_test_size = 32
  config.train.batch_size = 8
  config.train.num_steps = 4
  config.log_every = 2
  config.eval_every = 4
  config.eval_batch_size = 32
  config_lib.validate(config)
  return config


def test_the_job_end_to_end_records_divergence_and_the_stable_rate(tmp_path):
  workdir = str(tmp_path)
  stable_rates.run(_tiny(), workdir)
  with open(os.path.join(workdir, "analysis", "stable_rates.json")) as f:
    result = json.load(f)
  assert {"name", "num_steps", "schedule", "lrs", "seeds", "depths", "series_fields", "arms",
          "series", "max_loss", "initializer"} <= set(result)
  assert result["schedule"] == "constant" and result["lrs"] == [0.01, 1e4]
  assert result["depths"] == [8] and result["series_fields"] == ["norm"]
  assert {a["norm"] for a in result["arms"]} == {"batch", "none"}
  for arm in result["arms"]:
    assert set(arm) >= {"arm", "depth", "norm", "largest_stable_lr", "rates"}
    low, high = arm["rates"]
    assert set(low) >= {"lr", "diverged", "diverged_fraction", "final_train_loss", "members"}
    assert not low["diverged"] and low["final_train_loss"] > 0, arm["arm"]
    assert high["lr"] == 1e4 and high["diverged"] and high["diverged_fraction"] == 1.0
    assert high["final_train_loss"] is None
    assert high["members"][0]["status"] == "diverged"
    assert 0 <= high["members"][0]["diverged_step"] < 4
    assert arm["largest_stable_lr"] == 0.01
  for series in result["series"]:
    assert series["depths"] == [8] and series["largest_stable_lr"] == [0.01]
  figure = os.path.join(workdir, "figures", "stable_rates.png")
  assert os.path.getsize(figure) > 10_000
