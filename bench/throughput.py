"""Training throughput of bnjax's sweep step, and of a PyTorch baseline.

  python -m bench.throughput --depths=20,110 --members=1,4,8

For every (depth, members M, executor, compute dtype) it builds an arm of M
members exactly as `bnjax.loop` does (same model, optimizer, jitted arm
step, executor), with synthetic CIFAR-shaped data on the device, and times
`--steps` steps after `--warmup` steps. It blocks on the results only at the
end of each timed loop, never per step, so dispatch overlaps execution as in
training. It also times the jitted input pipeline (`data.train_batch`)
alone for the same steps, to give the share of a step spent on input.

`--compile_only` instead lowers and compiles the vmapped step of each
(depth, M, dtype) without running it, and prints the seconds it took.

Results go to `--out` (JSON: device description, settings, one record per
measurement) and to a table on stdout; docs/performance.md explains them.
"""

import argparse
import dataclasses
import functools
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bench import report, torch_baseline
from bnjax import config as config_lib, data, executor as executor_lib, train
from bnjax.models.resnet import CifarResNet
from bnjax.models.registry import DTYPES


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to measure; one field per command-line flag."""

  depths: tuple[int, ...] = (20, 110)
  members: tuple[int, ...] = (1, 4, 8)
  executors: tuple[str, ...] = ("vmap", "sequential", "chunked", "auto")
  dtypes: tuple[str, ...] = ("float32",)
  scan_blocks: tuple[bool, ...] = (False,)
  norm: str = "batch"
  batch: int = 128
  steps: int = 5
  warmup: int = 2
  repeats: int = 3
  chunk_size: int = 4
  map_batch_size: int = 1
  train_size: int = 50_000
  augmentation: bool = True
  torch: bool = True
  torch_compile: bool = True
  compile_only: bool = False
  out: str = "bench/results.json"


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def _strs(text: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in text.split(",") if x.strip())


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes", "on"):
    return True
  if text.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _bools(text: str) -> tuple[bool, ...]:
  return tuple(_bool(x) for x in _strs(text))


def parse_args(argv: list[str]) -> Settings:
  """Settings from command-line flags (`--flag=value`; booleans take true/false)."""
  d = Settings()
  p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
  p.add_argument("--depths", type=_ints, default=d.depths, help="ResNet depths 6n+2, comma-separated")
  p.add_argument("--members", type=_ints, default=d.members, help="members M per arm, comma-separated")
  p.add_argument("--executors", type=_strs, default=d.executors, help=f"of {executor_lib.EXECUTORS}")
  p.add_argument("--dtypes", type=_strs, default=d.dtypes, help="compute dtypes: float32, bfloat16")
  p.add_argument("--scan_blocks", type=_bools, default=d.scan_blocks,
                 help="run each stage's repeated blocks as one nn.scan: true, false or both")
  p.add_argument("--norm", default=d.norm, help="batch or none")
  p.add_argument("--batch", type=int, default=d.batch, help="images per step (shared by all members)")
  p.add_argument("--steps", type=int, default=d.steps, help="timed steps")
  p.add_argument("--repeats", type=int, default=d.repeats,
                 help="interleaved timing rounds of --steps steps; the median round counts")
  p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps after the first (compiling) one")
  p.add_argument("--chunk_size", type=int, default=d.chunk_size, help="members per call of the chunked executor")
  p.add_argument("--map_batch_size", type=int, default=d.map_batch_size,
                 help="members vmapped per iteration of the map executor")
  p.add_argument("--train_size", type=int, default=d.train_size, help="synthetic training images on the device")
  p.add_argument("--augmentation", type=_bool, default=d.augmentation, help="random crop and flip in the step")
  p.add_argument("--torch", type=_bool, default=d.torch, help="also measure the PyTorch baseline")
  p.add_argument("--torch_compile", type=_bool, default=d.torch_compile, help="use torch.compile when it works")
  p.add_argument("--compile_only", type=_bool, nargs="?", const=True, default=d.compile_only,
                 help="only time compiling the vmapped step")
  p.add_argument("--out", default=d.out, help="JSON file for the results")
  args = p.parse_args(argv)
  settings = Settings(**vars(args))
  _validate(settings)
  return settings


def _validate(s: Settings) -> None:
  for name in s.executors:
    if name not in executor_lib.EXECUTORS:
      raise SystemExit(f"Unknown executor {name!r}; use some of {list(executor_lib.EXECUTORS)}.")
  for name in s.dtypes:
    if name not in DTYPES:
      raise SystemExit(f"Unknown dtype {name!r}; use some of {sorted(DTYPES)}.")
  if min(s.members) < 1 or s.batch < 1 or s.steps < 1 or s.repeats < 1 or s.warmup < 0:
    raise SystemExit("--members, --batch, --steps and --repeats must be >= 1 and --warmup >= 0.")
  if s.train_size < s.batch:
    raise SystemExit("--train_size must be at least --batch.")


# ---------------------------------------------------------------- device


def device_description() -> dict[str, Any]:
  """What the numbers were measured on."""
  device = jax.devices()[0]
  return {"device_kind": device.device_kind, "backend": jax.default_backend(),
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax_version": jax.__version__}


def peak_memory() -> tuple[int, str]:
  """(bytes, source): the device's peak bytes in use, else the process's max RSS.

  Both are high-water marks of the whole process, not of one measurement.
  """
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
  return int(rss if sys.platform == "darwin" else rss * 1024), "process max RSS"


# ---------------------------------------------------------------- bnjax


def train_config(s: Settings) -> dict[str, Any]:
  """The default training config with the benchmark's batch size."""
  config = config_lib.base_config().train.to_dict()
  config.update(batch_size=s.batch, num_steps=1_000_000)  # no LR decay inside the timing
  return config


def make_model(depth: int, norm: str, dtype: str, scan_blocks: bool = False) -> CifarResNet:
  return CifarResNet(depth=depth, norm=norm, dtype=DTYPES[dtype], scan_blocks=scan_blocks)


@functools.cache
def optimizer() -> optax.GradientTransformation:
  """The training default SGD, one object for all measurements.

  Init is never timed.
  """
  return train.make_optimizer(0.9, 1e-4)


def _block(*trees: Any) -> None:
  jax.block_until_ready(trees)


@functools.cache
def _jitted_batch(seed: int, batch: int, augmentation: bool) -> Callable[..., Any]:
  """jit(data.train_batch) for these settings, compiled once for every record."""
  return jax.jit(lambda ds, step: data.train_batch(ds, seed, step, batch, augmentation))


def time_input(dataset: data.Dataset, s: Settings, calls_per_step: int) -> float:
  """Seconds per step spent building batches: jitted `train_batch` alone.

  Each compiled call of the arm step builds the batch itself, so a step of
  an executor with c calls pays for c batches.
  """
  batch_fn = _jitted_batch(train_config(s)["data_seed"], s.batch, s.augmentation)
  _block(batch_fn(dataset, jnp.asarray(0, jnp.int32)))
  outputs = []
  start = time.perf_counter()
  for t in range(s.steps):
    step = jnp.asarray(t, jnp.int32)
    outputs.extend(batch_fn(dataset, step) for _ in range(calls_per_step))
  _block(outputs)
  return (time.perf_counter() - start) / s.steps


@dataclasses.dataclass
class Contender:
  """One executor's arm, compiled and warmed up, and its timed rounds."""

  executor: str
  arm: executor_lib.ArmExecutor
  size: int
  first_step_s: float
  round_step_s: list[float] = dataclasses.field(default_factory=list)


def prepare(dataset: data.Dataset, model: CifarResNet, members: int, executor: str,
            s: Settings) -> Contender:
  """Builds the arm as `bnjax.loop` does, runs the compiling step and the warm-up."""
  tx = optimizer()
  states = train.init_arm(model, tx, tuple(range(members)), jnp.full((members,), 0.1))
  size = executor_lib.chunk_size(executor, members, s.chunk_size)
  loop = executor_lib.loop_members(executor, s.map_batch_size)
  arm = executor_lib.ArmExecutor.create(
      train.make_arm_step(model, tx, train_config(s), s.augmentation, loop),
      train.make_arm_eval(model, s.batch), states, size)
  _block(arm.chunks)
  start = time.perf_counter()  # the first step compiles (every chunk shape)
  arm.step(dataset, jnp.asarray(0, jnp.int32))
  _block(arm.chunks, arm.sums)
  first_s = time.perf_counter() - start
  for t in range(1, 1 + s.warmup):
    arm.step(dataset, jnp.asarray(t, jnp.int32))
  _block(arm.chunks, arm.sums)
  return Contender(executor, arm, size, first_s)


def time_steps(contender: Contender, dataset: data.Dataset, first: int, steps: int) -> float:
  """Seconds per step over `steps` steps, blocking only at the end (as training does)."""
  arm = contender.arm
  start = time.perf_counter()
  for t in range(first, first + steps):
    arm.step(dataset, jnp.asarray(t, jnp.int32))
  _block(arm.chunks, arm.sums)
  return (time.perf_counter() - start) / steps


def measure_group(dataset: data.Dataset, depth: int, members: int, dtype: str, scan: bool,
                  s: Settings) -> list[dict[str, Any]]:
  """Times every executor on one arm of `members` members, in interleaved rounds.

  Each of `--repeats` rounds times `--steps` steps of every executor in
  turn, so a slow spell of the machine hits all of them alike; a record's
  step time is the median of its rounds and `spread` their (max - min) /
  median.
  """
  model = make_model(depth, s.norm, dtype, scan)
  contenders = [prepare(dataset, model, members, ex, s) for ex in s.executors]
  first = 1 + s.warmup
  for _ in range(s.repeats):
    for contender in contenders:
      contender.round_step_s.append(time_steps(contender, dataset, first, s.steps))
    first += s.steps
  records = [_record(c, depth, members, dtype, scan, dataset, s) for c in contenders]
  _compare_executors(records)
  return records


def _record(c: Contender, depth: int, members: int, dtype: str, scan: bool,
            dataset: data.Dataset, s: Settings) -> dict[str, Any]:
  step_s = statistics.median(c.round_step_s)
  input_s = time_input(dataset, s, len(c.arm.chunks))
  memory, source = peak_memory()
  return {
      "framework": "bnjax", "depth": depth, "norm": s.norm, "members": members,
      "executor": c.executor, "resolved_executor": executor_lib.resolve(c.executor),
      "members_per_call": c.size, "calls_per_step": len(c.arm.chunks), "dtype": dtype,
      "scan_blocks": scan, "batch": s.batch, "warmup_steps": s.warmup, "timed_steps": s.steps,
      "repeats": s.repeats, "round_step_time_s": c.round_step_s, "step_time_s": step_s,
      "spread": (max(c.round_step_s) - min(c.round_step_s)) / step_s,
      "images_per_s": members * s.batch / step_s, "images_per_s_per_member": s.batch / step_s,
      "compile_time_s": max(c.first_step_s - step_s, 0.0), "first_step_s": c.first_step_s,
      "peak_memory_bytes": memory, "peak_memory_source": source,
      "input_time_s": input_s, "input_share": input_s / step_s,
  }


def _compare_executors(records: list[dict[str, Any]]) -> None:
  """Adds `vs_best`: img/s over the best img/s of the named executors in the group.

  `auto` itself is not a candidate for the best. When the executor `auto`
  chose was measured too, `auto`'s record also gets `choice_vs_best`, that
  executor's own `vs_best`: the two rows run the same program, so any gap
  between them is timing noise.
  """
  named = {r["executor"]: r["images_per_s"] for r in records if r["executor"] != "auto"}
  if not named:
    return
  best = max(named.values())
  for record in records:
    record["vs_best"] = record["images_per_s"] / best
    if record["executor"] == "auto" and record["resolved_executor"] in named:
      record["choice_vs_best"] = named[record["resolved_executor"]] / best


def measure_torch(depth: int, members: int, dtype: str, s: Settings) -> dict[str, Any]:
  """The PyTorch baseline record for (depth, M, dtype), measured in its own process."""
  result = torch_baseline.measure_in_subprocess(depth, s.norm, members, dtype, s.batch,
                                                s.warmup, s.steps, s.torch_compile, s.repeats)
  memory, source = result.pop("peak_memory")
  return {"depth": depth, "norm": s.norm, "members": members, "executor": "one after another",
          "dtype": dtype, "batch": s.batch, "timed_steps": s.steps, "repeats": s.repeats,
          "peak_memory_bytes": memory, "peak_memory_source": source, **result}


def run(s: Settings) -> dict[str, Any]:
  """Measures every combination in `s`; returns (and writes) the results."""
  results = {"device": device_description(), "settings": dataclasses.asdict(s), "records": []}
  records = results["records"]
  if s.compile_only:
    records.extend(compile_times(s))
  else:
    use_torch = s.torch and torch_baseline.available()
    if s.torch and not use_torch:
      print("torch is not installed (pip install -e .[bench]); skipping the PyTorch baseline.")
    dataset = data.synthetic(0, s.train_size, s.batch)
    print(report.header(), flush=True)
    for depth, dtype, members in itertools.product(s.depths, s.dtypes, s.members):
      group = []
      for scan in s.scan_blocks:
        group += measure_group(dataset, depth, members, dtype, scan, s)
      for record in group:
        print(report.row(record), flush=True)
      if use_torch:
        baseline = measure_torch(depth, members, dtype, s)
        print(report.row(baseline), flush=True)
        for record in group:
          record["vs_torch"] = record["images_per_s"] / baseline["images_per_s"]
        group.append(baseline)
      records.extend(group)
    if use_torch:
      import torch
      results["device"]["torch_version"] = torch.__version__
  write(results, s.out)
  print(report.table(results))
  return results


def compile_times(s: Settings) -> list[dict[str, Any]]:
  """Seconds to lower and to compile the vmapped arm step, without running it."""
  records = []
  shape = lambda shp, dt: jax.ShapeDtypeStruct(shp, dt)
  dataset = data.Dataset(
      data.Split(shape((s.train_size, *data.IMAGE_SHAPE), jnp.uint8), shape((s.train_size,), jnp.int32)),
      data.Split(shape((s.batch, *data.IMAGE_SHAPE), jnp.uint8), shape((s.batch,), jnp.int32)),
      shape((3,), jnp.float32), shape((3,), jnp.float32))
  for depth, dtype, members, scan in itertools.product(s.depths, s.dtypes, s.members, s.scan_blocks):
    model = make_model(depth, s.norm, dtype, scan)
    tx = optimizer()
    states = jax.eval_shape(lambda: train.init_arm(model, tx, tuple(range(members)),
                                                    jnp.full((members,), 0.1)))
    step_fn = train.make_arm_step(model, tx, train_config(s), s.augmentation)
    start = time.perf_counter()
    lowered = step_fn.lower(states, train.zero_metrics(members), dataset, shape((), jnp.int32))
    lower_s = time.perf_counter() - start
    lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    record = {"framework": "bnjax", "mode": "compile_only", "depth": depth, "norm": s.norm,
              "members": members, "executor": "vmap", "dtype": dtype, "scan_blocks": scan,
              "batch": s.batch, "lower_time_s": lower_s, "compile_time_s": compile_s}
    print(report.row(record), flush=True)
    records.append(record)
  return records


def write(results: dict[str, Any], path: str) -> None:
  """Writes the results as indented JSON, creating the folder if needed."""
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
    f.write("\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
