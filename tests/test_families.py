"""A model family owns its config: chosen by name, its own fields, any job and analysis.

A VGG-style family is one new module, named by its module path, that trains
in a sweep and is measured by the analyses with no edit to bnjax; the MLP
family runs from the command line, lr_sweep then analyze; a family an
analysis cannot measure is refused in one sentence.
"""

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import pytest

from bnjax import analyze, checkpoint, config as config_lib, errors, experiments, models, plots
from bnjax import sweep, workdir as workdir_lib

from conftest import REPO, tiny_config

VGG = '''
    """A VGG-style family: conv-BN-ReLU-pool blocks, then a classifier; no residual blocks."""
    from typing import Any

    import flax.linen as nn
    import jax.numpy as jnp

    from bnjax.models import family


    class ConvBlock(nn.Module):
      width: int
      norm: str
      dtype: Any = jnp.float32

      @nn.compact
      def __call__(self, x, train):
        x = nn.Conv(self.width, (3, 3), use_bias=self.norm == "none", dtype=self.dtype,
                    name="conv")(x)
        self.sow("intermediates", "conv_out", x)
        if self.norm == "batch":
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                           name="norm")(x)
          self.sow("intermediates", "norm_out", x)
        return nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))


    class VGG(nn.Module):
      widths: tuple
      norm: str
      num_classes: int
      dtype: Any = jnp.float32

      @nn.compact
      def __call__(self, images_BxHxWxC, train=False):
        x = images_BxHxWxC.astype(self.dtype)
        for i, width in enumerate(self.widths):
          x = ConvBlock(width, self.norm, self.dtype, name=f"block{i}")(x, train)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(
            jnp.mean(x, axis=(1, 2)))
        self.sow("intermediates", "logits", logits)
        return logits.astype(jnp.float32)


    def defaults():
      return {"widths": (8, 16), "norm": "batch"}


    def validate(model_config):
      family.check(model_config["norm"] in ("batch", "none"),
                   f"Unknown config.model.norm {model_config['norm']!r}; use 'batch' or 'none'.")


    def build(model_config, num_classes, dtype):
      return VGG(tuple(model_config["widths"]), model_config["norm"], num_classes, dtype)


    def describe(model_config):
      norm = "BN" if model_config["norm"] == "batch" else "no BN"
      return f"VGG-{len(model_config['widths']) + 1}, {norm}"
'''


def _read(path) -> Any:
  with open(path) as f:
    return json.load(f)


@pytest.fixture
def vgg_lab(tmp_path, monkeypatch):
  """The VGG family as a module of a package on the path, nowhere in bnjax."""
  (tmp_path / "vgg_lab").mkdir()
  (tmp_path / "vgg_lab" / "__init__.py").write_text("")
  (tmp_path / "vgg_lab" / "vgg.py").write_text(textwrap.dedent(VGG))
  monkeypatch.syspath_prepend(str(tmp_path))
  yield "vgg_lab.vgg"
  models.FAMILIES.pop("vgg_lab.vgg", None)
  for name in ("vgg_lab", "vgg_lab.vgg"):
    sys.modules.pop(name, None)


def test_a_vgg_family_is_one_module_that_trains_and_is_analysed(vgg_lab, tmp_path):
  config = tiny_config(num_steps=2)
  config.sweep.lrs = (0.05,)
  config_lib.use_model(config, vgg_lab)
  assert config.model.to_dict() == {"name": vgg_lab, "widths": (8, 16), "norm": "batch"}
  assert config_lib.swept_arms(config) == {"norm": ("batch", "none")}  # kept: VGG has a norm
  config_lib.validate(config)
  workdir = str(tmp_path / "run")
  experiments.get("train").run(config, workdir)
  written = analyze.analyze(workdir, analyses=("activations", "gradients"), num_fractions=2)
  names = sorted(os.path.basename(p) for p in written)
  # No residual blocks: no signal-propagation figure, and the rest as for a ResNet.
  assert names == ["accuracy.png", "activations_step2.json", "activations_step2_f5_update.png",
                   "activations_step2_f6_depth.png", "gradients_step2.json",
                   "gradients_step2_f3_histogram.png", "gradients_step2_f7_heatmap.png"]
  acts = _read(os.path.join(workdir, "analysis", "activations_step2.json"))
  assert acts["setting"] == "VGG-3, BN / no BN; synthetic data (512 training images)"
  for member in acts["members"]:  # 2 convs and the classifier: layers 1..3
    assert member["signal_propagation"] == {} and len(member["log10_std"]) == 3
    assert member["update_layers"] == [1, 2]  # 0.07, 0.4, 0.73 of 3 layers: 1, 1, 2
  grads = _read(os.path.join(workdir, "analysis", "gradients_step2.json"))
  assert grads["histogram_layer"] == "middle"
  assert [m["histogram_layer"] for m in grads["members"]] == [2, 2]
  assert all(len(m["weight_grad_norms"]) == 3 for m in grads["members"])


class _Silent(nn.Module):
  """A perceptron that records nothing."""

  width: int
  num_classes: int

  @nn.compact
  def __call__(self, images_BxHxWxC, train: bool = False):
    x = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x))).astype(jnp.float32)


class SilentFamily:
  """A family registered by a script: defaults, validate, build and no describe."""

  @staticmethod
  def defaults() -> dict[str, Any]:
    return {"width": 4}

  @staticmethod
  def validate(model_config: Mapping[str, Any]) -> None:
    pass

  @staticmethod
  def build(model_config: Mapping[str, Any], num_classes: int, dtype: Any) -> nn.Module:
    return _Silent(model_config["width"], num_classes)


@pytest.fixture
def silent():
  models.register("silent", SilentFamily)
  yield "silent"
  del models.FAMILIES["silent"]


def test_a_family_an_analysis_cannot_measure_is_refused_in_one_sentence(silent):
  config = tiny_config()
  config_lib.use_model(config, silent)
  assert config_lib.swept_arms(config) == {}  # the base arms sweep a norm it lacks
  config.analysis = experiments.get("activations").defaults()
  config_lib.validate(config)
  assert models.describe(config.model) == "silent (width=4)"
  with pytest.raises(errors.ConfigError, match=r"The activations analysis reads the recordings"
                                               r" \['conv_out', 'logits'\], and the model silent"
                                               r" \(width=4\) \(silent\) records none") as info:
    experiments.check("activations", config)
  assert "\n" not in str(info.value) and str(info.value).endswith(".")
  config.analysis = experiments.get("gradients").defaults()
  experiments.check("gradients", config)  # weights only: it measures any model
  config.analysis.histogram_layer = 4
  with pytest.raises(errors.ConfigError, match="config.analysis.histogram_layer names layer 4, and"
                                               r" silent \(width=4\) has weight layers 1..2 only"):
    experiments.check("gradients", config)


def test_a_family_field_is_the_familys_own(silent):
  config = tiny_config()
  with pytest.raises(errors.ConfigError, match=r"config.model.width is not a field of the"
                                               r" 'resnet' model; its fields are \['depth'"):
    models.validate({**config.model.to_dict(), "width": 4})
  config.lock()  # as config_flags hands it over
  config_lib.use_model(config, silent)
  config.sweep.arms.width = (2, 4)  # declared by use_model, so the locked config takes it
  assert [a["width"] for a in config_lib.arm_configs(config)] == [2, 4]
  with pytest.raises(AttributeError):
    config.model.depth = 8  # the ResNet's field is gone with the ResNet
  with pytest.raises(errors.ConfigError, match="Unknown model 'no_such_family'"):
    config_lib.use_model(config, "no_such_family")


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600)


def test_the_mlp_family_from_the_command_line_lr_sweep_then_analyze(tmp_path):
  """--config.model.name swaps the family in before the other overrides, whatever their order."""
  workdir = str(tmp_path / "mlp")
  trained = _run("bnjax.main", "--config=configs/lr_sweep.py:smoke", f"--workdir={workdir}",
                 "--config.model.width=32", "--config.model.name=bnjax.models.mlp",
                 "--config.model.depth=3", "--config.sweep.seeds=(0,)",
                 "--config.sweep.lrs=(0.05,)",
                 "--config.train.num_steps=10", "--config.eval_every=5")
  assert trained.returncode == 0, trained.stderr[-3000:]
  config = _read(os.path.join(workdir, "config.json"))
  assert config["model"] == {"name": "bnjax.models.mlp", "width": 32, "depth": 3, "norm": "batch"}
  members = _read(os.path.join(workdir, "members.json"))
  assert [(m["norm"], m["lr"], m["status"]) for m in members] == [
      ("batch", 0.05, "trained"), ("none", 0.05, "trained")]
  analysed = _run("bnjax.analyze", f"--workdir={workdir}",
                  "--analyses=activations,gradients,divergence,sgd_noise",
                  "--config.analysis.histogram_layer=last", "--config.analysis.num_fractions=3",
                  "--config.analysis.num_etas=3", "--config.analysis.pool_size=32",
                  "--config.analysis.big_batch=32", "--config.analysis.num_train_batches=2",
                  "--config.analysis.num_batches=8")
  assert analysed.returncode == 0, analysed.stderr[-3000:]
  figures = sorted(os.listdir(os.path.join(workdir, "figures")))
  assert figures == ["accuracy.png", "activations_step10_f5_update.png",
                     "activations_step10_f6_depth.png", "divergence_step10.png",
                     "gradients_step10_f3_histogram.png", "gradients_step10_f7_heatmap.png",
                     "sgd_noise_step10.png"]
  grads = _read(os.path.join(workdir, "analysis", "gradients_step10.json"))
  assert grads["setting"].startswith("MLP 3x32, BN / no BN; synthetic data")
  assert {m["histogram_layer"] for m in grads["members"]} == {4}  # 3 hidden layers, classifier


def test_a_run_from_before_families_declared_their_fields_still_loads_and_resumes(tmp_path):
  """config.json of an older run declares the ResNet's four arm fields only (no scan_blocks)."""
  config = tiny_config()
  old = workdir_lib.config_dict(config)
  del old["sweep"]["arms"]["scan_blocks"]
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(old))
  workdir_lib.prepare(str(workdir), config)  # the identical rerun is the same run: it resumes
  loaded = checkpoint.read_config(str(workdir))
  assert plots.setting(loaded) == (
      "ResNet-8, BN / no BN, glorot_uniform init; synthetic data (512 training images)")
  del loaded.model["scan_blocks"]  # a model field a config does not give takes its default
  model = sweep.build_model(sweep.make_arms(loaded)[0], loaded)
  assert model.scan_blocks is False and model.depth == 8
