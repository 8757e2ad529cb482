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

Executors that run the same program share it, as a training run's arm
does: one jitted step per (model, loop) in the process, so `auto` reuses
the program of the executor it resolves to, and `chunked` with k >= M that
of `vmap` (their `compile s` is then ~0, and the record's `new_programs` says
0). `--min_round_s` times each executor for at least that long per round
(more steps than `--steps` where a step is short), which keeps the spread
of fast GPU steps small.

Results go to `--out` (JSON: device description, settings, one record per
measurement) and to a table on stdout; docs/performance.md explains them.
"""

import argparse
import dataclasses
import functools
import itertools
import json
import math
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
import numpy as np
import optax

from bench import report, torch_baseline
from bnjax import config as config_lib, data, executor as executor_lib, models, train
from bnjax.models.layers import NORMS
from bnjax.models.resnet import RESIDUAL_ONLY_NORMS, SHORTCUTS, CifarResNet
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
  shortcut: str = "A"
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
  min_round_s: float = 0.0
  precision: str = ""
  data_cache: str = ""
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
  p.add_argument("--executors", type=_strs, default=d.executors,
                 help=f"of {executor_lib.EXECUTORS} (none: only the PyTorch baseline)")
  p.add_argument("--dtypes", type=_strs, default=d.dtypes, help="compute dtypes: float32, bfloat16")
  p.add_argument("--scan_blocks", type=_bools, default=d.scan_blocks,
                 help="run each stage's repeated blocks as one nn.scan: true, false or both")
  p.add_argument("--norm", default=d.norm, help=f"config.model.norm of both models, one of {NORMS}")
  p.add_argument("--shortcut", default=d.shortcut,
                 help=f"config.model.shortcut of both models, one of {SHORTCUTS}")
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
  p.add_argument("--min_round_s", type=float, default=d.min_round_s,
                 help="time each executor for at least this long per round (0: --steps)")
  p.add_argument("--precision", default=d.precision,
                 help="jax_default_matmul_precision for the run, e.g. highest (default: JAX's)")
  p.add_argument("--data_cache", default=d.data_cache,
                 help="folder to keep the synthetic data in between runs (default: none)")
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
  if s.norm not in NORMS:
    raise SystemExit(f"Unknown norm {s.norm!r}; use one of {list(NORMS)}.")
  if s.shortcut not in SHORTCUTS:
    raise SystemExit(f"Unknown shortcut {s.shortcut!r}; use one of {list(SHORTCUTS)}.")
  if s.shortcut == "none" and s.norm in RESIDUAL_ONLY_NORMS:
    raise SystemExit(f"--norm={s.norm} needs a shortcut; use --shortcut=A or --shortcut=B.")
  if min(s.members) < 1 or s.batch < 1 or s.steps < 1 or s.repeats < 1 or s.warmup < 0:
    raise SystemExit("--members, --batch, --steps and --repeats must be >= 1 and --warmup >= 0.")
  if s.min_round_s < 0:
    raise SystemExit("--min_round_s must be >= 0.")
  if s.train_size < s.batch:
    raise SystemExit("--train_size must be at least --batch.")


# ---------------------------------------------------------------- device


def device_description() -> dict[str, Any]:
  """What the numbers were measured on."""
  device = jax.devices()[0]
  return {"device_kind": device.device_kind, "backend": jax.default_backend(),
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax_version": jax.__version__, "matmul_precision": matmul_precision(),
          "compilation_cache_dir": jax.config.jax_compilation_cache_dir}


def matmul_precision() -> str:
  """JAX's default precision for float32 matmuls and convolutions in this run.

  "default" lets a GPU use TF32 for float32 convolutions; "highest" asks
  for full float32.
  """
  return jax.config.jax_default_matmul_precision or "default"


class CacheHits:
  """Counts JAX's persistent compilation cache hits (jax.monitoring events)."""

  count = 0

  @classmethod
  def listen(cls) -> None:
    if not getattr(cls, "_listening", False):
      jax.monitoring.register_event_listener(cls._on_event)
      cls._listening = True

  @classmethod
  def _on_event(cls, event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
      cls.count += 1


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


def make_model(depth: int, norm: str, dtype: str, scan_blocks: bool = False,
               shortcut: str = "A") -> CifarResNet:
  """The training default ResNet (config.model) at this depth, norm and shortcut.

  Built as a run builds it.
  """
  model_config = {**config_lib.base_config().model.to_dict(), "depth": depth, "norm": norm,
                  "shortcut": shortcut, "scan_blocks": scan_blocks}
  return models.make_model(model_config, num_classes=data.NUM_CLASSES, dtype=dtype)


@functools.cache
def optimizer() -> optax.GradientTransformation:
  """The training default SGD, one object for all measurements.

  Init is never timed.
  """
  return train.make_optimizer(0.9, 1e-4)


def _block(*trees: Any) -> None:
  jax.block_until_ready(trees)


@functools.cache
def arm_step(depth: int, norm: str, shortcut: str, dtype: str, scan: bool, loop: int | None,
             batch: int, augmentation: bool) -> Callable[..., Any]:
  """The jitted arm step of this model and member loop, one for all executors of a run.

  A training run builds one step per arm and calls it on every chunk; here
  executors that pass it the same shapes reuse its compiled program too.
  """
  config = train_config(Settings(batch=batch))
  return train.make_arm_step(make_model(depth, norm, dtype, scan, shortcut), optimizer(), config,
                             augmentation, loop)


def _programs(fn: Callable[..., Any]) -> int:
  """How many programs the jitted `fn` holds (-1 where JAX does not say)."""
  size = getattr(fn, "_cache_size", None)
  return size() if size else -1


def synthetic_data(s: Settings) -> data.Dataset:
  """The synthetic data of `data.synthetic(0, train_size, batch)`, kept in `--data_cache`.

  Making 50,000 images takes seconds to tens of seconds; a grid of runs
  makes them once and loads them from an .npz file after that.
  """
  if not s.data_cache:
    return data.synthetic(0, s.train_size, s.batch)
  path = os.path.join(s.data_cache, f"synthetic-0-{s.train_size}-{s.batch}.npz")
  if not os.path.exists(path):
    train_split = data.synthetic_split(0, s.train_size)
    test_split = data.synthetic_split(1, s.batch)
    os.makedirs(s.data_cache, exist_ok=True)
    partial = f"{path}.{os.getpid()}.npz"
    np.savez(partial, train_x=train_split[0], train_y=train_split[1],
             test_x=test_split[0], test_y=test_split[1])
    os.replace(partial, path)
  with np.load(path) as f:
    return data.from_numpy((f["train_x"], f["train_y"]), (f["test_x"], f["test_y"]))


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
  steps: int  # timed steps per round
  next_step: int  # the data step the next timed step trains on
  new_programs: int  # programs the first step compiled or loaded (0: reused in-process)
  cache_hits: int  # of those, loaded from the persistent compilation cache
  round_step_s: list[float] = dataclasses.field(default_factory=list)


def prepare(dataset: data.Dataset, model: CifarResNet, dtype: str, members: int, executor: str,
            s: Settings) -> Contender:
  """Builds the arm as `bnjax.loop` does, runs the compiling step and the warm-up.

  The warm-up steps, timed, set how many steps a round needs for
  `--min_round_s`.
  """
  tx = optimizer()
  states = train.init_arm(model, tx, tuple(range(members)), jnp.full((members,), 0.1))
  size = executor_lib.chunk_size(executor, members, s.chunk_size)
  loop = executor_lib.loop_members(executor, s.map_batch_size)
  step_fn = arm_step(model.depth, model.norm, model.shortcut, dtype, model.scan_blocks, loop,
                     s.batch, s.augmentation)
  arm = executor_lib.ArmExecutor.create(step_fn, train.make_arm_eval(model, s.batch), states, size)
  _block(arm.chunks)
  programs, hits = _programs(step_fn), CacheHits.count
  start = time.perf_counter()  # the first step compiles (every chunk shape)
  arm.step(dataset, jnp.asarray(0, jnp.int32))
  _block(arm.chunks, arm.sums)
  first_s = time.perf_counter() - start
  new_programs, hits = _programs(step_fn) - programs, CacheHits.count - hits
  start = time.perf_counter()
  for t in range(1, 1 + s.warmup):
    arm.step(dataset, jnp.asarray(t, jnp.int32))
  _block(arm.chunks, arm.sums)
  steps = s.steps
  if s.min_round_s > 0 and s.warmup > 0:
    warm_step_s = (time.perf_counter() - start) / s.warmup
    steps = max(s.steps, min(math.ceil(s.min_round_s / max(warm_step_s, 1e-6)), 100_000))
  return Contender(executor, arm, size, first_s, steps, 1 + s.warmup, new_programs, hits)


def time_steps(contender: Contender, dataset: data.Dataset) -> float:
  """Seconds per step over the contender's steps, blocking only at the end (as training does)."""
  arm, first = contender.arm, contender.next_step
  start = time.perf_counter()
  for t in range(first, first + contender.steps):
    arm.step(dataset, jnp.asarray(t, jnp.int32))
  _block(arm.chunks, arm.sums)
  contender.next_step += contender.steps
  return (time.perf_counter() - start) / contender.steps


def measure_group(dataset: data.Dataset, depth: int, members: int, dtype: str, scan: bool,
                  s: Settings) -> list[dict[str, Any]]:
  """Times every executor on one arm of `members` members, in interleaved rounds.

  Each of `--repeats` rounds times `--steps` steps of every executor in
  turn, so a slow spell of the machine hits all of them alike; a record's
  step time is the median of its rounds and `spread` their (max - min) /
  median.

  An executor whose arm cannot be built or stepped (out of device memory,
  say) gets a record with its `error` instead, and the others go on.
  """
  model = make_model(depth, s.norm, dtype, scan, s.shortcut)
  contenders, failed = [], []
  for ex in s.executors:
    try:
      contenders.append(prepare(dataset, model, dtype, members, ex, s))
    except Exception as e:  # e.g. RESOURCE_EXHAUSTED: record it, measure the rest
      failed.append(_error_record(ex, depth, members, dtype, scan, s, e))
      print(f"{ex} failed: {failed[-1]['error']}", flush=True)
  for _ in range(s.repeats):
    for contender in contenders:
      contender.round_step_s.append(time_steps(contender, dataset))
  records = [_record(c, depth, members, dtype, scan, dataset, s) for c in contenders]
  _compare_executors(records)
  return records + failed


def _error_record(executor: str, depth: int, members: int, dtype: str, scan: bool,
                  s: Settings, error: Exception) -> dict[str, Any]:
  """The record of an executor that could not run: what it was and why (first line)."""
  message = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
  return {"framework": "bnjax", "depth": depth, "norm": s.norm, "shortcut": s.shortcut,
          "members": members, "executor": executor,
          "resolved_executor": executor_lib.resolve(executor), "dtype": dtype,
          "precision": matmul_precision(), "scan_blocks": scan, "batch": s.batch,
          "error": message}


def _record(c: Contender, depth: int, members: int, dtype: str, scan: bool,
            dataset: data.Dataset, s: Settings) -> dict[str, Any]:
  step_s = statistics.median(c.round_step_s)
  input_s = time_input(dataset, s, len(c.arm.chunks))
  memory, source = peak_memory()
  return {
      "framework": "bnjax", "depth": depth, "norm": s.norm, "shortcut": s.shortcut,
      "members": members, "executor": c.executor,
      "resolved_executor": executor_lib.resolve(c.executor),
      "members_per_call": c.size, "calls_per_step": len(c.arm.chunks), "dtype": dtype,
      "precision": matmul_precision(), "new_programs": c.new_programs,
      "cache_hits": c.cache_hits,
      "scan_blocks": scan, "batch": s.batch, "warmup_steps": s.warmup, "timed_steps": c.steps,
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
  records = [r for r in records if "error" not in r]
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
  result = torch_baseline.measure_in_subprocess(
      depth, s.norm, members, dtype, s.batch, s.warmup, s.steps, s.torch_compile, s.repeats,
      matmul_precision(), s.min_round_s, s.shortcut)
  memory, source = result.pop("peak_memory")
  return {"depth": depth, "norm": s.norm, "shortcut": s.shortcut, "members": members,
          "executor": "one after another", "dtype": dtype, "batch": s.batch,
          "timed_steps": s.steps, "repeats": s.repeats,
          "peak_memory_bytes": memory, "peak_memory_source": source, **result}


def run(s: Settings) -> dict[str, Any]:
  """Measures every combination in `s`; returns (and writes) the results."""
  if s.precision and s.precision != "default":
    jax.config.update("jax_default_matmul_precision", s.precision)
  CacheHits.listen()
  results = {"device": device_description(), "settings": dataclasses.asdict(s), "records": []}
  records = results["records"]
  if s.compile_only:
    records.extend(compile_times(s))
  else:
    use_torch = s.torch and torch_baseline.available()
    if s.torch and not use_torch:
      print("torch is not installed (pip install -e .[bench]); skipping the PyTorch baseline.")
    dataset = synthetic_data(s) if s.executors else None  # --executors=: the baseline alone
    print(report.header(), flush=True)
    for depth, dtype, members in itertools.product(s.depths, s.dtypes, s.members):
      group = []
      for scan in s.scan_blocks:
        group += measure_group(dataset, depth, members, dtype, scan, s)
      for record in group:
        print(report.row(record), flush=True)
      if use_torch:
        baseline = _torch_or_error(depth, members, dtype, s)
        print(report.row(baseline), flush=True)
        for record in group:
          if "error" not in record and "error" not in baseline:
            record["vs_torch"] = record["images_per_s"] / baseline["images_per_s"]
        group.append(baseline)
      records.extend(group)
      write(results, s.out)  # what is measured so far survives a later failure
    if use_torch:
      import torch
      results["device"]["torch_version"] = torch.__version__
  write(results, s.out)
  print(report.table(results))
  return results


def _torch_or_error(depth: int, members: int, dtype: str, s: Settings) -> dict[str, Any]:
  """The baseline's record, or a record of why it failed (e.g. out of memory)."""
  try:
    return measure_torch(depth, members, dtype, s)
  except RuntimeError as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    return {"framework": "torch", "depth": depth, "norm": s.norm, "shortcut": s.shortcut,
            "members": members, "executor": "one after another", "dtype": dtype,
            "precision": matmul_precision(), "batch": s.batch,
            "error": (lines[-1] if lines else "failed")[:300]}


def compile_times(s: Settings) -> list[dict[str, Any]]:
  """Seconds to lower and to compile the vmapped arm step, without running it."""
  records = []
  shape = lambda shp, dt: jax.ShapeDtypeStruct(shp, dt)
  dataset = data.Dataset(
      data.Split(shape((s.train_size, *data.IMAGE_SHAPE), jnp.uint8), shape((s.train_size,), jnp.int32)),
      data.Split(shape((s.batch, *data.IMAGE_SHAPE), jnp.uint8), shape((s.batch,), jnp.int32)),
      shape((3,), jnp.float32), shape((3,), jnp.float32))
  for depth, dtype, members, scan in itertools.product(s.depths, s.dtypes, s.members, s.scan_blocks):
    model = make_model(depth, s.norm, dtype, scan, s.shortcut)
    tx = optimizer()
    states = train.abstract_arm(model, tx, members)
    step_fn = train.make_arm_step(model, tx, train_config(s), s.augmentation)
    start = time.perf_counter()
    lowered = step_fn.lower(states, train.zero_metrics(members), shape((members,), jnp.uint32),
                            dataset, shape((), jnp.int32))
    lower_s = time.perf_counter() - start
    lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    record = {"framework": "bnjax", "mode": "compile_only", "depth": depth, "norm": s.norm,
              "shortcut": s.shortcut, "members": members, "executor": "vmap", "dtype": dtype,
              "scan_blocks": scan, "precision": matmul_precision(), "batch": s.batch,
              "lower_time_s": lower_s, "compile_time_s": compile_s}
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
