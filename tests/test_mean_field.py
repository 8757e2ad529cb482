"""The mean-field check: the MLP family, and the smoke job's gradient growth with and without BN."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import config as config_lib, errors
from bnjax.experiments import mean_field
from bnjax.models import mlp, registry
from conftest import load_config


def test_batchnorm_layer_normalises_each_unit_over_the_batch():
  model = registry.make_model(dict(name="bnjax.models.mlp", width=32, depth=3, norm="batch"))
  images = 3.0 + 5.0 * jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  _, state = model.apply(variables, images, train=True, mutable=["batch_stats", "intermediates"])
  for i in range(3):
    out_BxW = state["intermediates"][mlp.layer_name(i)]["norm_out"][0]
    np.testing.assert_allclose(jnp.mean(out_BxW, axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.std(out_BxW, axis=0), 1.0, atol=1e-2)  # eps 1e-5


def test_family_rejects_a_bad_field_in_one_sentence():
  with pytest.raises(errors.ConfigError, match="config.model.norm"):
    mlp.validate(dict(name="bnjax.models.mlp", width=8, depth=2, norm="layer"))
  with pytest.raises(errors.ConfigError, match="config.model.depth"):
    mlp.validate(dict(name="bnjax.models.mlp", width=8, depth=0, norm="none"))


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
  config = load_config("mean_field", "smoke")
  config_lib.validate(config)
  workdir = str(tmp_path_factory.mktemp("mean_field"))
  mean_field.run(config, workdir)
  return workdir, json.loads(open(os.path.join(workdir, "analysis", "mean_field.json")).read())


def test_smoke_job_writes_json_and_figure(smoke_result):
  workdir, result = smoke_result
  assert result["predicted_factor"] == pytest.approx(math.sqrt(math.pi / (math.pi - 1)))
  assert set(result["arms"]) == {"norm=batch", "norm=none"}
  for arm in result["arms"].values():
    assert arm["finite"]
    for kind in mean_field.KINDS:
      s = arm[kind]
      assert len(s["mean"]) == len(s["std"]) == result["depth"] == 20
      assert set(s["per_seed"]) == {"0", "1", "2"}
      assert np.isfinite(s["fitted_factor"])
  assert os.path.getsize(os.path.join(workdir, "figures", "mean_field.png")) > 10_000


def test_bn_gradients_explode_at_the_mean_field_rate_and_plain_ones_stay_flat(smoke_result):
  arms = smoke_result[1]["arms"]
  # Mean field predicts sqrt(pi/(pi-1)) = 1.211 per layer for the norm with BN
  # (pi/(pi-1) for its square); at width 256, batch 64 three seeds measured
  # 1.215-1.222 for both kinds. A 1.15-1.30 window catches a wrong rate (1.467, or
  # 1) while leaving room for finite-width noise.
  for kind in mean_field.KINDS:
    assert 1.15 < arms["norm=batch"][kind]["fitted_factor"] < 1.30
  # Without BN, He init keeps the pre-activation gradient flat (measured 1.005).
  # The weight gradient ‖Xᵀδ‖ also feels the inputs' growing correlation with
  # depth (measured 0.95), hence the wider [0.8, 1.25].
  assert 0.9 < arms["norm=none"]["preact_grad"]["fitted_factor"] < 1.1
  assert 0.8 < arms["norm=none"]["weight_grad"]["fitted_factor"] < 1.25
