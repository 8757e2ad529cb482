"""The GPU benchmark grid that bench/gpu.sh runs: its rows, their time estimates, a time budget.

  python -m bench.gpu_grid --out=bench/results/gpu-2026-12-01 [--tiny] [--budget_s=570]

A row is one `python -m bench.throughput` process: one depth, one number of
members M, one dtype, matmul precision and scan setting, with its
executors and (where it says so) the PyTorch baseline, or a compile-only
measurement. Each row writes OUT/<row>.json; OUT/manifest.json says what
ran, what was skipped and why, and the estimated and actual seconds of
each row; OUT/results.json merges everything and OUT/table.md is the
Markdown of `python -m bench.report OUT`.

The full cross product (2 depths x 4 M x 5 executors x 3 precisions x scan
on/off, each with its baseline) would take about an hour on an H100, most
of it compiling, so the grid is in order of importance and the budget
decides how far it gets:

  1. ResNet-110, M = 18, float32: every executor and the baseline (the target)
  2. ResNet-110, M = 18: bfloat16 (the baseline with AMP), scanned blocks
  3. ResNet-110, M = 32, every executor; ResNet-20, M = 18, every executor
     and the baseline; ResNet-110, M = 18, full float32 ("highest")
  4. ResNet-110, M = 4 and 1, every executor; its compile-only times
  5. ResNet-20: the same variants and M, and compile-only times
  6. ResNet-110, M = 18, bfloat16 with scanned blocks

Before a row starts, its time is estimated from the programs it has to
compile (an earlier row's programs come from the persistent compilation
cache in OUT/cache, which every row shares) and from its timed steps, and
the estimate is scaled by how far the finished rows' estimates were off.
A row that would not fit in what is left of `--budget_s` is skipped, with
the reason in the log and the manifest, and the later (cheaper) rows are
still tried; a row still running when the budget ends is stopped. Running
the same command again skips the rows already in OUT and tries the rest.

`--tiny` runs the same grid on a CPU in minutes: ResNet-14 and ResNet-8, M
in {2, 1}, batch 8, 2 timed steps, the baseline eager.
"""

import dataclasses
import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

from bench import report

ALL_EXECUTORS = ("vmap", "sequential", "chunked", "map", "auto")

_OUT = flags.DEFINE_string("out", None, "Folder for the rows' JSON, manifest, table and caches.")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny settings that run on a CPU in minutes.")
_BUDGET = flags.DEFINE_float("budget_s", 570.0,
                             "Wall-clock seconds for the whole grid, from this process's start.")
_ONLY = flags.DEFINE_list("only", [], "Run only rows whose names match these patterns (fnmatch).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the rows and their estimates; run nothing.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs the rows.")

START = time.time()


@dataclasses.dataclass(frozen=True)
class Scale:
  """Measurement settings shared by every row, and the cost model's constants.

  The costs are guesses for an H100 host (no GPU was at hand when they
  were set) and measurements for the tiny CPU grid; each run's finished
  rows correct them (`Guard.scale`).
  """

  big: int  # ResNet depth standing for ResNet-110
  small: int  # and for ResNet-20
  head: int  # M of the main rows: the paper's grid, 18 members
  more: tuple[int, ...]  # further M of the executor sweeps (M = 1 comes last)
  batch: int
  steps: int
  warmup: int
  repeats: int
  min_round_s: float
  train_size: int
  torch_compile: bool
  start_s: float  # a row's process: imports, runtime start, data from the cache
  first_data_s: float  # the first row makes the synthetic data
  trace_s: dict[int, float]  # tracing and lowering one program, by depth
  compile_s: dict[int, float]  # compiling one unrolled program, by depth
  load_s: float  # loading a program from the persistent cache
  member_step_s: dict[int, float]  # one member's float32 step, by depth
  torch_compile_s: dict[int, float]  # the baseline's first compile in a run, by depth
  torch_start_s: float  # the baseline's process, its later compiles and its warm-up
  backend: str = "gpu"  # where `auto` means vmap (on a CPU: sequential)
  scan_factor: float = 0.4  # scanned blocks: of trace and compile time


GPU = Scale(big=110, small=20, head=18, more=(32, 4), batch=128, steps=3, warmup=2,
            repeats=3, min_round_s=0.5, train_size=50_000, torch_compile=True,
            start_s=7.0, first_data_s=10.0, trace_s={110: 3.0, 20: 1.0},
            compile_s={110: 15.0, 20: 4.0}, load_s=1.0, member_step_s={110: 0.012, 20: 0.003},
            torch_compile_s={110: 40.0, 20: 20.0}, torch_start_s=10.0)
TINY = Scale(big=14, small=8, head=2, more=(), batch=8, steps=2, warmup=1, repeats=2,
             min_round_s=0.0, train_size=256, torch_compile=False,
             start_s=5.0, first_data_s=0.5, trace_s={14: 1.0, 8: 0.7},
             compile_s={14: 2.5, 8: 1.5}, load_s=0.3, member_step_s={14: 0.1, 8: 0.06},
             torch_compile_s={14: 0.0, 8: 0.0}, torch_start_s=4.0, backend="cpu")


@dataclasses.dataclass(frozen=True)
class Row:
  """One process of the grid: what it measures."""

  depth: int
  members: int
  dtype: str = "float32"
  precision: str = "default"
  scan: bool = False
  executors: tuple[str, ...] = ALL_EXECUTORS
  torch: bool = True
  compile_only: bool = False

  @property
  def name(self) -> str:
    """E.g. r110-m18-f32, r110-m18-bf16-scan, r110-m18-f32highest, compile-r110-m18."""
    if self.compile_only:
      return f"compile-r{self.depth}-m{self.members}"
    dtype = {"float32": "f32", "bfloat16": "bf16"}.get(self.dtype, self.dtype)
    precision = "" if self.precision == "default" else self.precision
    return f"r{self.depth}-m{self.members}-{dtype}{precision}" + ("-scan" if self.scan else "")

  def args(self, scale: Scale, out: str) -> list[str]:
    """The bench.throughput flags of this row."""
    common = [f"--depths={self.depth}", f"--members={self.members}", f"--batch={scale.batch}",
              f"--train_size={scale.train_size}", f"--dtypes={self.dtype}",
              f"--precision={self.precision}", f"--out={out}"]
    if self.compile_only:
      return common + ["--compile_only", "--scan_blocks=false,true"]
    return common + [
        f"--executors={','.join(self.executors)}", f"--scan_blocks={str(self.scan).lower()}",
        f"--steps={scale.steps}", f"--warmup={scale.warmup}", f"--repeats={scale.repeats}",
        f"--min_round_s={scale.min_round_s}", f"--torch={str(self.torch).lower()}",
        f"--torch_compile={str(scale.torch_compile).lower()}"]


def grid(scale: Scale) -> list[Row]:
  """Every row, most important first (see the module docstring).

  The baseline runs at M = head and M = 1 only: its members run one after
  another, so its img/s hardly depends on M. `map` is left out at M = 1,
  where it is one member in a loop.
  """
  big, small, head = scale.big, scale.small, scale.head
  one = ("vmap", "sequential", "chunked", "auto")
  two = ("vmap", "sequential")

  def variants(depth: int) -> list[Row]:
    return [Row(depth, head, "bfloat16", executors=two),
            Row(depth, head, scan=True, executors=("vmap",), torch=False)]

  rows = [Row(big, head), *variants(big)]
  rows += [Row(big, m, torch=False) for m in scale.more[:1]]
  rows += [Row(small, head),
           Row(big, head, precision="highest", executors=("vmap",), torch=False)]
  rows += [Row(big, m, torch=False) for m in scale.more[1:]]
  rows += [Row(big, 1, executors=one), Row(big, head, compile_only=True)]
  rows += [*variants(small), *[Row(small, m, torch=False) for m in scale.more],
           Row(small, head, precision="highest", executors=("vmap",), torch=False),
           Row(small, 1, executors=one), Row(small, head, compile_only=True),
           Row(big, head, "bfloat16", scan=True, executors=("vmap",), torch=False)]
  return rows


# ---------------------------------------------------------------- estimates


def programs(row: Row, backend: str = "gpu") -> set[tuple]:
  """The distinct compiled programs a row's executors run (as bench.throughput shares them)."""
  model = (row.depth, row.dtype, row.precision, row.scan)
  if row.compile_only:
    return {(*model[:3], scan, "vmap", row.members) for scan in (False, True)}
  keys = set()
  for executor in row.executors:
    if executor == "auto":
      executor = "sequential" if backend == "cpu" else "vmap"
    if executor == "map":
      keys.add((*model, "map", row.members))
    elif executor == "vmap":
      keys.add((*model, "vmap", row.members))
    elif executor == "sequential":
      keys.add((*model, "vmap", 1))
    else:  # chunked, k = 4 (the default chunk size), and the remainder's chunk
      keys.add((*model, "vmap", min(4, row.members)))
      if row.members > 4 and row.members % 4:
        keys.add((*model, "vmap", row.members % 4))
  return keys


def estimate(row: Row, scale: Scale, compiled: set[tuple], torch_compiled: set[tuple],
             first: bool) -> float:
  """Seconds the row should take, given the programs earlier rows compiled (and cached)."""
  seconds = scale.start_s + (scale.first_data_s if first else 0.0)
  for key in programs(row, scale.backend):
    scan_factor = scale.scan_factor if key[3] else 1.0
    trace = scale.trace_s[row.depth] * scan_factor
    cold = row.compile_only or key not in compiled
    seconds += trace + (scale.compile_s[row.depth] * scan_factor if cold else scale.load_s)
  if row.compile_only:
    return seconds
  step = scale.member_step_s[row.depth] * row.members * (0.6 if row.dtype == "bfloat16" else 1.0)
  step *= 3.0 if row.scan else 1.0  # unmeasured on a GPU; XLA:CPU ran scans far slower
  per_executor = ((1 + scale.warmup) * step + scale.repeats * max(scale.min_round_s,
                                                                  scale.steps * step)
                  + scale.steps * 0.01)  # the input pipeline timed alone
  seconds += len(row.executors) * per_executor
  if row.torch:
    torch_step = scale.member_step_s[row.depth] * row.members
    seconds += scale.torch_start_s + (1 + max(scale.warmup, 3)) * torch_step
    seconds += scale.repeats * max(scale.min_round_s, scale.steps * torch_step)
    if (row.depth, row.dtype, row.precision) not in torch_compiled:
      seconds += scale.torch_compile_s[row.depth]
  return seconds


def plan(rows: list[Row], scale: Scale) -> list[float]:
  """Each row's estimate when the rows run in this order."""
  compiled, torch_compiled, out = set(), set(), []
  for i, row in enumerate(rows):
    out.append(estimate(row, scale, compiled, torch_compiled, first=i == 0))
    if not row.compile_only:
      compiled |= programs(row, scale.backend)
      torch_compiled.add((row.depth, row.dtype, row.precision))
  return out


@dataclasses.dataclass
class Guard:
  """The time budget: whether a row fits, and how far estimates were off so far."""

  budget_s: float
  reserve_s: float = 10.0  # for merging the results and writing the table
  start: float = START
  clock: Callable[[], float] = time.time
  estimated: float = 0.0
  actual: float = 0.0

  def elapsed(self) -> float:
    return self.clock() - self.start

  def left(self) -> float:
    return self.budget_s - self.reserve_s - self.elapsed()

  @property
  def scale(self) -> float:
    """Actual over estimated seconds of the rows run so far (1 before any)."""
    if self.estimated <= 0:
      return 1.0
    return min(max(self.actual / self.estimated, 0.25), 4.0)

  def fits(self, estimate_s: float) -> tuple[bool, str]:
    """Whether a row estimated at `estimate_s` fits in what is left, and why not."""
    need, left = estimate_s * self.scale, self.left()
    if need <= left:
      return True, ""
    return False, (f"needs ~{need:.0f} s (estimate {estimate_s:.0f} s x {self.scale:.2f}, the"
                   f" finished rows' actual/estimated) but {max(left, 0):.0f} s of the"
                   f" {self.budget_s:.0f} s budget are left")

  def record(self, estimate_s: float, actual_s: float) -> None:
    self.estimated += estimate_s
    self.actual += actual_s


# ---------------------------------------------------------------- running


def _env(out: str, row: Row) -> dict[str, str]:
  """The row's environment: shared caches, except a compile-only row, which compiles cold."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  cache = os.path.join(out, "cache")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if not row.compile_only:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache, "jax")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache, "torchinductor"))
  env.pop("JAX_DEFAULT_MATMUL_PRECISION", None)  # each row sets --precision itself
  return env


def run_row(row: Row, scale: Scale, out: str, timeout_s: float) -> tuple[str, float]:
  """Runs the row's process, streaming its output; (status, seconds). Stops it at the timeout."""
  path = os.path.join(out, f"{row.name}.json")
  command = [_PYTHON.value, "-m", "bench.throughput", *row.args(scale, path),
             f"--data_cache={os.path.join(out, 'cache', 'data')}"]
  print(f"$ {' '.join(command)}", flush=True)
  start = time.time()
  process = subprocess.Popen(command, env=_env(out, row), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
  pump = threading.Thread(target=_pump, args=(process.stdout,), daemon=True)
  pump.start()
  try:
    code = process.wait(timeout=max(timeout_s, 1.0))
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)  # the row and its baseline's process
    process.wait()
    pump.join(5)
    return f"stopped after {time.time() - start:.0f} s: the budget ran out", time.time() - start
  pump.join(5)
  seconds = time.time() - start
  if code != 0:
    return f"failed (exit code {code}; see the log)", seconds
  return "done", seconds


def _pump(stream) -> None:
  for line in stream:
    print(line, end="", flush=True)


def _write_json(path: str, value: Any) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=1)
    f.write("\n")


def run_grid(rows: list[Row], scale: Scale, out: str, guard: Guard,
             runner: Callable[[Row, Scale, str, float], tuple[str, float]] = run_row
             ) -> list[dict[str, Any]]:
  """Runs the rows in order within the guard's budget; returns the manifest rows."""
  budget_s = guard.budget_s
  estimates = plan(rows, scale)
  manifest = []
  for row, estimate_s in zip(rows, estimates):
    entry = {"name": row.name, **dataclasses.asdict(row), "estimate_s": round(estimate_s, 1)}
    manifest.append(entry)
    if os.path.exists(os.path.join(out, f"{row.name}.json")):
      entry.update(status="done", reason="measured by an earlier run into this folder")
      print(f"== {row.name}: measured before, kept", flush=True)
      continue
    fits, reason = guard.fits(estimate_s)
    if not fits:
      entry.update(status="skipped", reason=reason)
      print(f"== skip {row.name}: {reason}", flush=True)
      continue
    print(f"== {row.name}: estimate {estimate_s:.0f} s (x {guard.scale:.2f}),"
          f" {guard.elapsed():.0f} s elapsed of {budget_s:.0f}", flush=True)
    status, seconds = runner(row, scale, out, guard.left() + guard.reserve_s / 2)
    entry.update(status=status, actual_s=round(seconds, 1))
    if status == "done":
      guard.record(estimate_s, seconds)
    print(f"== {row.name}: {status} in {seconds:.0f} s (estimated {estimate_s:.0f} s)", flush=True)
    _write_json(os.path.join(out, "manifest.json"), {"rows": manifest})
  return manifest


def print_plan(rows: list[Row], scale: Scale, budget_s: float) -> None:
  """The rows, their estimates and where the budget is expected to run out."""
  total = 0.0
  print(f"{'row':28} {'executors':38} torch estimate  cumulative", flush=True)
  for row, seconds in zip(rows, plan(rows, scale)):
    total += seconds
    what = "compile only, scan off/on" if row.compile_only else ",".join(row.executors)
    mark = "" if total <= budget_s else "  (past the budget: runs only if rows go faster)"
    print(f"{row.name:28} {what:38} {'yes' if row.torch and not row.compile_only else 'no':5}"
          f" {seconds:6.0f} s {total:8.0f} s{mark}", flush=True)
  print(f"estimated total {total:.0f} s for a budget of {budget_s:.0f} s", flush=True)


def main(argv: list[str]) -> None:
  del argv
  scale = TINY if _TINY.value else GPU
  out = _OUT.value or time.strftime("bench/results/gpu-%Y-%m-%d")
  rows = [r for r in grid(scale)
          if not _ONLY.value or any(fnmatch.fnmatch(r.name, p) for p in _ONLY.value)]
  print_plan(rows, scale, _BUDGET.value)
  if _DRY_RUN.value:
    return
  os.makedirs(out, exist_ok=True)
  manifest = run_grid(rows, scale, out, Guard(_BUDGET.value))
  merged, _ = report.load_folder(out)
  _write_json(os.path.join(out, "manifest.json"), {"rows": manifest})
  _write_json(os.path.join(out, "results.json"), {**merged, "rows": manifest})
  table = report.folder_markdown(out)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table + "\n")
  print(f"\n{table}\n\nwrote {out}/table.md and {out}/results.json in {time.time() - START:.0f} s",
        flush=True)


if __name__ == "__main__":
  app.run(main)
