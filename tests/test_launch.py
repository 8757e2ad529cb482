"""The launch scripts and multi-process start-up, without starting JAX's backend."""

import os
import subprocess
import sys

import jax
import pytest

from bnjax import distributed, errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["single_host.sh", "slurm.sbatch", "tpu_pod.sh"]
_JAX_VARS = ["JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"]
# Variables by which JAX would detect a cluster (if the tests themselves run in one).
_CLUSTER_PREFIXES = ("SLURM_", "OMPI_", "PMIX_", "TPU_", "KUBERNETES_")


def _script(name: str) -> str:
  return os.path.join(REPO, "launch", name)


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """Runs `args` in the repository root with os.environ, less launcher and cluster variables."""
  dropped = {"ZONE", "CONFIG", "WORKDIR", "OVERRIDES", "BNJAX_DISTRIBUTED", *_JAX_VARS}
  base = {k: v for k, v in os.environ.items()
          if k not in dropped and not k.startswith(_CLUSTER_PREFIXES)}
  return subprocess.run(args, cwd=REPO, env={**base, **(env or {})}, capture_output=True,
                        text=True, timeout=60)


def _header(name: str) -> str:
  """The comment block at the top of a script, after its #! line."""
  lines = open(_script(name)).read().splitlines()[1:]
  return "\n".join(line for line in lines[:next(
      i for i, line in enumerate(lines) if not line.startswith("#"))])


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses(name):
  result = _run(["bash", "-n", _script(name)])
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_header_says_what_to_edit_and_what_it_runs(name):
  header = _header(name)
  assert "edit" in header.lower()
  assert "bnjax.main" in header
  assert "set -euo pipefail" in open(_script(name)).read()


def test_single_host_without_arguments_prints_usage():
  result = _run(["bash", _script("single_host.sh")])
  assert result.returncode == 2
  assert result.stderr.startswith("usage:") and len(result.stderr.splitlines()) == 1


def test_slurm_without_config_prints_usage():
  result = _run(["bash", _script("slurm.sbatch")], {"WORKDIR": "runs/x"})
  assert result.returncode == 2
  assert result.stderr.startswith("usage:") and len(result.stderr.splitlines()) == 1


def test_tpu_pod_without_arguments_prints_usage():
  result = _run(["bash", _script("tpu_pod.sh")], {"TPU_NAME": "t", "ZONE": "z"})
  assert result.returncode == 2
  assert result.stderr.startswith("usage:") and len(result.stderr.splitlines()) == 1


def test_tpu_pod_without_tpu_name_fails_in_one_line():
  result = _run(["bash", _script("tpu_pod.sh"), "configs/lr_sweep.py", "runs/x"], {"ZONE": "z"})
  assert result.returncode != 0
  assert len(result.stderr.splitlines()) == 1 and "TPU_NAME" in result.stderr


def test_tpu_pod_refuses_a_gs_workdir():
  result = _run(["bash", _script("tpu_pod.sh"), "configs/lr_sweep.py", "gs://bucket/run"],
                {"TPU_NAME": "t", "ZONE": "z"})
  assert result.returncode != 0
  assert len(result.stderr.splitlines()) == 1 and "gcsfuse" in result.stderr


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
  """The keyword arguments of each jax.distributed.initialize call, which does nothing."""
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  for name in ["BNJAX_DISTRIBUTED", *_JAX_VARS]:
    monkeypatch.delenv(name, raising=False)
  return recorded


def test_initialize_not_requested_does_nothing(calls):
  distributed.initialize(False)
  assert calls == []


def test_initialize_requested_by_environment(calls, monkeypatch):
  monkeypatch.setenv("BNJAX_DISTRIBUTED", "1")
  distributed.initialize(False)
  assert calls == [{}]  # no arguments: JAX detects SLURM, Open MPI or a TPU pod


def test_initialize_off_with_zero(calls, monkeypatch):
  monkeypatch.setenv("BNJAX_DISTRIBUTED", "0")
  distributed.initialize(False)
  assert calls == []


def test_initialize_passes_jax_variables(calls, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  distributed.initialize(True)
  assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}]


@pytest.mark.parametrize("name, value", [("BNJAX_DISTRIBUTED", "yes"),
                                         ("JAX_NUM_PROCESSES", "four")])
def test_initialize_refuses_bad_variables(calls, monkeypatch, name, value):
  monkeypatch.setenv(name, value)
  with pytest.raises(errors.ConfigError, match=name):
    distributed.initialize(True)
  assert calls == []


def test_initialize_failure_is_one_sentence(calls, monkeypatch):
  def fail(**kwargs):
    raise RuntimeError("Barrier timed out. Some tasks did not join.\nDetails: ...")
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  with pytest.raises(errors.ConfigError) as caught:
    distributed.initialize(True)
  message = str(caught.value)
  assert "\n" not in message and message.endswith(".") and ". " not in message
  assert "Barrier timed out" in message and "JAX_COORDINATOR_ADDRESS" in message


def test_is_writer_is_process_zero(monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  assert distributed.is_writer()
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert not distributed.is_writer()


def test_main_reports_failed_start_up_in_one_line(tmp_path):
  """No cluster and no JAX_* variables: one error line, exit 1, workdir untouched."""
  workdir = tmp_path / "run"
  result = _run([sys.executable, "-m", "bnjax.main", "--config=configs/lr_sweep.py:smoke",
                 f"--workdir={workdir}"], {"BNJAX_DISTRIBUTED": "1", "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith("error: joining the multi-process run failed")
  assert "Traceback" not in result.stderr
  assert not workdir.exists()
