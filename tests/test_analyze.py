"""Experiments as modules: both entry paths write one schema; an experiment of one's own."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bnjax import analyze, config as config_lib, data, distributed, errors, experiments
from bnjax.experiments import _members, divergence

from conftest import REPO, tiny_config


def _strict_json(path: str):
  def refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory) -> str:
  """A 3-step ResNet-8 sweep with one BN member (lr 0.01), trained in-process."""
  config = tiny_config(num_steps=3)
  config.sweep.lrs = (0.01,)
  config.sweep.arms.norm = ("batch",)
  config.eval_every = 3
  workdir = str(tmp_path_factory.mktemp("sweep"))
  experiments.get("train").run(config, workdir)
  return workdir


# Every experiment's settings at a size that takes seconds; the layer choices stay the defaults.
SMALL = dict(num_etas=3, pool_size=16, num_batches=8, num_train_batches=2, big_batch=16,
             num_fractions=3, matrix_size=16, jacobian_batch=2, num_minibatches=1)


def test_every_experiment_measures_a_resnet8_checkpoint_with_its_default_layers(trained_workdir):
  """The paper's layer choices are positions, so the defaults fit a ResNet-8 (8 weight layers)."""
  names = tuple(experiments.from_checkpoint_names())
  assert set(names) >= {"activations", "divergence", "gradients", "ics", "random_matrix",
                        "sgd_noise", "smoothness"}
  written = analyze.analyze(trained_workdir, analyses=names, **SMALL)
  results = {n: _strict_json(os.path.join(trained_workdir, "analysis", f"{n}_step3.json"))
             for n in names}
  assert {os.path.basename(p) for p in written} >= {f"{n}_step3.json" for n in names}
  assert results["gradients"]["histogram_layer"] == "middle"
  assert [(m["arm"], m["histogram_layer"]) for m in results["gradients"]["members"]] == [
      ("norm=batch", 4)]
  assert [m["update_layers"] for m in results["activations"]["members"]] == [[1, 3, 6]]
  assert results["activations"]["setting"] == (
      "ResNet-8, BN, glorot_uniform init; synthetic data (512 training images)")
  # The schema of the jobs: sgd_noise and divergence as an example.
  noise = results["sgd_noise"]
  assert noise["step"] == 3 and [len(arm["members"]) for arm in noise["arms"]] == [1]
  member = noise["arms"][0]["members"][0]
  assert {"arm", "seed", "lr", "base_lr", "step", "member", "diverged", "bound"} <= set(member)
  # Per-layer C in depth order: the stem first, the classifier last (not sorted by name).
  assert member["layers"][0].startswith("stem/") and member["layers"][-1].startswith("classifier/")
  assert len(member["layer_C"]) == len(member["layers"])
  line = results["divergence"]["arms"][0]["lines"][0]
  assert line["step"] == 3 and line["minibatch"] == 4 and line["lr"] == 0.01
  assert line["relative_loss_E"][0] == pytest.approx(1.0, abs=0.01)


def test_settings_no_analysis_has_and_layers_outside_the_model_are_one_sentence(
    trained_workdir):
  figure = os.path.join(trained_workdir, "figures", "gradients_step3_f3_histogram.png")
  before = os.path.getmtime(figure) if os.path.exists(figure) else None
  cases = [(dict(num_etas=3), r"No analysis of \['gradients'\] has the setting 'num_etas'"),
           (dict(histogram_layer=55), r"config.analysis.histogram_layer names layer 55, and"
                                      r" ResNet-8, BN, glorot_uniform init has weight layers"
                                      r" 1..8 only; pick a layer from 1 to 8 or a position")]
  for overrides, message in cases:
    with pytest.raises(errors.ConfigError, match=message) as info:
      analyze.analyze(trained_workdir, analyses=("gradients",), **overrides)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")
  assert (os.path.getmtime(figure) if os.path.exists(figure) else None) == before
  # The command line types --config.analysis.* by the named analyses' settings.
  result = subprocess.run(
      [sys.executable, "-m", "bnjax.analyze", f"--workdir={trained_workdir}",
       "--analyses=gradients", "--config.analysis.num_etas=3"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --config.analysis.num_etas is no setting of the analyses ['gradients']; check its"
      " spelling: use --config.analysis.FIELD=VALUE with FIELD one of ['histogram_layer'].")


def test_a_run_without_members_json_is_one_sentence(trained_workdir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  os.remove(workdir / "members.json")
  with pytest.raises(errors.WorkdirError, match="members.json is missing, so the run's members"):
    analyze.analyze(str(workdir), analyses=("divergence",), num_etas=3)


def test_a_non_finite_measurement_is_drawn_as_such(tmp_path):
  """A damaged or diverging member measures None (JSON's non-finite); the figure still draws."""
  line = {"lr": 0.1, "minibatch": 0, "eta_E": [1e-3, 1e-2], "relative_loss_E": [None, None],
          "grad_change_E": [None, None], "max_stable_eta": None, "beta_smoothness": None}
  result = {"threshold": 2.0, "step": 3,
            "arms": [{"name": "resnet", "norm": "batch", "shortcut": "A", "depth": 8,
                      "lines": [line]}]}
  (tmp_path / "figures").mkdir()
  [path] = divergence.figures(result, str(tmp_path), "divergence")
  assert os.path.getsize(path) > 1000


def test_a_title_wider_than_its_figure_is_wrapped_inside_it(tmp_path):
  """A one-arm divergence figure is 5.2 inches wide; its title used to run off both edges."""
  from bnjax import plots
  fig, _ = plots.subplots(2, 1, figsize=(5.2, 7.5), squeeze=False)
  title = "Divergence along the minibatch gradient (train-mode BN), at checkpoint step 10"
  setting = "MLP 8x256, BN; synthetic data (8192 training images)"
  plots.save(fig, str(tmp_path / "narrow.png"), title, setting)
  drawn = fig._suptitle._get_wrapped_text()  # what matplotlib draws
  assert drawn.split() == f"{title}\n{setting}".split() and drawn.count("\n") >= 2


def test_analyze_refuses_unknown_analyses_and_seeds(trained_workdir):
  with pytest.raises(errors.ConfigError, match="Unknown analyses.*'train'"):
    analyze.analyze(trained_workdir, analyses=("train",))
  with pytest.raises(errors.ConfigError, match="--seed=7 is not a seed of this run"):
    analyze.analyze(trained_workdir, analyses=("divergence",), seed=7)


WEIGHT_NORMS = '''
    """A researcher's experiment: every weight layer's norm, at init or at a checkpoint."""
    import jax
    import ml_collections
    import optax

    from bnjax import data, experiments, workdir as workdir_lib
    from bnjax.experiments import _members


    def defaults():
      return ml_collections.ConfigDict(dict(squared=False))


    def measure(config, subjects):
      norm = lambda model, variables: {
          "/".join(str(k.key) for k in path): optax.tree.norm(leaf, squared=config.analysis.squared)
          for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])}
      return {"members": [{**s.identity(), "norms": out}
                          for s, out in _members.measure_each(subjects, norm)]}


    def run(config, workdir):
      data.load(config.data)
      workdir_lib.prepare(workdir, config)
      experiments.write(workdir, "weight_norms", measure(config, _members.at_init(config)),
                        figures)


    def from_checkpoint(run_, config, dataset, seed=None):
      return measure(config, _members.at_checkpoint(run_, seed))


    def figures(result, workdir, stem):
      return []
'''


def test_an_experiment_of_ones_own_is_one_module(tmp_path, monkeypatch, trained_workdir):
  """A module on the path, named by config.job and --analyses, needs no edit to bnjax."""
  (tmp_path / "notebook_lab").mkdir()
  (tmp_path / "notebook_lab" / "__init__.py").write_text("")
  (tmp_path / "notebook_lab" / "weight_norms.py").write_text(textwrap.dedent(WEIGHT_NORMS))
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "notebook_lab", raising=False)
  config = tiny_config()
  config.job = "notebook_lab.weight_norms"
  config.analysis = experiments.get(config.job).defaults()
  config_lib.validate(config)
  experiments.get(config.job).run(config, str(tmp_path / "run"))
  at_init = _strict_json(str(tmp_path / "run" / "analysis" / "weight_norms.json"))
  assert [(m["arm"], m["seed"], m["step"]) for m in at_init["members"]] == [
      ("norm=batch", 0, 0), ("norm=none", 0, 0)]
  analyze.analyze(trained_workdir, analyses=("notebook_lab.weight_norms",))
  at_step = _strict_json(os.path.join(trained_workdir, "analysis", "weight_norms_step3.json"))
  assert at_step["members"][0]["step"] == 3
  assert at_step["members"][0]["norms"].keys() == at_init["members"][0]["norms"].keys()


def test_an_unknown_job_is_one_sentence():
  config = tiny_config()
  config.job = "no_such_experiment"
  with pytest.raises(errors.ConfigError, match="Unknown job 'no_such_experiment'"):
    config_lib.validate(config)


def test_analyses_measure_on_the_batch_the_members_stream_gives_them_next():
  """With per-seed streams an analysis of seed s at step t sees batch t of
  stream s, as the loop would train it; with one shared stream the seed plays
  no part."""
  config = tiny_config()
  dataset = data.synthetic(0, 64, 16)
  shared = _members.train_batch(config, dataset, 3, seed=1)
  np.testing.assert_array_equal(shared[0], _members.train_batch(config, dataset, 3)[0])
  config.train.data_stream = "per_seed"
  own = _members.train_batch(config, dataset, 3, seed=1)
  expected = data.train_batch(dataset, config.train.data_seed, 3, config.train.batch_size,
                              config.data.augmentation, 1)
  np.testing.assert_array_equal(own[0], expected[0])
  np.testing.assert_array_equal(own[1], expected[1])
  assert not np.array_equal(own[0], shared[0])


def test_processes_other_than_the_writer_measure_but_write_nothing(tmp_path, monkeypatch):
  """Under --distributed every process runs an analysis job; only process 0 writes."""
  monkeypatch.setattr(distributed, "is_writer", lambda: False)
  workdir = str(tmp_path / "run")
  config = tiny_config()
  _members.load_then_prepare(config, workdir)
  drawn = []
  written = experiments.write(workdir, "x", {"a": 1}, lambda *args: drawn.append(args) or ["f"])
  assert written == [] and drawn == [] and not os.path.exists(workdir)
  monkeypatch.setattr(distributed, "is_writer", lambda: True)
  _members.load_then_prepare(config, workdir)
  assert experiments.write(workdir, "x", {"a": 1}, lambda *args: ["f"])[1:] == ["f"]
  assert os.path.exists(os.path.join(workdir, "analysis", "x.json"))
