"""The throughput benchmark runs end to end on tiny settings; the torch twin matches bnjax."""

import json

import jax
import jax.numpy as jnp
import pytest

from bench import report, throughput

RECORD_FIELDS = {
    "framework", "depth", "members", "executor", "resolved_executor", "dtype", "batch",
    "step_time_s", "images_per_s", "images_per_s_per_member", "compile_time_s",
    "peak_memory_bytes", "peak_memory_source", "input_time_s", "input_share",
    "scan_blocks", "repeats", "round_step_time_s", "spread", "vs_best"}


def test_benchmark_writes_json(tmp_path, capsys):
  out = tmp_path / "results.json"
  throughput.main(["--depths=8", "--members=2", "--executors=sequential,auto", "--batch=4",
                   "--steps=1", "--repeats=3", "--warmup=0", "--train_size=64",
                   "--torch=false", f"--out={out}"])
  results = json.loads(out.read_text())
  assert {"device_kind", "backend", "cpu_count"} <= set(results["device"])
  sequential, auto = results["records"]
  for record in (sequential, auto):
    assert RECORD_FIELDS <= set(record)
    assert record["members"] == 2 and record["calls_per_step"] == 2
    assert len(record["round_step_time_s"]) == 3
    assert record["step_time_s"] == sorted(record["round_step_time_s"])[1]
    assert record["images_per_s"] == pytest.approx(2 * record["images_per_s_per_member"])
    assert record["step_time_s"] > 0 and record["peak_memory_bytes"] > 0
    assert 0 < record["input_share"]
  assert sequential["vs_best"] == 1.0 and auto["resolved_executor"] == "sequential"
  assert auto["vs_best"] == pytest.approx(auto["images_per_s"] / sequential["images_per_s"])
  assert auto["choice_vs_best"] == 1.0
  assert "auto -> sequential ran at" in capsys.readouterr().out
  table = report.markdown(results)
  assert table.count("\n| bnjax | 8 | 2 |") == 2 and "its choice's own row ran at 100%" in table


def test_compile_only(tmp_path):
  out = tmp_path / "compile.json"
  throughput.main(["--compile_only", "--depths=14", "--members=1", "--batch=4",
                   "--scan_blocks=false,true", "--train_size=64", f"--out={out}"])
  unrolled, scanned = json.loads(out.read_text())["records"]
  assert unrolled["scan_blocks"] is False and scanned["scan_blocks"] is True
  for record in (unrolled, scanned):
    assert record["mode"] == "compile_only" and record["compile_time_s"] > 0
  assert "| ResNet-14 | 1 | scanned | float32 |" in report.markdown(json.loads(out.read_text()))


def test_bad_executor_is_one_sentence():
  with pytest.raises(SystemExit, match="Unknown executor"):
    throughput.parse_args(["--executors=threads"])


def _num_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_torch_resnet_matches_bnjax_parameter_count(norm):
  pytest.importorskip("torch")
  from bench import torch_resnet
  model = throughput.make_model(20, norm, "float32")
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  expected = _num_params(variables["params"])
  if norm == "batch":
    assert expected == 269_722
  assert torch_resnet.num_parameters(torch_resnet.CifarResNet(20, norm)) == expected
