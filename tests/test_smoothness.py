"""Landscape smoothness over training (Santurkar et al. 2018, figure 4): the job and its checks."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import analyze, checkpoint, config as config_lib, data, errors, experiments
from bnjax.experiments import _members, divergence, smoothness
from conftest import load_config


def _tiny(config=None):
  """The smoke config at test size: ResNet-8, batch 8, 4 steps, checkpoints at 0, 2, 4."""
  config = config or load_config("smoothness", "smoke")
  config.data.synthetic_train_size = 64
  config.data.synthetic_test_size = 16
  config.train.batch_size = 8
  config.train.num_steps = 4
  config.checkpoint.every = 2
  config.checkpoint.keep_steps = (0, 2, 4)
  config.log_every = config.eval_every = 2
  config.eval_batch_size = 16
  config.analysis.update(num_etas=3, small_num_etas=2)  # η in [0.5, 4] x the rate
  config_lib.validate(config)
  return config


def _read(path):
  def refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  """(config, workdir, result JSON) of the tiny job: trained, then measured at every checkpoint."""
  config = _tiny()
  workdir = str(tmp_path_factory.mktemp("smoothness"))
  experiments.get(config.job).run(config, workdir)
  return config, workdir, _read(os.path.join(workdir, "analysis", "smoothness.json"))


def _series(result):
  return {(s["arm"], s["lr"]): s for arm in result["arms"] for s in arm["series"]}


def test_every_kept_checkpoint_is_measured_each_norm_at_its_usual_rate(job):
  _, workdir, result = job
  assert checkpoint.available_steps(workdir) == [0, 2, 4] == result["steps"]
  series = _series(result)
  assert sorted(series) == [("norm=batch", 0.1), ("norm=none", 1e-4)]
  for s in series.values():
    assert s["steps"] == [0, 2, 4] and s["status"] == "trained" and s["diverged_step"] is None
    for key in smoothness.PER_STEP:
      assert len(s[key]) == 3, key
    assert all(np.shape(row) == (3,) for row in s["loss_SxE"])
    assert all(np.shape(row) == (2,) for row in s["small_beta_SxE"])
  assert result["diverged"] == []
  assert os.path.getsize(os.path.join(workdir, "figures", "smoothness.png")) > 10_000


def test_the_grid_is_santurkars_range_of_each_rate_and_named_in_the_json(job):
  """η in [0.5, 4] x the member's rate (their figure 4: a VGG at 0.1 stepped up to 0.4 g);
  the smaller steps lie below it and are reported apart."""
  _, _, result = job
  assert result["eta_range"]["unit"] == "lr"
  assert (result["eta_range"]["low"], result["eta_range"]["high"]) == (0.5, 4.0)
  assert "Santurkar" in result["eta_range"]["source"]
  assert result["small_step_range"] == {"unit": "lr", "low": 1e-3, "high": 0.5, "num": 2}
  for (_, lr), s in _series(result).items():
    np.testing.assert_allclose(s["etas"], np.geomspace(0.5 * lr, 4 * lr, 3), rtol=1e-6)
    np.testing.assert_allclose(s["small_etas"], np.geomspace(1e-3 * lr, 0.5 * lr, 3)[:2],
                               rtol=1e-6)
  config = load_config("smoothness")
  etas, small = smoothness.step_grids(config, 0.1)
  np.testing.assert_allclose([etas[0], etas[-1], small[0]], [0.05, 0.4, 1e-4], rtol=1e-6)
  assert len(etas) == 8 and len(small) == 3 and small.max() < etas.min()


def test_each_step_equals_the_divergence_measurement_on_its_grid_small_steps_apart(job):
  """The range's numbers are those of `divergence.measure` on the series' grid alone; the
  β of the smaller steps never enters beta_smoothness."""
  config, workdir, result = job
  dataset = data.load(config.data)
  series = _series(result)
  for i, step in enumerate(result["steps"]):
    for subject in _members.at_checkpoint(checkpoint.load(workdir, step)):
      if (subject.arm, subject.lr) not in series:
        continue
      s = series[(subject.arm, subject.lr)]
      batch = _members.train_batch(config, dataset, step, seed=subject.seed)
      line = divergence.measure(config, subject, *batch, s["etas"])
      small = divergence.measure(config, subject, *batch, s["small_etas"])
      loss_E = np.asarray(line["loss_E"], float)
      change_E = np.asarray(line["grad_change_E"], float)
      np.testing.assert_allclose(s["loss_SxE"][i], loss_E, rtol=1e-5)
      np.testing.assert_allclose(s["grad_change_SxE"][i], change_E, rtol=1e-5)
      np.testing.assert_allclose(
          [s["loss"][i], s["loss_min"][i], s["loss_max"][i], s["grad_change_min"][i],
           s["grad_change_max"][i], s["beta_smoothness"][i], s["small_beta_smoothness"][i]],
          [line["loss"], loss_E.min(), loss_E.max(), change_E.min(), change_E.max(),
           line["beta_smoothness"], small["beta_smoothness"]], rtol=1e-5)
      np.testing.assert_allclose(s["small_beta_SxE"][i], small["beta_E"], rtol=1e-5)


def test_an_overflowing_step_is_counted_as_non_finite_never_as_a_loss(job):
  config, workdir, _ = job
  config = _tiny()
  config.analysis.update(eta_unit="absolute", eta_low=1e-3, eta_high=1e9, num_etas=5,
                         small_eta_low=1e-5)  # 1e-3 ... 1e9
  run_ = checkpoint.load(workdir, 4)
  none = next(s for s in _members.at_checkpoint(run_) if s.model_config["norm"] == "none")
  point = smoothness.measure_point(config, none, data.load(config.data))
  loss_E = np.asarray(point["loss_SxE"])
  assert np.isfinite(loss_E[0]) and not np.isfinite(loss_E[-1])
  assert point["num_nonfinite"] == int((~np.isfinite(loss_E)).sum()) >= 1
  assert point["loss_max"] == np.nanmax(loss_E) and np.isfinite(point["beta_smoothness"])
  assert np.isnan(point["grad_change_SxE"][-1])


def test_a_diverged_member_is_listed_and_not_measured(job):
  config, workdir, _ = job
  run_ = checkpoint.load(workdir, 4)
  a = next(i for i, arm in enumerate(run_.arms) if arm.model_config["norm"] == "none")
  states = run_.states[a]
  run_.states[a] = states.replace(diverged=jnp.ones_like(states.diverged),
                                  diverged_step=jnp.full_like(states.diverged_step, 3))
  result = smoothness.from_checkpoint(run_, config, data.load(config.data))
  none = _series(result)[("norm=none", 1e-4)]
  assert none["status"] == "diverged" and none["diverged_step"] == 3 and none["steps"] == []
  assert result["diverged"] == [{"arm": "norm=none", "seed": 0, "lr": 1e-4,
                                 "member": none["member"], "diverged_step": 3}]
  assert _series(result)[("norm=batch", 0.1)]["steps"] == [4]


def test_analyze_measures_one_checkpoint_every_rate_in_the_same_schema(job):
  _, workdir, _ = job
  written = analyze.analyze(workdir, analyses=("smoothness",), num_etas=3)
  assert sorted(os.path.basename(p) for p in written) == [
      "accuracy.png", "smoothness_step4.json", "smoothness_step4.png"]
  result = _read(os.path.join(workdir, "analysis", "smoothness_step4.json"))
  assert result["steps"] == [4] and result["rates"] == "all"
  assert sorted(_series(result)) == [("norm=batch", 1e-4), ("norm=batch", 0.1),
                                     ("norm=none", 1e-4), ("norm=none", 0.1)]
  assert all(s["steps"] == [4] or s["status"] == "diverged" for s in _series(result).values())


def test_analyze_all_steps_draws_smoothness_over_training_and_others_step_by_step(job):
  """--all_steps: smoothness's from_workdir sees every checkpoint at once; an
  experiment without one (divergence) is measured at each step on its own."""
  _, workdir, _ = job
  written = analyze.analyze_all_steps(workdir, analyses=("smoothness", "divergence"), num_etas=3)
  names = {os.path.basename(p) for p in written}
  assert {"smoothness_all_steps.json", "smoothness_all_steps.png"} <= names
  assert {f"divergence_step{step}.json" for step in (0, 2, 4)} <= names
  result = _read(os.path.join(workdir, "analysis", "smoothness_all_steps.json"))
  assert result["steps"] == [0, 2, 4] and result["rates"] == "all"
  assert all(s["steps"] == [0, 2, 4] for s in _series(result).values() if s["status"] == "trained")
  with pytest.raises(errors.ConfigError, match="--seed=7 is not a seed of this run"):
    analyze.analyze_all_steps(workdir, analyses=("smoothness",), seed=7)


@pytest.mark.parametrize("field, value, message", [
    ("rates", "some", "rates='some' is not one of"),
    ("num_etas", 1, "num_etas=1 cannot span a range"),
    ("eta_low", 0.0, "eta_low=0.0 and eta_high=4.0 are no η range"),
    ("eta_high", 0.1, "eta_low=0.5 and eta_high=0.1 are no η range"),
    ("eta_unit", "steps", "eta_unit='steps' is not one of"),
    ("small_num_etas", -1, "small_num_etas=-1 is not a count"),
    ("small_eta_low", 0.5, "small_eta_low=0.5 does not lie below eta_low=0.5"),
])
def test_bad_analysis_settings_are_refused_before_the_workdir_is_touched(tmp_path, field, value,
                                                                         message):
  config = load_config("smoothness", "smoke")
  config.analysis[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    smoothness.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_usual_rates_need_each_norms_rate_in_the_sweep(tmp_path):
  config = load_config("smoothness", "smoke")
  config.sweep.lrs = (0.1,)
  with pytest.raises(errors.ConfigError, match=r"norm=none at 0.0001, which config.sweep.lrs"):
    smoothness.run(config, str(tmp_path / "run"))
  config.sweep.lrs, config.sweep.arms.norm = (0.1, 1e-4), ("batch", "unknown_norm")
  with pytest.raises(errors.ConfigError, match="lr_by_norm has no rate for norm 'unknown_norm'"):
    smoothness.check_rates(config)


def test_a_seed_the_run_lacks_is_refused(job):
  _, workdir, _ = job
  with pytest.raises(errors.ConfigError, match=r"Seed 7 is not a seed of the run .*\[0\]"):
    smoothness.from_workdir(workdir, seed=7)
