"""Launch-to-first-trained-step time of a sweep, phase by phase, and what a compile cache saves.

  python -m bench.startup --config=configs/lr_sweep.py --launches=nocache,cold,warm,main \
      --out=bench/results/startup.json [--config.field=value ...]

The default config is the paper's grid (ResNet-110, 2 arms x 3 rates x 3
seeds, batch 128) on CIFAR-10; `--config.data.name=synthetic` uses the
synthetic data instead, and overrides shrink the grid as for `bnjax.main`.

Each launch is a fresh Python process (imports and compiles start cold) that
does what `bnjax.loop.train_sweep` does before its first step, with the
same public functions in the same order, and times every phase:

  interpreter  the parent starting the process, up to this module's first line
  imports      absl's flag parsing (which loads the config file and so jax,
               flax and bnjax) and the rest of what a run imports
  backend      jax.devices(): the runtime starts (CUDA on a GPU)
  data         data.load(config.data), on the device
  init         loop.build_arm for every arm: the members' initial states
  eval         the step-0 evaluation of every arm, as the loop runs it
  first_step   step 0 of every arm, up to its results being ready
  steady_step  step 1, the same work with nothing to compile

`init`, `eval` and `first_step` are split further with JAX's own compile
events (jax.monitoring): `*_compile_s` is the time spent tracing, lowering
and compiling (or loading a compiled program from the persistent cache),
`*_run_s` the rest. Every launch runs the config with num_steps=2 (see
`TWO_STEPS`). The launch-to-first-step total is the sum of the phases up
to `first_step`. What is not timed: making the workdir, the step-0
checkpoint and the members table, which the `main` launch includes.

Launch kinds, in the order given:

  nocache  no persistent compilation cache
  cold     JAX's persistent compilation cache in a fresh folder, which it
           fills (with every program: --min_compile_time_secs=0, as the
           launch scripts set it)
  warm     the same folder again: a relaunch, e.g. after preemption
  main     a real `python -m bnjax.main` run of 2 steps (log_every=1) with
           the cache of `cold`/`warm` if they ran: the time from launch to
           its "Training ..." log line and to its "step 1/2" line, read
           from absl's log timestamps; a check on the phase sums

`--repeats=N` adds N - 1 rounds of a nocache and a warm launch, one after
the other, so that a busy machine slows both kinds alike; the summary takes
each kind's medians and their warm/nocache (and cold/nocache) ratios. The
results (every launch, the medians and the ratios) go to `--out` as JSON;
`python -m bench.report FILE` prints them as a table, and
docs/performance.md (Startup) quotes them.
"""

import time

_T_TOP = time.time()  # before anything heavy is imported; `interpreter` ends here

import dataclasses
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from bench import processes

DEFAULT_CONFIG = "configs/lr_sweep.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file, optionally with ':variant'.")
_LAUNCHES = flags.DEFINE_list(
    "launches", ["nocache", "cold", "warm", "main"],
    "Launch kinds to run in order: nocache, cold, warm, main.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Rounds of launches: after the first, each round runs a nocache and a warm"
    " launch again (where --launches has them); ratios compare the kinds' medians.")
_STEADY = flags.DEFINE_bool("steady_step", True, "Also time a second (steady) step.")
_EVAL = flags.DEFINE_bool("eval", True, "Time the step-0 evaluation, as training runs it.")
_MIN_COMPILE_S = flags.DEFINE_float(
    "min_compile_time_secs", 0.0,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS for cached launches: 0 (as launch/ sets it)"
    " caches init's small programs too; JAX's default is 1.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", None, "Persistent cache folder for cold/warm launches (default: a fresh one).")
_OUT = flags.DEFINE_string("out", "bench/results/startup.json", "JSON file for the results.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one launch of this kind and print it.")
_LAUNCH_TIME = flags.DEFINE_float("launch_time", None, "Internal: the parent's clock at launch.")

RESULT_TAG = "STARTUP_RESULT "
# Every launch runs the config with these overrides, so that the `main` run
# stops after its first logged step and compiles the very programs the other
# launches compile (num_steps sets constants of the step: the LR boundaries).
TWO_STEPS = ("--config.train.num_steps=2", "--config.log_every=1")
CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
PHASES = ("interpreter", "imports", "backend", "data", "init", "eval", "first_step")
_TRACE, _LOWER, _COMPILE = (
    "/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration")


# ---------------------------------------------------------------- one launch (child)


@dataclasses.dataclass
class CompileLog:
  """Sums of JAX's compile events since the last `take`."""

  trace_s: float = 0.0
  lower_s: float = 0.0
  backend_s: float = 0.0
  programs: int = 0
  cache_hits: int = 0

  def on_duration(self, event: str, seconds: float, **_: Any) -> None:
    if event == _TRACE:
      self.trace_s += seconds
    elif event == _LOWER:
      self.lower_s += seconds
    elif event == _COMPILE:
      self.backend_s += seconds
      self.programs += 1

  def on_event(self, event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
      self.cache_hits += 1

  def take(self) -> dict[str, float]:
    """The sums so far, as a record; resets them."""
    record = {"compile_s": self.trace_s + self.lower_s + self.backend_s,
              "trace_s": self.trace_s, "lower_s": self.lower_s, "backend_compile_s": self.backend_s,
              "programs": self.programs, "cache_hits": self.cache_hits}
    self.__init__()
    return record


def run_launch(kind: str, launch_time: float) -> dict[str, Any]:
  """Times one launch's phases in this (fresh) process, as `loop.train_sweep` runs them."""
  import jax
  import jax.numpy as jnp
  from jax import monitoring
  from bnjax import data, loop, mesh as mesh_lib, sweep  # what a run imports beyond its config
  log = CompileLog()
  monitoring.register_event_duration_secs_listener(log.on_duration)
  monitoring.register_event_listener(log.on_event)
  config = _CONFIG.value
  phases, compiles = {"interpreter": _T_TOP - launch_time}, {}
  clock = [time.time()]
  phases["imports"] = clock[0] - _T_TOP

  def mark(phase: str) -> None:
    now = time.time()
    phases[phase], clock[0] = now - clock[0], now
    compiles[phase] = log.take()

  log.take()
  jax.devices()
  mark("backend")
  mesh = mesh_lib.make_mesh(config.mesh)
  dataset = mesh_lib.place_replicated(data.load(config.data), mesh)
  jax.block_until_ready(dataset)
  mark("data")
  runs = [loop.build_arm(arm, config, mesh) for arm in sweep.make_arms(config)]
  jax.block_until_ready([run.executor.chunks for run in runs])
  mark("init")
  if _EVAL.value:
    for run in runs:
      run.executor.evaluate(dataset)  # fetched to the host, as the step-0 log does
  mark("eval")
  steps = (0, 1) if _STEADY.value else (0,)
  for step, phase in zip(steps, ("first_step", "steady_step")):
    for run in runs:
      run.executor.step(dataset, jnp.asarray(step, jnp.int32))
    jax.block_until_ready([(run.executor.chunks, run.executor.sums) for run in runs])
    mark(phase)
  return {"kind": kind, "phases": phases, "compiles": compiles,
          "members": sum(len(run.arm.members) for run in runs), "arms": len(runs),
          "cache_dir": jax.config.jax_compilation_cache_dir,
          "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})"}


def summarize(launch: dict[str, Any]) -> dict[str, float]:
  """Derived numbers of one launch: compile and run parts, and the launch-to-first-step total."""
  phases, compiles = launch["phases"], launch["compiles"]
  out = {"to_first_step_s": sum(phases.get(p, 0.0) for p in PHASES)}
  for phase in ("eval", "first_step", "init"):
    if phase in phases:
      out[f"{phase}_compile_s"] = compiles[phase]["compile_s"]
      out[f"{phase}_run_s"] = phases[phase] - compiles[phase]["compile_s"]
  out["compile_s"] = sum(c["compile_s"] for c in compiles.values())
  return out


# ---------------------------------------------------------------- bnjax.main (child)


_ABSL_TIME = re.compile(r"^[IWEF](\d{4}) (\d\d:\d\d:\d\d\.\d+)")


def _log_time(line: str, year: int) -> float | None:
  """The epoch time of an absl log line ("I1122 20:41:05.123456 ..."), or None."""
  match = _ABSL_TIME.match(line)
  if not match:
    return None
  stamp = datetime.datetime.strptime(f"{year}{match.group(1)} {match.group(2)}",
                                     "%Y%m%d %H:%M:%S.%f")
  return stamp.timestamp()


def run_main(overrides: list[str], env: dict[str, str]) -> dict[str, Any]:
  """A real 2-step `python -m bnjax.main` run: launch to its setup-done and first-step lines."""
  workdir = tempfile.mkdtemp(prefix="bnjax-startup-")
  command = [sys.executable, "-m", "bnjax.main", f"--workdir={workdir}", *overrides,
             "--alsologtostderr"]
  start = time.time()
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                        preexec_fn=processes.die_with_parent)
  total = time.time() - start
  shutil.rmtree(workdir, ignore_errors=True)
  if done.returncode != 0:
    raise RuntimeError(f"bnjax.main failed:\n{done.stderr[-3000:]}")
  year = datetime.date.today().year
  marks = {}
  for line in done.stderr.splitlines():
    if "] Training " in line:
      marks.setdefault("setup_done_s", _log_time(line, year) - start)
    elif "] step 1/2" in line:
      marks.setdefault("to_first_step_s", _log_time(line, year) - start)
  return {"kind": "main", "marks": marks, "process_s": total}


# ---------------------------------------------------------------- parent


def _config_args(argv: list[str]) -> list[str]:
  """The --config=... and --config.*=... arguments of `argv`, to pass on to every launch."""
  args = [a for a in argv if re.match(r"--?config[.=]", a)]
  if not any(re.match(r"--?config=", a) for a in args):
    args.insert(0, f"--config={DEFAULT_CONFIG}")
  return args + list(TWO_STEPS)


def _env(cache_dir: str | None) -> dict[str, str]:
  """This process's environment with JAX's persistent cache set to `cache_dir` (None: off)."""
  env = {k: v for k, v in os.environ.items() if k not in CACHE_ENV}
  env["PYTHONUNBUFFERED"] = "1"
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(_MIN_COMPILE_S.value)
  return env


def launch(kind: str, config_args: list[str], cache_dir: str | None) -> dict[str, Any]:
  """Runs one launch of `kind` in a fresh process and returns its record."""
  env = _env(cache_dir if kind != "nocache" else None)
  if kind == "main":
    return run_main(config_args, env)
  command = [sys.executable, "-m", "bench.startup", f"--child={kind}",
             f"--eval={_EVAL.value}", f"--steady_step={_STEADY.value}", *config_args]
  start = time.time()
  done = subprocess.run([*command, f"--launch_time={start}"], env=env, capture_output=True,
                        text=True, check=False, preexec_fn=processes.die_with_parent)
  lines = [l for l in done.stdout.splitlines() if l.startswith(RESULT_TAG)]
  if done.returncode != 0 or not lines:
    raise RuntimeError(f"Launch {kind} failed:\n{done.stderr[-3000:]}")
  record = json.loads(lines[-1][len(RESULT_TAG):])
  record["process_s"] = time.time() - start
  record.update(summarize(record))
  return record


RATIO_KEYS = ("to_first_step_s", "compile_s", "first_step_compile_s", "eval_compile_s",
              "init_s", "data_s")


def medians(launches: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """Per launch kind (not main), the median over its launches of each summary number."""
  out = {}
  for kind in ("nocache", "cold", "warm"):
    mine = [l for l in launches if l["kind"] == kind]
    if mine:
      numbers = [{**l["phases"], **{k: v for k, v in l.items() if k.endswith("_s")}}
                 for l in mine]
      keys = [k for k in numbers[0] if all(k in n for n in numbers)]
      out[kind] = {k: statistics.median(n[k] for n in numbers) for k in keys}
      out[kind]["launches"] = len(mine)
  return out


def ratios(by_kind: dict[str, dict[str, float]]) -> dict[str, float]:
  """cold/nocache and warm/nocache of the medians: totals, compile times, phases."""
  out = {}
  base = by_kind.get("nocache")
  for kind in ("cold", "warm"):
    if base and kind in by_kind:
      for key in RATIO_KEYS:
        name = key.removesuffix("_s") if key in ("init_s", "data_s") else key
        value, reference = by_kind[kind].get(name), base.get(name)
        if value is not None and reference:
          out[f"{kind}/nocache {name}"] = value / reference
  return out


def row(record: dict[str, Any]) -> str:
  """One line of the stdout summary for a launch."""
  if record["kind"] == "main":
    marks = record["marks"]
    return (f"main     setup done {marks.get('setup_done_s', float('nan')):7.1f} s,"
            f" first step logged {marks.get('to_first_step_s', float('nan')):7.1f} s")
  phases = " ".join(f"{p} {record['phases'].get(p, 0.0):.1f}" for p in
                    (*PHASES, "steady_step") if p in record["phases"])
  return (f"{record['kind']:8} to first step {record['to_first_step_s']:7.1f} s"
          f" (compiling {record['compile_s']:.1f} s): {phases}")


def parent(argv: list[str]) -> dict[str, Any]:
  """Runs the launches in order, writing their records and ratios after each one.

  What is measured so far survives a kill (bench/gpu.sh stops a row whose
  time is up).
  """
  config_args = _config_args(argv)
  own_cache = _CACHE_DIR.value is None
  cache_dir = _CACHE_DIR.value or tempfile.mkdtemp(prefix="bnjax-startup-xla-")
  launches = []
  kinds = list(_LAUNCHES.value)
  for kind in kinds:
    if kind not in ("nocache", "cold", "warm", "main"):
      raise app.UsageError(f"Unknown launch kind {kind!r}; use nocache, cold, warm or main.")
  kinds += [k for _ in range(_REPEATS.value - 1) for k in ("nocache", "warm") if k in kinds]
  results = write_results(config_args, launches)
  try:
    for kind in kinds:
      uses_cache = kind in ("cold", "warm") or (kind == "main" and "cold" in kinds)
      launches.append(launch(kind, config_args, cache_dir if uses_cache else None))
      print(row(launches[-1]), flush=True)
      results = write_results(config_args, launches)
  finally:
    if own_cache:
      shutil.rmtree(cache_dir, ignore_errors=True)
  for name, value in results["ratios"].items():
    print(f"{name}: {value:.2f}")
  return results


def write_results(config_args: list[str], launches: list[dict[str, Any]]) -> dict[str, Any]:
  """Writes (and returns) the results of the launches so far to --out."""
  config = _CONFIG.value
  results = {"device": _machine(), "config_args": config_args,
             "grid": {"depth": config.model.depth, "arms": dict(config.sweep.arms),
                      "lrs": list(config.sweep.lrs), "seeds": list(config.sweep.seeds),
                      "batch_size": config.train.batch_size, "data": config.data.name,
                      "executor": config.executor},
             "settings": {"eval": _EVAL.value, "steady_step": _STEADY.value,
                          "min_compile_time_secs": _MIN_COMPILE_S.value},
             "launches": launches, "medians": medians(launches)}
  results["ratios"] = ratios(results["medians"])
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(results, f, indent=1)
    f.write("\n")
  return results


def _machine() -> dict[str, Any]:
  """The host the parent ran on (the launches report their JAX device themselves)."""
  import platform
  model = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  return {"cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version()}


def main(argv: list[str]) -> None:
  if _CHILD.value:
    record = run_launch(_CHILD.value, _LAUNCH_TIME.value or _T_TOP)
    print(RESULT_TAG + json.dumps(record), flush=True)
  else:
    parent(sys.argv[1:])


if __name__ == "__main__":
  app.run(main)
