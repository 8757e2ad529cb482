"""Is this host ready for the GPU table? A minute of checks before minutes of measuring.

  python -m bench.preflight [--out=preflight.json]

The first step of `bench/gpu.sh`: on a tiny ResNet-8 sweep (four members,
batch 8, synthetic data) it runs each thing the table's rows rely on, once,
the way a run does it (`loop.build_arm`, the executors, Orbax):

  versions     Python, JAX and the libraries bnjax uses; the backend, its
               devices and the executor `auto` picks there
  executors    one train step and one evaluation on every executor, the
               chunked one with a ragged last chunk (3 + 1 members): every
               loss finite, and equal across executors
  bfloat16     one step computing in bfloat16 (its evaluation only warns when
               not finite: the rows never evaluate, and XLA:CPU of jax 0.11
               and 0.12 computes NaN for a jitted bfloat16 ResNet forward
               in eval mode, where jax 0.10 does not)
  scan         one step with scanned blocks, equal to the unrolled step
  highest      one step under jax_default_matmul_precision=highest, equal
               to the default precision's step
  compile      the compile-only path of bench.throughput
  orbax        an Orbax save of the trained members and their restore
  torch        torch with CUDA, in a process of its own (skipped, with the
               reason, where torch is not installed or sees no GPU)
  memory       the device's peak bytes in use (the process's max RSS on a CPU)

"Equal" allows 1% relative: the executors run the same arithmetic in
another order (vmap's grouped convolutions; a GPU's TF32), and a wrong
member, step or rate moves a loss far more. Each check prints one line. The
first that fails ends the run with one sentence naming it, on stderr and in
`--out`, and exit code 1.
"""

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from bench import processes, throughput
from bnjax import checkpoint, config as config_lib, data, executor as executor_lib, loop, mesh
from bnjax import sweep

RTOL = 0.01
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections",
            "absl-py", "tensorflow-datasets", "array-record", "torch")
# Runs in a process of its own: torch and JAX each hold a GPU memory pool.
TORCH_CHECK = """
import json, torch
result = {"version": torch.__version__}
if not torch.cuda.is_available():
  result["skipped"] = f"torch {torch.__version__} sees no CUDA device"
else:
  conv = torch.nn.Conv2d(3, 16, 3, padding=1).cuda()
  x = torch.randn(8, 3, 32, 32, device="cuda")
  loss = conv(x).square().mean()
  loss.backward()
  torch.cuda.synchronize()
  result.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                loss=float(loss), finite=bool(torch.isfinite(conv.weight.grad).all()))
print(json.dumps(result))
"""


class PreflightError(Exception):
  """A check failed; the message is one sentence naming it."""


def tiny_config() -> ml_collections.ConfigDict:
  """One BN arm of four ResNet-8 members (rates 0.05, 0.1 x seeds 0, 1), batch 8, synthetic data.

  Each member's losses differ from the others', so that a member, rate or
  seed mixed up by an executor shows. The data, schedule and evaluation sizes
  are those of the tests' `tiny_config(num_steps=100)` (tests/conftest.py),
  so that the test suite compiles each of these steps once for both.
  """
  config = config_lib.base_config()
  config.model.depth = 8
  config.data.name = "synthetic"
  config.data.synthetic_train_size = 512
  config.data.synthetic_test_size = 64
  config.sweep.lrs = (0.05, 0.1)
  config.sweep.seeds = (0, 1)
  config.sweep.arms = config_lib.sweep_arms(norm=("batch",))
  config.train.batch_size = 8
  config.train.num_steps = 100
  config.eval_batch_size = 32
  config.chunk_size = 3  # four members: chunks of 3 and 1
  config.mesh.members = 1  # one device, however many the host has
  return config


# ---------------------------------------------------------------- checks


def versions() -> dict[str, Any]:
  """Package versions, the backend, its devices and what `auto` resolves to."""
  found = {}
  for name in PACKAGES:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      found[name] = importlib.metadata.version(name)
  devices = jax.devices()
  return {"python": platform.python_version(), "packages": found,
          "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "devices": len(devices), "auto": executor_lib.resolve("auto")}


def one_step(config: ml_collections.ConfigDict, dataset: data.Dataset) -> loop.ArmRun:
  """The config's (single) arm built as a run builds it, after one train step."""
  arm, = sweep.make_arms(config)
  run = loop.build_arm(arm, config, mesh.make_mesh(config.mesh))
  run.executor.step(dataset, np.int32(0))
  return run


def step_losses(config: ml_collections.ConfigDict, dataset: data.Dataset, name: str,
                warnings: list[str] | None = None) -> tuple[loop.ArmRun, dict[str, list[float]]]:
  """One step and one evaluation: (the arm, {train_loss, test_loss} per member), all finite.

  With `warnings`, a test loss that is not finite is noted there instead of
  failing: the table's rows train and never evaluate.
  """
  run = one_step(config, dataset)
  losses = {"train_loss": run.executor.take_metric_means(1)["train_loss"].tolist(),
            "test_loss": run.executor.evaluate(dataset)["test_loss"].tolist()}
  for key, values in losses.items():
    if not all(math.isfinite(v) for v in values):
      message = f"{name}: the {key} after one step is not finite ({values})"
      if key != "test_loss" or warnings is None:
        raise PreflightError(message + ".")
      warnings.append(message + "; the rows, which only train, go on")
  return run, losses


def assert_close(name: str, losses: dict[str, list[float]], reference: dict[str, list[float]],
                 reference_name: str) -> None:
  """Raises PreflightError unless every loss is within RTOL of the reference's."""
  for key, values in losses.items():
    expected = reference[key][:len(values)]
    if not np.allclose(values, expected, rtol=RTOL, atol=0):
      raise PreflightError(f"{name}: its {key} {values} differs from {reference_name}'s"
                           f" {expected} by more than {RTOL:.0%}.")


def check_executors(dataset: data.Dataset, trained: list[loop.ArmRun]) -> dict[str, Any]:
  """Every executor's losses after one step, equal to vmap's; the chunked arm's chunk sizes.

  Appends the chunked arm to `trained`, for the Orbax check.
  """
  results, reference = {}, None
  for name in ("vmap", "sequential", "chunked", "map", "auto"):
    config = tiny_config()
    config.executor = name
    run, losses = step_losses(config, dataset, f"executor {name}")
    if reference is None:
      reference = losses
    assert_close(f"executor {name}", losses, reference, "vmap")
    sizes = [int(c.base_lr.shape[0]) for c in run.executor.chunks]
    if name == "chunked":
      trained.append(run)
      if sizes != [3, 1]:
        raise PreflightError(f"executor chunked: four members made chunks of {sizes}, not [3, 1].")
    results[name] = {**losses, "chunks": sizes}
  return results


def check_variant(name: str, dataset: data.Dataset,
                  change: Callable[[ml_collections.ConfigDict], None],
                  reference: dict[str, list[float]] | None,
                  warnings: list[str] | None = None) -> dict[str, Any]:
  """One sequential step of the first member with `change` applied; close to `reference`."""
  config = tiny_config()
  config.executor = "sequential"
  config.sweep.lrs, config.sweep.seeds = config.sweep.lrs[:1], config.sweep.seeds[:1]
  change(config)
  _, losses = step_losses(config, dataset, name, warnings)
  if reference is not None:
    assert_close(name, losses, reference, "the unrolled float32 step")
  return losses


def check_highest(dataset: data.Dataset, reference: dict[str, list[float]]) -> dict[str, Any]:
  """The step under jax_default_matmul_precision=highest (full float32 on a GPU)."""
  with jax.default_matmul_precision("highest"):
    return check_variant("precision highest", dataset, lambda c: None, reference)


def check_compile_only() -> dict[str, Any]:
  """bench.throughput's compile-only path on ResNet-8, M = 2."""
  settings = throughput.Settings(depths=(8,), members=(2,), batch=8, train_size=64,
                                 dtypes=("float32",), scan_blocks=(False,), compile_only=True)
  record, = throughput.compile_times(settings)
  if not record["compile_time_s"] > 0:
    raise PreflightError("compile-only: compiling the vmapped step took no time, so it did not"
                         " run.")
  return {"lower_time_s": record["lower_time_s"], "compile_time_s": record["compile_time_s"]}


def check_orbax(run: loop.ArmRun) -> dict[str, Any]:
  """Saves the arm's members with bnjax's Orbax manager, restores them, compares bit for bit."""
  states, sums = run.executor.snapshot()
  payload = [{"states": states, "sums": sums}]
  config = tiny_config()
  with tempfile.TemporaryDirectory(prefix="bnjax-preflight-") as workdir:
    with checkpoint.make_manager(workdir, config) as manager:
      checkpoint.save(manager, 1, payload, {"step": 1}, force=True)
      manager.wait_until_finished()
      restored, progress = checkpoint.restore(manager, 1, payload)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), payload, restored)
  if not all(jax.tree.leaves(same)) or progress.get("step") != 1:
    raise PreflightError("orbax: the members restored from an Orbax checkpoint differ from those"
                         " saved.")
  return {"arrays": len(jax.tree.leaves(payload))}


def start_torch_check() -> subprocess.Popen | None:
  """Starts the torch check's process (None where torch is not installed)."""
  if importlib.util.find_spec("torch") is None:
    return None
  return subprocess.Popen([sys.executable, "-c", TORCH_CHECK], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, preexec_fn=processes.die_with_parent)


def finish_torch_check(process: subprocess.Popen | None, timeout_s: float = 120) -> dict[str, Any]:
  """The torch check's result: version, device and a finite conv gradient, or why it was skipped."""
  if process is None:
    return {"skipped": "torch is not installed"}
  try:
    stdout, stderr = process.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    raise PreflightError(
        f"torch: a conv step on CUDA did not finish in {timeout_s:.0f} s.") from None
  if process.returncode != 0:
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    raise PreflightError(f"torch: its check failed with exit code {process.returncode} ({last}).")
  result = json.loads(stdout.strip().splitlines()[-1])
  if "skipped" not in result and not result["finite"]:
    raise PreflightError("torch: a conv gradient on CUDA is not finite.")
  return result


# ---------------------------------------------------------------- the run


def run(log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs every check in order and returns their results; the first failure raises."""
  results = {}
  torch_process = start_torch_check()  # runs alongside the JAX checks

  def timed(name: str, check: Callable[[], Any], summary: Callable[[Any], str]) -> Any:
    start = time.perf_counter()
    try:
      value = check()
    except PreflightError:
      raise
    except Exception as e:  # anything else a check raises is that check failing
      first = (str(e).strip().splitlines() or [""])[0][:300]
      raise PreflightError(f"{name}: {type(e).__name__}: {first}".rstrip(": ") + ".") from e
    seconds = time.perf_counter() - start
    results[name] = {"seconds": round(seconds, 2), **(value if isinstance(value, dict) else {})}
    log(f"preflight {name:10} ok   {seconds:5.1f} s  {summary(value)}")
    return value

  try:
    timed("versions", versions, lambda v: (
        f"Python {v['python']}, " + ", ".join(f"{k} {x}" for k, x in v["packages"].items())
        + f"; backend {v['backend']} ({v['devices']} x {v['device_kind']}), auto -> {v['auto']}"))
    config = tiny_config()
    dataset = mesh.place_replicated(data.load(config.data), mesh.make_mesh(config.mesh))
    trained = []
    executors = timed(
        "executors", lambda: check_executors(dataset, trained),
        lambda v: "train losses " + ", ".join(f"{k} {np.round(x['train_loss'], 4).tolist()}"
                                              for k, x in v.items()))
    reference = {k: v[:1] for k, v in executors["sequential"].items() if k.endswith("loss")}
    describe = lambda v: f"train loss {v['train_loss'][0]:.4f}, test loss {v['test_loss'][0]:.4f}"
    warnings = results.setdefault("warnings", [])
    timed("bfloat16", lambda: check_variant(
        "bfloat16", dataset, lambda c: c.train.update(compute_dtype="bfloat16"), None, warnings),
        describe)
    timed("scan", lambda: check_variant(
        "scanned blocks", dataset, lambda c: c.model.update(scan_blocks=True), reference), describe)
    timed("highest", lambda: check_highest(dataset, reference), describe)
    timed("compile", check_compile_only,
          lambda v: f"lower {v['lower_time_s']:.1f} s, compile {v['compile_time_s']:.1f} s")
    timed("orbax", lambda: check_orbax(trained[0]), lambda v: f"{v['arrays']} arrays bit for bit")
    timed("torch", lambda: finish_torch_check(torch_process), lambda v: v.get("skipped") or (
        f"torch {v['version']} (CUDA {v['cuda']}) on {v['device']}"))
    timed("memory", lambda: dict(zip(("peak_bytes", "source"), throughput.peak_memory())),
          lambda v: f"peak {v['peak_bytes'] / 2**20:.0f} MiB ({v['source']})")
  finally:
    if torch_process is not None and torch_process.poll() is None:
      torch_process.kill()
      torch_process.communicate()
  for warning in results["warnings"]:
    log(f"preflight warning: {warning}")
  results["ok"] = True
  return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m bench.preflight",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="", help="JSON file for the checks' results")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  try:
    results = run()
  except PreflightError as e:
    results = {"ok": False, "error": str(e)}
    _write(args.out, results)
    print(f"preflight failed: {e}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None
  results["seconds"] = round(time.perf_counter() - start, 1)
  _write(args.out, results)
  print(f"preflight passed in {results['seconds']:.0f} s", flush=True)
  return results


def _write(path: str, results: dict[str, Any]) -> None:
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(results, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
