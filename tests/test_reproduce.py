"""The reproduction report: every claim of the paper gets members over seeds, a range and verdicts."""

import json
import math
import os

import jax
import numpy as np
import pytest

from bnjax import data, errors, paper, train
from bnjax.analysis import common
from bnjax.experiments import _reproduction_report as report
from bnjax.experiments import reproduce
from bnjax.models import make_model

from conftest import load_config


def test_verdict_judges_the_band_and_never_passes_a_missing_number():
  claim = paper.Claim("k", "F4", "what", "reading", 1e-3, 5e-3)
  assert paper.verdict(claim, 1e-3) == "agrees" and paper.verdict(claim, 5e-3) == "agrees"
  assert paper.verdict(claim, 6e-3) == "differs" and paper.verdict(claim, math.inf) == "differs"
  assert paper.verdict(claim, math.nan) == "not measured"
  assert paper.verdict(claim, None) == "not measured"


def test_a_row_summarises_its_members_and_judges_median_and_range_apart():
  claim = paper.Claim("k", "F6", "what", "reading", 1.0, 2.0)
  row = paper.judge(claim, [2.5, 1.5, 0.5, math.nan, 1.8])
  assert (row["median"], row["min"], row["max"], row["num_measured"]) == (1.65, 0.5, 2.5, 4)
  assert row["verdict"] == "agrees" and row["range"] == "straddles"
  assert row["members"][:3] == [2.5, 1.5, 0.5] and math.isnan(row["members"][3])
  assert paper.judge(claim, [1.2, 1.9, 1.0])["range"] == "inside"
  assert paper.judge(claim, [2.1, 9.0])["range"] == paper.judge(claim, [0.2])["range"] == "outside"
  missing = paper.judge(claim, [math.nan, None])
  assert missing["verdict"] == missing["range"] == "not measured" and missing["median"] is None
  # F4's "no divergent η on the grid" is inf, a reading like any other.
  assert paper.judge(claim, [1.5, math.inf, math.inf])["median"] == math.inf


def test_claim_keys_are_unique():
  keys = [c.key for c in paper.CLAIMS]
  assert len(keys) == len(set(keys))


def test_paper_layers_keep_their_relative_depth():
  assert [reproduce.paper_layer(k, 110) for k in (6, 55, 110)] == [6, 55, 110]
  assert [reproduce.paper_layer(k, 20) for k in (1, 55, 110)] == [1, 10, 20]


def _smoke(tmp_path):
  config = load_config("reproduce", "smoke")
  config.model.depth = 8
  config.sweep.seeds = (0, 1)
  config.analysis.line_seeds = 1
  # The default initialiser is reused from the arm; he_normal is measured.
  config.analysis.compare_initializers = ("glorot_uniform", "he_normal")
  # CIFAR-10 is not prepared in an empty directory: the report falls back to synthetic data.
  config.data.update(name="cifar10", data_dir=str(tmp_path / "no_cifar"), download=False)
  return config


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """(config, in-memory result, result.json, reproduction.md) of the smoke report."""
  tmp_path = tmp_path_factory.mktemp("reproduce")
  config = _smoke(tmp_path)
  workdir = str(tmp_path / "run")
  result = reproduce.run(config, workdir)
  with open(os.path.join(workdir, "analysis", "reproduction.json")) as f:
    written = json.load(f)
  with open(os.path.join(workdir, "reproduction.md")) as f:
    markdown = f.read()
  return config, result, written, markdown


def test_report_has_members_a_range_and_verdicts_for_every_claim(smoke):
  _, _, written, markdown = smoke
  assert written["data"].startswith("synthetic")
  assert [r["key"] for r in written["rows"]] == [c.key for c in paper.CLAIMS]
  assert all(r["verdict"] in ("agrees", "differs") for r in written["rows"]), [
      r["key"] for r in written["rows"] if r["verdict"] == "not measured"]
  assert all(r["range"] in paper.RANGES[:3] for r in written["rows"])
  assert set(written["arms"]["none"]["initializers"]) == {"glorot_uniform", "he_normal"}
  table = markdown.split("| figure | quantity | paper |")[1].split("\n\n")[0].splitlines()[2:]
  assert len(table) == len(paper.CLAIMS)
  assert all(line.count(" | ") == 7 for line in table)  # escaped bars keep eight columns


def test_the_seed_range_is_computed_from_the_members_one_per_seed(smoke):
  """Each row's median, min and max are those of its members, and the members of an
  at-initialisation reading are the per-seed readings of the arms, not one copied value."""
  config, _, written, _ = smoke
  seeds = list(config.sweep.seeds)
  assert written["arms"]["none"]["seeds"] == seeds
  for row in written["rows"]:
    members = np.asarray([np.nan if m is None else m for m in row["members"]], float)
    measured = members[np.isfinite(members)]
    if measured.size == len(members):
      assert (row["min"], row["max"]) == (measured.min(), measured.max()), row["key"]
      assert row["median"] == pytest.approx(np.median(measured)), row["key"]
  rows = {r["key"]: r for r in written["rows"]}
  at_110 = reproduce.paper_layer(110, config.model.depth) - 1
  per_seed = [layers_L[at_110] for layers_L in
              written["arms"]["none"]["init"]["data"]["log10_std_L"]]
  assert rows["f6_log10_std/none/110"]["members"] == pytest.approx(per_seed)
  assert len(set(per_seed)) == len(seeds)  # the seeds differ, so the range is a real one
  for key in ("f2_noise_over_bound/batch", "f3_max_abs_grad/none", "f7_same_class_share/batch"):
    assert rows[key]["num_measured"] == len(seeds), key
  assert rows["f4_max_relative_loss/batch/1"]["num_measured"] == config.analysis.line_seeds
  assert rows["f1_trains/none/0.0001"]["num_measured"] == 1


def test_f3_f5_f6_f7_are_measured_on_every_input(smoke):
  config, _, written, markdown = smoke
  assert list(written["inputs"]) == list(config.analysis.inputs) == ["data", "gaussian", "pink"]
  for name, rows in written["inputs"].items():
    assert {r["figure"] for r in rows} == set(report.INPUT_FIGURES), name
    assert all(r["num_measured"] == len(config.sweep.seeds) for r in rows), name
  data_rows = {r["key"]: r for r in written["rows"]}
  assert [r["members"] for r in written["inputs"]["data"]] == [
      data_rows[r["key"]]["members"] for r in written["inputs"]["data"]]
  stds = {name: {r["key"]: r for r in rows}["f6_log10_std/none/6"]["members"]
          for name, rows in written["inputs"].items()}
  assert stds["data"] != stds["gaussian"] != stds["pink"]
  assert "## The input, side by side" in markdown


def test_the_default_initialiser_is_taken_from_the_arm_not_measured_again(smoke):
  _, result, _, _ = smoke
  none = result["arms"]["none"]
  glorot = none["initializers"]["glorot_uniform"]
  assert glorot["loss"] == none["init"]["data"]["loss"][0]
  assert glorot["first_divergent_eta"] == none["lines"][0]["first_divergent_eta"]


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_without_batch_statistics_the_gradient_is_taken_in_chunks_to_the_same_numbers(
    tiny_dataset, norm):
  config = load_config("reproduce", "smoke")
  model = make_model({**config.model.to_dict(), "depth": 8, "norm": norm})
  programs = reproduce.Programs(model, config)
  assert programs.batch_statistics == (norm == "batch") and config.analysis.grad_chunk == 4
  variables = train.init_variables(model, 0)
  images, labels = data.train_batch(tiny_dataset, 0, 0, 8)
  loss, grads = programs.full_gradient(variables, images, labels)
  whole_loss, whole = common.loss_and_grad(model, variables, images, labels)
  np.testing.assert_allclose(loss, whole_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(whole)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))


def _judged(key, *members):
  claim = paper.Claim(key, "F6", key, "reading", 0.0, 1.0)
  return [paper.judge(claim, m) for m in members]


def test_input_effects_are_read_off_the_seed_ranges():
  rows = {"data": _judged("a", [1.5, 1.6, 1.7]) + _judged("b", [2.0, 3.0]),
          "gaussian": _judged("a", [0.4, 0.5]) + _judged("b", [2.5, 2.9])}
  effects = report.input_effects({"inputs": rows})
  assert effects["separated"] == {"a": [("data", "gaussian")]}
  assert effects["within_seeds"] == ["b"]
  assert effects["brought_inside"] == {"a": ["gaussian"]}
  assert effects["differ_everywhere"] == ["b"]


@pytest.mark.parametrize("field, value, message", [
    ("line_seeds", 9, "line_seeds=9 exceeds the 2 seeds"),
    ("line_seeds", 0, "line_seeds=0 is not a positive integer"),
    ("inputs", ("gaussian", "data"), "must start with 'data'"),
    ("inputs", ("data", "cifar"), "list each of"),
    ("batch_size", 0, "batch_size=0 is not a positive integer"),
    ("update_lr", -1.0, "update_lr=-1.0 is not a positive number"),
    ("eta_high", 1e-6, "eta_low=1e-05 is not below eta_high=1e-06"),
    ("noise_batch_size", 16, "noise_batch_size=16 must lie between 2 and"),
    ("compare_initializers", ("he_normal", "orthogonal"), "unknown initialisers \\['orthogonal'\\]"),
])
def test_bad_analysis_settings_are_refused_in_one_sentence_before_the_workdir(tmp_path, field,
                                                                              value, message):
  config = _smoke(tmp_path)
  config.analysis[field] = value
  with pytest.raises(errors.ConfigError, match=message) as info:
    reproduce.run(config, str(tmp_path / "run"))
  assert "\n" not in str(info.value) and str(info.value).endswith(".")
  assert not os.path.exists(tmp_path / "run")


def test_a_rate_for_each_norm_is_required(tmp_path):
  config = _smoke(tmp_path)
  config.analysis.lr_by_norm.none = 0.0
  with pytest.raises(errors.ConfigError, match="lr_by_norm.none=0.0 is not a positive rate"):
    reproduce.check(config)


def test_without_fallback_a_missing_cifar10_stops_before_the_workdir_is_written(tmp_path):
  config = _smoke(tmp_path)
  config.analysis.fallback_to_synthetic = False
  with pytest.raises(data.DataError, match="CIFAR-10 is not prepared"):
    reproduce.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
