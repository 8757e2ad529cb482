"""The command line: config errors as one sentence, the smoke sweep end to end."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from bnjax import config as config_lib, errors, sweep

from conftest import REPO, load_config


def _main(workdir, *overrides, variant="smoke", timeout=600):
  return subprocess.run(
      [sys.executable, "-m", "bnjax.main", f"--config=configs/lr_sweep.py:{variant}",
       f"--workdir={workdir}", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "no_such_family", "Unknown model 'no_such_family'"),
    ("model.depth", 21, "depth 21 is not of the form 6n\\+2"),
    ("sweep.lrs", (), "config.sweep.lrs is empty"),
    ("sweep.lrs", (0.1, -0.01), "Learning rate -0.01 .* not a positive number"),
    ("sweep.seeds", (), "config.sweep.seeds is empty"),
    ("train.compute_dtype", "float8", "Unknown compute dtype"),
    ("executor", "pmap", "Unknown executor"),
    ("model.norm", "layer",
     "config.model.norm='layer' is overridden by config.sweep.arms.norm=.*--config.sweep.arms.norm='\\(\"layer\",\\)'"),
    ("model.norm", "nonsense", "config.model.norm='nonsense' is overridden by config.sweep.arms.norm"),
    ("sweep.seeds", (0, -1), "Seed -1 in config.sweep.seeds is not an integer in \\[0, 2\\*\\*32\\)"),
    ("sweep.seeds", (2**32,), "Seed 4294967296 in config.sweep.seeds is not an integer"),
    ("sweep.seeds", (1.5,), "Seed 1.5 in config.sweep.seeds is not an integer"),
    ("sweep.seeds", (True,), "Seed True in config.sweep.seeds is not an integer"),
    ("train.max_loss", float("nan"), "config.train.max_loss must be a number > 0, or inf"),
    ("train.momentum", float("nan"), "config.train.momentum must be in \\[0, 1\\) .*, got nan"),
    ("train.momentum", 1.0, "config.train.momentum must be in \\[0, 1\\) .*, got 1.0"),
    ("train.warmup_factor", -1.0, "config.train.warmup_factor must be a finite number > 0"),
    ("train.weight_decay", float("inf"), "config.train.weight_decay must be a finite number"),
    ("train.lr_decay", float("nan"), "config.train.lr_decay must be a finite number > 0"),
    ("eval_batch_size", 0, "config.eval_batch_size must be a whole number >= 1, got 0"),
    ("train.batch_size", 0, "config.train.batch_size must be a whole number >= 1, got 0"),
    ("train.warmup_steps", -1, "config.train.warmup_steps must be a whole number >= 0"),
])
def test_bad_configs_are_rejected_with_one_sentence(field, value, message):
  config = load_config("lr_sweep", "smoke")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(errors.ConfigError, match=message) as info:
    config_lib.validate(config)
  assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_a_repeated_override_replaces_the_earlier_one(monkeypatch):
  """absl joins a tuple field's repeated flags; bnjax.main keeps the last, as for any flag."""
  argv = ["main", "--config=configs/lr_sweep.py:smoke", "--config.sweep.seeds=(0,)",
          "--config.train.num_steps=5", "--config.sweep.seeds=(1,)"]
  assert config_lib.last_overrides(argv) == [
      "main", "--config=configs/lr_sweep.py:smoke", "--config.train.num_steps=5",
      "--config.sweep.seeds=(1,)"]
  kept = config_lib.last_overrides(argv)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=kept)
  monkeypatch.chdir(REPO)
  values(kept)
  assert tuple(values.config.sweep.seeds) == (1,) and values.config.train.num_steps == 5


def test_unknown_sweep_arm_field_is_rejected():
  config = load_config("lr_sweep", "smoke")
  config.sweep.arms.width = (1, 2)
  with pytest.raises(errors.ConfigError, match="'width' is not a field of the 'resnet' model"):
    config_lib.validate(config)


@pytest.mark.parametrize("name", sorted(
    os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))))
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_every_config_validates(name, variant):
  config_lib.validate(load_config(name, variant))


def test_swept_values_and_the_base_value_pass_the_arm_override_check():
  config = load_config("lr_sweep", "smoke")
  config.model.norm = "none"  # one of the swept values: harmless
  config_lib.validate(config)
  config = load_config("lr_sweep", "smoke")
  config.sweep.arms.depth = (20, 56)
  with pytest.raises(errors.ConfigError, match="config.model.depth=8 is overridden by config.sweep.arms.depth"):
    config_lib.validate(config)  # the smoke variant's depth 8 would be ignored
  for depth in (20, 110):  # a swept value, and the base default that every arm overrides
    config.model.depth = depth
    config_lib.validate(config)


def test_the_command_line_sweeps_a_model_field_the_config_does_not(tmp_path):
  """Every ResNet field a sweep can vary is declared (unswept) in config.sweep.arms,
  so the locked config takes --config.sweep.arms.shortcut; unswept ones make no arms."""
  config = load_config("lr_sweep", "smoke")
  assert sweep.arm_fields(config) == ("norm",)
  assert len(sweep.make_arms(config)) == 2
  config.sweep.arms.shortcut = ("A", "none")
  assert sorted((a.model_config["norm"], a.model_config["shortcut"])
                for a in sweep.make_arms(config)) == [
      ("batch", "A"), ("batch", "none"), ("none", "A"), ("none", "none")]
  # On the command line: the override is taken, and reaches the arms' validation.
  result = _main(tmp_path / "run", "--config.sweep.arms.shortcut=(\"none\",)",
                 "--config.sweep.arms.norm=(\"fixup\",)", timeout=120)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "config.model.norm='fixup' needs the shortcut" in result.stderr.splitlines()[-1]
  assert not (tmp_path / "run").exists()


def test_sweeping_an_unknown_norm_is_reported_by_the_arm_validation():
  config = load_config("lr_sweep", "smoke")
  config.sweep.arms.norm = ("instance",)  # the fix the override message suggests
  with pytest.raises(errors.ConfigError, match="Unknown norm 'instance'"):
    config_lib.validate(config)


def test_seeds_at_the_uint32_bounds_are_accepted():
  config = load_config("lr_sweep", "smoke")
  config.sweep.seeds = (0, 2**32 - 1)
  config_lib.validate(config)


def test_unknown_variant_is_rejected():
  with pytest.raises(errors.ConfigError, match="Unknown config variant 'tiny'"):
    load_config("lr_sweep", "tiny")


def test_paper_grid_is_the_default():
  config = load_config("lr_sweep")
  config_lib.validate(config)
  assert config.model.depth == 110 and config.data.name == "cifar10"
  assert tuple(config.sweep.lrs) == (1e-4, 3e-3, 1e-1) and len(config.sweep.seeds) == 3
  assert tuple(config.sweep.arms.norm) == ("batch", "none")
  assert config.train.batch_size == 128 and config.train.num_steps == 64_000


def test_command_line_reports_bad_input_in_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = _main(workdir, "--config.sweep.lrs=(0.1,-1.0)", timeout=120)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Learning rate -1.0 in config.sweep.lrs is not a positive number")
  assert not workdir.exists()


@pytest.mark.parametrize("override, field", [
    ("--config.some_field=1", "some_field"),
    ("--config.model.some_field=1", "model.some_field"),
    ("--config.modle.depth=8", "modle.depth"),
])
def test_unknown_config_field_on_the_command_line_is_one_sentence(tmp_path, override, field):
  workdir = tmp_path / "run"
  result = _main(workdir, "--config.model.depth=8", override, timeout=60)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: config has no field '{field}' (--config.{field}); ")
  assert last.endswith(".") and not workdir.exists()


@pytest.mark.parametrize("content, message", [
    (None, "the config file '{path}' \\(--config\\) does not exist"),
    ("x = 1\n", "the config file {path} \\(--config\\) has no get_config"),
])
def test_a_config_file_that_is_missing_or_has_no_get_config_is_one_sentence(
    tmp_path, content, message):
  path = tmp_path / "my_config.py"
  if content is not None:
    path.write_text(content)
  result = subprocess.run(
      [sys.executable, "-m", "bnjax.main", f"--config={path}", f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert re.match("error: " + message.format(path=path), result.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("override, message", [
    ("--config.model.width=64",
     "error: config has no field 'model.width' (--config.model.width); check its spelling:"
     " config.model of the 'resnet' model (--config.model.name picks another) has the fields"
     " ['depth', 'initializer', 'name', 'norm', 'scan_blocks', 'shortcut']."),
    ("--config.model.name=no_such_family",
     "error: Unknown model 'no_such_family' (config.model.name); use one of ['resnet'] or an"
     " importable module path."),
])
def test_a_family_field_or_family_the_command_line_lacks_is_one_sentence(tmp_path, override,
                                                                         message):
  result = _main(tmp_path / "run", override, timeout=60)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == message
  assert not (tmp_path / "run").exists()


def test_unknown_variant_on_the_command_line_is_one_sentence(tmp_path):
  result = _main(tmp_path / "run", variant="tiny", timeout=60)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: Unknown config variant 'tiny'")


def test_missing_cifar10_from_the_command_line(tmp_path):
  result = _main(tmp_path / "run", "--config.data.name=cifar10", "--config.data.download=False",
                 f"--config.data.data_dir={tmp_path / 'tfds'}", timeout=120)
  assert result.returncode != 0
  assert "CIFAR-10 is not prepared in" in result.stderr.strip().splitlines()[-1]


def test_smoke_sweep_end_to_end(tmp_path):
  """The README's first quick-start command, as a user runs it, on a sixth of its members
  and half its steps.

  Seed 1 at rate 0.3 is where BN trains and the no-BN member does not: it
  diverges on jax 0.10's XLA:CPU and stays at chance on jax 0.12's and on a
  GPU (the README's F1 row gives every member on each). The other members
  would add time and no path, and so would the second 300 steps: by step
  300 (its rate decayed at 150) BN was at 0.99 test accuracy and no BN at
  chance, or diverged at step 139 as in the full run. (A rerun with another
  config is refused: tests/test_checkpoint.py; the closing table's diverged
  column: tests/test_logs.py.)
  """
  workdir = tmp_path / "smoke"
  result = _main(workdir, "--config.sweep.seeds=(1,)", "--config.sweep.lrs=(0.3,)",
                 "--config.train.num_steps=300")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["depth"] == 8
  members = json.loads((workdir / "members.json").read_text())
  assert len(members) == 2
  bn = [m for m in members if m["norm"] == "batch"]
  no_bn = [m for m in members if m["norm"] == "none"]
  assert all(m["status"] == "trained" for m in bn)
  assert no_bn[0]["status"] in ("diverged", "trained")
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  final = {r["member"]: r for r in lines if r["step"] == config["train"]["num_steps"]}
  assert set(final) == {m["member"] for m in members if m["status"] == "trained"}
  for record in final.values():
    assert {"train_loss", "train_accuracy", "grad_norm", "param_norm", "learning_rate",
            "test_loss", "test_accuracy", "lr", "seed", "norm"} <= set(record)
  # BN learns the synthetic task at the rate at which no BN diverges or stays at chance.
  assert final[bn[0]["member"]]["test_accuracy"] > 0.9
  if no_bn[0]["status"] == "diverged":
    assert "diverged 1 of 1" in result.stderr
    assert f"seed 1 at step {no_bn[0]['diverged_step']}" in result.stderr
  else:
    assert no_bn[0]["diverged_step"] is None
    assert final[no_bn[0]["member"]]["test_accuracy"] < 0.2
  assert "images/s" in result.stderr and "ETA" in result.stderr
  # Progress per arm, the closing table; no Orbax or backend chatter without -v=1.
  assert "norm=none: train loss" in result.stderr
  assert "norm   lr   trained  train acc  test acc  diverged" in result.stderr
  assert "orbax" not in result.stderr.lower() and "Unable to initialize backend" not in result.stderr
  assert os.path.getsize(workdir / "figures" / "accuracy.png") > 10_000
