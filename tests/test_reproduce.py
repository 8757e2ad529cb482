"""The reproduction report: every claim of the paper gets a measured number and a verdict."""

import json
import math
import os

import pytest

from bnjax import data, paper
from bnjax.experiments import reproduce

from conftest import load_config


def test_verdict_judges_the_band_and_never_passes_a_missing_number():
  claim = paper.Claim("k", "F4", "what", "reading", 1e-3, 5e-3)
  assert paper.verdict(claim, 1e-3) == "agrees" and paper.verdict(claim, 5e-3) == "agrees"
  assert paper.verdict(claim, 6e-3) == "differs" and paper.verdict(claim, math.inf) == "differs"
  assert paper.verdict(claim, math.nan) == "not measured"
  assert paper.verdict(claim, None) == "not measured"


def test_claim_keys_are_unique():
  keys = [c.key for c in paper.CLAIMS]
  assert len(keys) == len(set(keys))


def test_paper_layers_keep_their_relative_depth():
  assert [reproduce.paper_layer(k, 110) for k in (6, 55, 110)] == [6, 55, 110]
  assert [reproduce.paper_layer(k, 20) for k in (1, 55, 110)] == [1, 10, 20]


def _smoke(tmp_path):
  config = load_config("reproduce", "smoke")
  config.model.depth = 8
  # CIFAR-10 is not prepared in an empty directory: the report falls back to synthetic data.
  config.data.update(name="cifar10", data_dir=str(tmp_path / "no_cifar"), download=False)
  return config


def test_report_has_a_number_and_verdict_for_every_claim(tmp_path):
  workdir = str(tmp_path / "run")
  reproduce.run(_smoke(tmp_path), workdir)
  with open(os.path.join(workdir, "analysis", "reproduction.json")) as f:
    result = json.load(f)
  assert result["data"].startswith("synthetic")
  assert [r["key"] for r in result["rows"]] == [c.key for c in paper.CLAIMS]
  assert all(r["verdict"] in ("agrees", "differs") for r in result["rows"]), [
      r["key"] for r in result["rows"] if r["verdict"] == "not measured"]
  assert set(result["arms"]["none"]["initializers"]) == {"he_normal"}
  with open(os.path.join(workdir, "reproduction.md")) as f:
    report = f.read()
  table = [line for line in report.splitlines() if line.startswith("| F")]
  assert len(table) == len(paper.CLAIMS)
  assert all(line.count(" | ") == 5 for line in table)  # escaped bars keep six columns


def test_without_fallback_a_missing_cifar10_stops_before_the_workdir_is_written(tmp_path):
  config = _smoke(tmp_path)
  config.analysis.fallback_to_synthetic = False
  with pytest.raises(data.DataError, match="CIFAR-10 is not prepared"):
    reproduce.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
