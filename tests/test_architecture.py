"""docs/architecture.md's worked example, run as written: a model and an analysis of one's own."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from bnjax import analyze, config as config_lib, errors, experiments

from conftest import REPO

DOC = os.path.join(REPO, "docs", "architecture.md")


def _write_doc_files(root) -> list[str]:
  """Writes every ```python block of the doc that starts with "# <path>" under `root`."""
  with open(DOC) as f:
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", f.read(), flags=re.S)
  for path, code in blocks:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(code)
  (root / "my_lab" / "__init__.py").write_text("")
  return [path for path, _ in blocks]


def _config(root):
  spec = importlib.util.spec_from_file_location("my_lab_config", root / "my_lab" / "config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _read(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def my_lab(tmp_path_factory):
  root = tmp_path_factory.mktemp("lab")
  assert _write_doc_files(root) == ["my_lab/mlp.py", "my_lab/weight_norms.py", "my_lab/config.py"]
  sys.path.insert(0, str(root))
  yield root
  sys.path.remove(str(root))
  for name in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
    del sys.modules[name]


def test_the_analysis_runs_from_the_command_line(my_lab, tmp_path):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(my_lab), REPO])}
  done = subprocess.run(
      [sys.executable, "-m", "bnjax.main", "--config=my_lab/config.py", f"--workdir={tmp_path}"],
      cwd=my_lab, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = _read(tmp_path / "analysis" / "weight_norms.json")
  members = result["members"]
  assert [(m["arm"], m["step"]) for m in members] == [("width=16", 0), ("width=64", 0)]
  assert members[0]["layers"] == ["hidden/bias", "hidden/kernel", "classifier/bias",
                                  "classifier/kernel"]


def test_the_model_trains_and_the_analysis_measures_its_checkpoint(my_lab, tmp_path):
  config = _config(my_lab)
  config.job = "train"
  config_lib.validate(config)
  experiments.get("train").run(config, str(tmp_path))
  analyze.analyze(str(tmp_path), analyses=("my_lab.weight_norms",))
  result = _read(tmp_path / "analysis" / "weight_norms_step4.json")
  assert [(m["arm"], m["step"], m["lr"]) for m in result["members"]] == [
      (f"width={w}", 4, lr) for w in (16, 64) for lr in config.sweep.lrs]
  analyze.analyze(str(tmp_path), analyses=("my_lab.weight_norms",), squared=True)
  squared = _read(tmp_path / "analysis" / "weight_norms_step4.json")["members"][0]["norms"]
  assert squared == pytest.approx([n**2 for n in result["members"][0]["norms"]], rel=1e-5)


def test_the_model_family_checks_its_own_fields(my_lab):
  config = _config(my_lab)
  assert config.model.to_dict() == {"name": "my_lab.mlp", "width": 16}
  with config.model.unlocked():
    config.model.depth = 3
  with pytest.raises(errors.ConfigError, match=r"config.model.depth is not a field of the"
                                               r" 'my_lab.mlp' model; its fields are \['width'\]"):
    config_lib.validate(config)
  del config.model["depth"]
  config.model.width = -3
  config.sweep.arms.width = (-3,)
  with pytest.raises(errors.ConfigError, match="config.model.width must be a positive integer"):
    config_lib.validate(config)
  config.model.name = "my_lab.no_such_model"
  with pytest.raises(errors.ConfigError, match="Unknown model 'my_lab.no_such_model'"):
    config_lib.validate(config)
