"""The GPU table in one command: preflight, rows, startup and the PyTorch baseline, in a budget.

  bench/gpu.sh OUT [--budget_s=480] [--tiny] [--only=PATTERN,...] [--dry_run] [--cache_dir=DIR]

(`bench/gpu.sh` runs `python -m bench.gpu_grid` with the same arguments.)
First `python -m bench.preflight` (a minute of checks; the command stops
with its one sentence if one fails), then the rows, one process each, in the
order of what they decide:

  1. ResNet-110, M = 18, every executor in float32 (TF32 on a GPU), then the
     PyTorch baseline of the same, members one after another
  2. the same two in bfloat16
  3. ResNet-20, M = 18, every executor, and its baseline
  4. the M sweep: ResNet-110 at M = 1, 4 and 32
  5. compile-only: ResNet-110, M = 18, unrolled and scanned blocks, cold
  6. startup: launch to first step of a 2-member ResNet-110 sweep, with an
     empty compilation cache and with the filled one (bench.startup)

and then, while the budget lasts, scanned blocks, full float32
("highest"), and ResNet-20's variants.

OUT ends with four files (at most 8 files of at most 16 MiB come back from a
GPU host): log.txt (everything printed), manifest.json (each row: done,
stopped, failed or skipped, why, its estimated and actual seconds and the
cost model), results.json (the preflight, every record, the startup
launches; `python -m bench.report OUT` prints it) and table.md. Every row
rewrites them, so a command cut short leaves what it measured. Caches, the
synthetic data and the rows' own files live in `--cache_dir` (default: a
fresh temporary folder, removed at the end). Running the command again on
the same OUT keeps the rows it measured and tries the others.

Time: before a row starts, its seconds are estimated from the programs it
compiles (a program an earlier row compiled comes from the shared
persistent compilation cache), its steps and its process's start, then
scaled by how far the finished rows of its kind (or all rows) were off. A
row that would not fit in what is left of `--budget_s` is skipped, with the
reason. A row gets twice its estimate plus a margin and is killed with its
whole process group when that runs out, so a stuck row cannot eat the
budget; a signal to this process (the limit of the command that started
it) kills the running row's group too, and each row's processes die with
their parent, so nothing is left holding the GPU.

The costs start from the tiny grid measured on a 2-core CPU (`TINY`),
scaled to the GPU by the factors in `gpu_scale` (depth, batch, FLOPs and
an assumed GPU-to-CPU speed), and are corrected as rows finish.
`--tiny` runs the same sequence on a CPU in a few minutes (ResNet-14 and
ResNet-8, M in {2, 1}, batch 8).
"""

import dataclasses
import fnmatch
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

from bench import processes, report

ALL_EXECUTORS = ("vmap", "sequential", "chunked", "map", "auto")
OUT_FILES = ("log.txt", "manifest.json", "results.json", "table.md")
MAX_OUT_FILES, MAX_FILE_BYTES = 8, 16 * 2**20  # what comes back from a GPU host
MAX_LOG_BYTES = 8 * 2**20

_TINY = flags.DEFINE_bool("tiny", False, "Tiny settings that run on a CPU in minutes.")
_BUDGET = flags.DEFINE_float("budget_s", 480.0,
                             "Wall-clock seconds for everything, from this process's start.")
_ONLY = flags.DEFINE_list("only", [], "Run only rows whose names match these patterns (fnmatch).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the rows and their estimates; run nothing.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", None, "Folder for the caches, the synthetic data and the rows' own files"
    " (default: a fresh temporary folder, removed at the end).")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs the rows.")

START = time.time()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the rows run here


class UsageError(Exception):
  """Bad input: one sentence naming it."""


class Stopped(Exception):
  """A signal asked this process to stop."""


# ---------------------------------------------------------------- costs


@dataclasses.dataclass(frozen=True)
class Scale:
  """Measurement settings shared by every row, and the cost model's constants (seconds)."""

  big: int  # ResNet depth standing for ResNet-110
  small: int  # and for ResNet-20
  head: int  # M of the main rows: the paper's grid, 18 members
  more: tuple[int, ...]  # the M sweep's other M
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
  preflight_s: float
  chunk: int = 6  # the chunked executor's members per call: 18 = 3 x 6, one program
  backend: str = "gpu"  # where `auto` means vmap (on a CPU: sequential)
  scan_factor: float = 0.4  # scanned blocks: of trace and compile time
  margin_s: float = 20.0  # a row's share: twice its estimate plus this


# Measured: bench/gpu.sh --tiny on a 2-core CPU (the rows' actual seconds in
# its manifest.json, divided into these parts with the compile times of
# their records).
TINY = Scale(big=14, small=8, head=2, more=(1,), batch=8, steps=2, warmup=1, repeats=2,
             min_round_s=0.0, train_size=256, torch_compile=False,
             start_s=5.0, first_data_s=0.5, trace_s={14: 1.0, 8: 0.7},
             compile_s={14: 2.5, 8: 1.5}, load_s=0.3, member_step_s={14: 0.1, 8: 0.06},
             torch_compile_s={14: 0.0, 8: 0.0}, torch_start_s=4.0, preflight_s=50.0,
             chunk=4, backend="cpu", margin_s=30.0)

# From the CPU to the GPU, set from the first GPU run (an H200, jax 0.11.2, torch 2.11;
# bench/results/gpu-h200/): ResNet-110 at M = 18 compiled in 49 s a program (trace
# included) and stepped in 13.9 ms a member with vmap; torch.compile took 60 s for
# ResNet-110 and 18.5 s for ResNet-20; the preflight 62 s.
CUDA_START_S = 15.0  # starting Python, CUDA and its libraries in each process
GPU_COMPILE_VS_CPU = 2.1  # XLA:GPU (autotuning convolutions) against XLA:CPU, same program
GPU_SPEEDUP = 900.0  # a member's step: ~14 TFLOP/s of real work against ~15 GFLOP/s here
TORCH_COMPILE_S = 9.0  # inductor, one member's training graph: this plus ...
TORCH_COMPILE_S_PER_LAYER = 0.46  # ... this a layer
SYNTHETIC_S_PER_IMAGE = 1.5e-4  # making the synthetic data: 50,000 images in 7.2 CPU-s here


def gpu_scale(tiny: Scale = TINY) -> Scale:
  """The GPU grid's costs: the tiny CPU grid's, scaled to ResNet-110/20 at batch 128 on a GPU.

  Tracing is Python (host-bound), linear in the layers; compiling is linear
  in the layers too, times XLA:GPU's cost against XLA:CPU's; a step scales
  with its FLOPs (depth x batch) over the GPU's speed-up.
  """
  depths = {110: tiny.big, 20: tiny.small}
  batch = 128
  flops = {d: (d / t) * (batch / tiny.batch) for d, t in depths.items()}
  return Scale(
      big=110, small=20, head=18, more=(1, 4, 32), batch=batch, steps=3, warmup=2, repeats=3,
      min_round_s=0.5, train_size=50_000, torch_compile=True,
      start_s=tiny.start_s + CUDA_START_S,
      first_data_s=tiny.first_data_s + SYNTHETIC_S_PER_IMAGE * 50_000,
      trace_s={d: tiny.trace_s[t] * d / t for d, t in depths.items()},
      compile_s={d: tiny.compile_s[t] * d / t * GPU_COMPILE_VS_CPU for d, t in depths.items()},
      load_s=tiny.load_s * 3,
      member_step_s={d: tiny.member_step_s[t] * flops[d] / GPU_SPEEDUP for d, t in depths.items()},
      torch_compile_s={d: TORCH_COMPILE_S + TORCH_COMPILE_S_PER_LAYER * d for d in depths},
      torch_start_s=tiny.torch_start_s + CUDA_START_S,
      preflight_s=tiny.preflight_s * GPU_COMPILE_VS_CPU / 2 + CUDA_START_S)


GPU = gpu_scale()


# ---------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Row:
  """One process of the grid: what it measures.

  kind: "bnjax" (bench.throughput over `executors`), "torch" (its PyTorch
  baseline), "compile" (compile-only, unrolled and scanned blocks, cold) or
  "startup" (bench.startup, a cold and a warm launch).
  """

  depth: int
  members: int
  dtype: str = "float32"
  precision: str = "default"
  scan: bool = False
  executors: tuple[str, ...] = ALL_EXECUTORS
  kind: str = "bnjax"

  @property
  def name(self) -> str:
    """E.g. r110-m18-f32, r110-m18-bf16-scan, torch-r110-m18-f32, compile-r110-m18."""
    if self.kind in ("compile", "startup"):
      return f"{self.kind}-r{self.depth}-m{self.members}"
    dtype = {"float32": "f32", "bfloat16": "bf16"}.get(self.dtype, self.dtype)
    precision = "" if self.precision == "default" else self.precision
    name = f"r{self.depth}-m{self.members}-{dtype}{precision}" + ("-scan" if self.scan else "")
    return f"torch-{name}" if self.kind == "torch" else name

  def command(self, scale: Scale, python: str, work: str) -> list[str]:
    """The row's process: bench.throughput or bench.startup, writing into `work`."""
    out = result_path(work, self)
    if self.kind == "startup":
      return [python, "-m", "bench.startup", "--config=configs/lr_sweep.py",
              f"--config.model.depth={self.depth}", "--config.data.name=synthetic",
              f"--config.data.synthetic_train_size={scale.train_size // 5}",  # a small launch
              f"--config.data.synthetic_test_size={scale.batch}",
              f"--config.eval_batch_size={scale.batch}",
              f"--config.train.batch_size={scale.batch}", "--config.sweep.lrs=(0.1,)",
              f"--config.sweep.seeds={tuple(range(self.members))}",
              "--config.sweep.arms.norm=('batch',)", "--launches=cold,warm", "--nosteady_step",
              f"--cache_dir={os.path.join(work, 'startup-cache')}", f"--out={out}"]
    common = [python, "-m", "bench.throughput", f"--depths={self.depth}",
              f"--members={self.members}", f"--batch={scale.batch}",
              f"--train_size={scale.train_size}", f"--dtypes={self.dtype}",
              f"--precision={self.precision}", f"--out={out}"]
    if self.kind == "compile":
      return common + ["--compile_only", "--scan_blocks=false,true"]
    executors = "" if self.kind == "torch" else ",".join(self.executors)
    return common + [
        f"--executors={executors}", f"--scan_blocks={str(self.scan).lower()}",
        f"--steps={scale.steps}", f"--warmup={scale.warmup}", f"--repeats={scale.repeats}",
        f"--min_round_s={scale.min_round_s}", f"--chunk_size={scale.chunk}",
        f"--torch={str(self.kind == 'torch').lower()}",
        f"--torch_compile={str(scale.torch_compile).lower()}",
        f"--data_cache={os.path.join(work, 'data')}"]


def grid(scale: Scale) -> list[Row]:
  """Every row, in the order of what it decides (see the module docstring).

  The baseline runs its members one after another, so its img/s hardly
  depends on M: it runs at M = head only. `map` is left out at M = 1, where
  it is one member in a loop.
  """
  big, small, head = scale.big, scale.small, scale.head
  one = ("vmap", "sequential", "auto")
  rows = [Row(big, head), Row(big, head, kind="torch"),
          Row(big, head, "bfloat16"), Row(big, head, "bfloat16", kind="torch"),
          Row(small, head), Row(small, head, kind="torch")]
  rows += [Row(big, m, executors=one if m == 1 else ALL_EXECUTORS) for m in scale.more]
  rows += [Row(big, head, kind="compile"), Row(big, 2, kind="startup")]
  rows += [Row(big, head, scan=True, executors=("vmap", "sequential")),
           Row(big, head, precision="highest", executors=("vmap", "sequential")),
           Row(small, head, "bfloat16"), Row(small, head, "bfloat16", kind="torch"),
           *[Row(small, m, executors=one if m == 1 else ALL_EXECUTORS) for m in scale.more],
           Row(small, head, kind="compile"),
           Row(big, head, "bfloat16", scan=True, executors=("vmap",))]
  return rows


def programs(row: Row, backend: str = "gpu", chunk: int = 6) -> set[tuple]:
  """The distinct compiled programs a row runs (as bench.throughput shares them)."""
  model = (row.depth, row.dtype, row.precision, row.scan)
  if row.kind == "compile":
    return {(*model[:3], scan, "vmap", row.members) for scan in (False, True)}
  if row.kind == "startup":  # init, eval and step of its one arm
    size = 1 if backend == "cpu" else row.members
    return {(*model, what, size) for what in ("init", "eval", "step")}
  if row.kind == "torch":
    return set()
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
    else:  # chunked: k members a call, and the remainder's chunk
      keys.add((*model, "vmap", min(chunk, row.members)))
      if row.members > chunk and row.members % chunk:
        keys.add((*model, "vmap", row.members % chunk))
  return keys


def estimate(row: Row, scale: Scale, compiled: set[tuple], torch_compiled: set[tuple],
             first: bool) -> float:
  """Seconds the row should take, given the programs earlier rows compiled (and cached)."""
  scan_factor = scale.scan_factor if row.scan else 1.0
  trace, compile_s = scale.trace_s[row.depth] * scan_factor, scale.compile_s[row.depth]
  if row.kind == "torch":
    torch_step = scale.member_step_s[row.depth] * row.members
    seconds = scale.torch_start_s + (1 + max(scale.warmup, 3)) * torch_step
    seconds += scale.repeats * max(scale.min_round_s, scale.steps * torch_step)
    if (row.depth, row.dtype) not in torch_compiled:
      seconds += scale.torch_compile_s[row.depth]
    return seconds
  seconds = scale.start_s + (scale.first_data_s if first else 0.0)
  if row.kind == "compile":
    return seconds + sum(trace + compile_s * (scale.scan_factor if key[3] else 1.0)
                         for key in programs(row, scale.backend, scale.chunk))
  if row.kind == "startup":  # a cold launch compiles what the warm one loads
    launch = scale.start_s + scale.first_data_s
    count = len(programs(row, scale.backend, scale.chunk))
    return 2 * launch + count * (2 * trace + compile_s + scale.load_s)
  for key in programs(row, scale.backend, scale.chunk):
    seconds += trace + (compile_s * scan_factor if key not in compiled else scale.load_s)
  step = scale.member_step_s[row.depth] * row.members * (0.6 if row.dtype == "bfloat16" else 1.0)
  step *= 3.0 if row.scan else 1.0  # unmeasured on a GPU; XLA:CPU ran scans far slower
  per_executor = ((1 + scale.warmup) * step + scale.repeats * max(scale.min_round_s,
                                                                  scale.steps * step)
                  + scale.steps * 0.01)  # the input pipeline timed alone
  return seconds + len(row.executors) * per_executor


def plan(rows: list[Row], scale: Scale) -> list[float]:
  """Each row's estimate when the rows run in this order."""
  compiled, torch_compiled, out = set(), set(), []
  for i, row in enumerate(rows):
    out.append(estimate(row, scale, compiled, torch_compiled, first=i == 0))
    if row.kind == "bnjax":
      compiled |= programs(row, scale.backend, scale.chunk)
    elif row.kind == "torch":
      torch_compiled.add((row.depth, row.dtype))
  return out


@dataclasses.dataclass
class Guard:
  """The time budget: whether a row fits, its share, and how far estimates were off so far."""

  budget_s: float
  reserve_s: float = 10.0  # for merging the results and writing the table
  start: float = START
  clock: Callable[[], float] = time.time
  estimated: dict[str, float] = dataclasses.field(default_factory=dict)  # by row kind
  actual: dict[str, float] = dataclasses.field(default_factory=dict)

  def elapsed(self) -> float:
    return self.clock() - self.start

  def left(self) -> float:
    return self.budget_s - self.reserve_s - self.elapsed()

  def scale(self, kind: str | None = None) -> float:
    """Actual over estimated seconds of the finished rows of `kind` (else of all; 1 before any)."""
    if kind in self.estimated:
      estimated, actual = self.estimated[kind], self.actual[kind]
    else:
      estimated, actual = sum(self.estimated.values()), sum(self.actual.values())
    if estimated <= 0:
      return 1.0
    return min(max(actual / estimated, 0.25), 4.0)

  def fits(self, estimate_s: float, kind: str | None = None) -> tuple[bool, str]:
    """Whether a row estimated at `estimate_s` fits in what is left, and why not."""
    scale = self.scale(kind)
    need, left = estimate_s * scale, self.left()
    if need <= left:
      return True, ""
    return False, (f"needs ~{need:.0f} s (estimate {estimate_s:.0f} s x {scale:.2f}, the"
                   f" finished rows' actual/estimated) but {max(left, 0):.0f} s of the"
                   f" {self.budget_s:.0f} s budget are left")

  def share(self, estimate_s: float, margin_s: float, kind: str | None = None) -> float:
    """Seconds a row may run: twice its scaled estimate plus `margin_s`, within what is left."""
    return max(min(2 * estimate_s * self.scale(kind) + margin_s, self.left()), 1.0)

  def record(self, kind: str, estimate_s: float, actual_s: float) -> None:
    self.estimated[kind] = self.estimated.get(kind, 0.0) + estimate_s
    self.actual[kind] = self.actual.get(kind, 0.0) + actual_s


# ---------------------------------------------------------------- processes


class Log:
  """Prints lines and appends them to OUT/log.txt, which stops growing at MAX_LOG_BYTES."""

  def __init__(self, path: str | None):
    self.path, self.full = path, False

  def __call__(self, line: str) -> None:
    print(line, flush=True)
    if not self.path or self.full:
      return
    with open(self.path, "a") as f:
      if f.tell() + len(line) + 1 > MAX_LOG_BYTES:
        f.write(f"[log.txt stops here at {MAX_LOG_BYTES // 2**20} MiB; the rest went to"
                " stdout only]\n")
        self.full = True
      else:
        f.write(line + "\n")


def _env(work: str, row: Row | None) -> dict[str, str]:
  """A row's environment: the shared caches, except a compile-only row, which compiles cold."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_DEFAULT_MATMUL_PRECISION"):
    env.pop(name, None)  # each row sets --precision itself
  if row is None or row.kind in ("bnjax", "torch"):
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(work, "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  if row is not None and row.kind == "torch":  # JAX only describes the device: leave torch the GPU
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(work, "torchinductor"))
  return env


def result_path(work: str, row: Row) -> str:
  return os.path.join(work, "rows", f"{row.name}.json")


# ---------------------------------------------------------------- results


@dataclasses.dataclass
class Results:
  """What OUT holds, rewritten after every row."""

  out: str
  scale: Scale
  budget_s: float
  preflight: dict[str, Any] = dataclasses.field(default_factory=dict)
  manifest: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  device: dict[str, Any] | None = None
  startup: dict[str, Any] | None = None

  def add(self, row: Row, path: str) -> int:
    """Adds the row's records from its JSON file (if it wrote one); returns how many."""
    if not os.path.exists(path):
      return 0
    with open(path) as f:
      found = json.load(f)
    if row.kind == "startup":
      self.startup = found
      return len(found.get("launches", []))
    device = dict(found["device"])
    if self.device is None or "torch_version" in device:
      self.device = {**(self.device or {}), **device}
    mine = [{**r, "row": row.name} for r in found["records"]]
    self.records += mine
    return len(mine)

  def as_json(self) -> dict[str, Any]:
    records = with_torch_ratios(self.records)
    return {"device": self.device, "host": host(), "budget_s": self.budget_s,
            "scale": dataclasses.asdict(self.scale), "preflight": self.preflight,
            "rows": self.manifest, "records": records, "startup": self.startup}

  def write(self) -> None:
    """results.json, manifest.json and table.md in OUT."""
    results = self.as_json()
    _write_json(os.path.join(self.out, "results.json"), results)
    _write_json(os.path.join(self.out, "manifest.json"),
                {"budget_s": self.budget_s, "scale": results["scale"], "rows": self.manifest})
    with open(os.path.join(self.out, "table.md"), "w") as f:
      f.write(report.results_markdown(results) + "\n")


def with_torch_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The records, each bnjax one with `vs_torch` where the baseline ran the same depth, M, dtype."""
  baselines = {(r["depth"], r["members"], r["dtype"], r.get("precision")): r["images_per_s"]
               for r in records if r.get("framework") == "torch" and "error" not in r}
  out = []
  for r in records:
    key = (r["depth"], r["members"], r["dtype"], r.get("precision"))
    if r.get("framework") == "bnjax" and "images_per_s" in r and key in baselines:
      r = {**r, "vs_torch": r["images_per_s"] / baselines[key]}
    out.append(r)
  return out


def host() -> dict[str, Any]:
  """This host and its GPU as nvidia-smi names it (where there is one)."""
  gpu = ""
  if shutil.which("nvidia-smi"):
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                           "clocks.max.sm", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False)
    gpu = done.stdout.strip()
  return {"hostname": socket.gethostname(), "platform": platform.platform(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(), "nvidia_smi": gpu}


def _write_json(path: str, value: Any) -> None:
  partial = f"{path}.partial"
  with open(partial, "w") as f:
    json.dump(value, f, indent=1)
    f.write("\n")
  os.replace(partial, path)


def earlier_results(out: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], Any]:
  """(rows done, their records, the startup result) of an earlier run into OUT."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return {}, [], None
  with open(path) as f:
    earlier = json.load(f)
  done = {r["name"]: r for r in earlier.get("rows", []) if r.get("status") == "done"}
  records = [r for r in earlier.get("records", []) if r.get("row") in done]
  startup = earlier.get("startup") if any(n.startswith("startup-") for n in done) else None
  return done, records, startup


# ---------------------------------------------------------------- the run


def check_out(out: str) -> None:
  """Raises UsageError unless OUT is a new folder, or one holding only what this command writes."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f"OUT={out} is a file; give a folder for the results (new, or one an"
                     " earlier bench/gpu.sh wrote).")
  if os.path.isdir(out):
    foreign = sorted(set(os.listdir(out)) - set(OUT_FILES))
    if foreign:
      raise UsageError(f"OUT={out} holds {', '.join(foreign[:5])}, which bench/gpu.sh did not"
                       " write; give a new folder (at most 8 files come back from a GPU host).")


def check_out_limits(out: str) -> list[str]:
  """What breaks the limits on a results folder: at most 8 files of 16 MiB, one level deep."""
  problems, files = [], []
  for root, dirs, names in os.walk(out):
    depth = os.path.relpath(root, out).count(os.sep) + (root != out)
    if depth > 1:
      problems.append(f"{root} is more than one folder level down")
    files += [os.path.join(root, n) for n in names]
  if len(files) > MAX_OUT_FILES:
    problems.append(f"{len(files)} files, more than {MAX_OUT_FILES}")
  problems += [f"{p} is larger than 16 MiB" for p in files if os.path.getsize(p) > MAX_FILE_BYTES]
  return problems


def select_rows(rows: list[Row], patterns: list[str]) -> list[Row]:
  """The rows matching any of `patterns` (all without); a pattern matching none is an error."""
  if not patterns:
    return rows
  for pattern in patterns:
    if not any(fnmatch.fnmatch(r.name, pattern) for r in rows):
      raise UsageError(f"--only={pattern} matches no row; the rows are "
                       + ", ".join(r.name for r in rows) + ".")
  return [r for r in rows if any(fnmatch.fnmatch(r.name, p) for p in patterns)]


def check_budget(budget_s: float, scale: Scale, guard_reserve_s: float) -> None:
  need = 2 * scale.preflight_s + guard_reserve_s
  if budget_s < need:
    raise UsageError(f"--budget_s={budget_s:g} is too small: the preflight alone may take"
                     f" {scale.preflight_s:.0f} s here; give at least {need:.0f}.")


def run_preflight(scale: Scale, work: str, guard: Guard, results: Results,
                  log: Callable[[str], None], python: str = sys.executable,
                  runner: Callable[..., tuple[int | None, float]] = processes.run_process) -> None:
  """Runs bench.preflight in its own process; raises UsageError with its sentence if it fails."""
  path = os.path.join(work, "preflight.json")
  if os.path.exists(path):
    os.remove(path)
  share = guard.share(scale.preflight_s, scale.margin_s, "preflight")
  code, seconds = runner([python, "-m", "bench.preflight", f"--out={path}"],
                         _env(work, None), share, log, REPO)
  if os.path.exists(path):
    with open(path) as f:
      results.preflight = json.load(f)
  results.preflight["actual_s"] = round(seconds, 1)
  if code is None:
    results.preflight["error"] = f"the preflight did not finish in its {share:.0f} s"
  elif code != 0 and "error" not in results.preflight:
    results.preflight["error"] = f"the preflight exited with code {code}"
  guard.record("preflight", scale.preflight_s, seconds)
  if "error" in results.preflight:
    results.preflight["ok"] = False
    raise UsageError(f"preflight failed: {results.preflight['error'].rstrip('.')}; no row ran.")


def torch_skip_reason(preflight: dict[str, Any]) -> str | None:
  """Why the baseline rows cannot run here (None: they can), from the preflight's torch check."""
  torch = preflight.get("torch", {})
  skipped = torch.get("skipped")
  if skipped == "torch is not installed":
    return skipped
  if skipped and preflight.get("versions", {}).get("backend") != "cpu":
    return skipped  # a GPU host whose torch sees no GPU would time a CPU
  return None


def run_grid(rows: list[Row], scale: Scale, work: str, guard: Guard, results: Results,
             log: Callable[[str], None],
             runner: Callable[..., tuple[int | None, float]] = processes.run_process,
             done_before: dict[str, dict[str, Any]] | None = None,
             python: str = sys.executable) -> None:
  """Runs the rows in order within the guard's budget, rewriting OUT after each."""
  estimates = plan(rows, scale)
  torch_skip = torch_skip_reason(results.preflight)
  for row, estimate_s in zip(rows, estimates):
    entry = {"name": row.name, **dataclasses.asdict(row), "estimate_s": round(estimate_s, 1)}
    results.manifest.append(entry)
    if row.name in (done_before or {}):
      entry.update(status="done", reason="measured by an earlier run into this folder",
                   actual_s=done_before[row.name].get("actual_s"))
      log(f"== {row.name}: measured before, kept")
      continue
    fits, reason = guard.fits(estimate_s, row.kind)
    if row.kind == "torch" and torch_skip:
      fits, reason = False, torch_skip
    if not fits:
      entry.update(status="skipped", reason=reason)
      log(f"== skip {row.name}: {reason}")
      results.write()
      continue
    share = guard.share(estimate_s, scale.margin_s, row.kind)
    log(f"== {row.name}: estimate {estimate_s:.0f} s (x {guard.scale(row.kind):.2f}), share"
        f" {share:.0f} s, {guard.elapsed():.0f} s elapsed of {guard.budget_s:.0f}")
    path = result_path(work, row)
    if os.path.exists(path):
      os.remove(path)
    code, seconds = runner(row.command(scale, python, work), _env(work, row), share, log,
                           REPO)
    found = results.add(row, path)
    if code == 0:
      status = "done"
    elif code is None:
      status = f"stopped after {seconds:.0f} s: its share of the budget ran out"
    else:
      status = f"failed (exit code {code}; see log.txt)"
    entry.update(status=status, actual_s=round(seconds, 1), records=found)
    guard.record(row.kind, estimate_s, seconds)
    log(f"== {row.name}: {status} in {seconds:.0f} s (estimated {estimate_s:.0f} s)")
    results.write()


def print_plan(rows: list[Row], scale: Scale, budget_s: float, log: Callable[[str], None]) -> None:
  """The rows, their estimates and where the budget is expected to run out."""
  total = scale.preflight_s
  log(f"{'preflight':28} {'':38} {scale.preflight_s:6.0f} s {total:8.0f} s")
  for row, seconds in zip(rows, plan(rows, scale)):
    total += seconds
    what = {"compile": "compile only, scan off/on", "startup": "cold and warm launch",
            "torch": "PyTorch, members one by one"}.get(row.kind, ",".join(row.executors))
    mark = "" if total <= budget_s else "  (past the budget: runs only if rows go faster)"
    log(f"{row.name:28} {what:38} {seconds:6.0f} s {total:8.0f} s{mark}")
  log(f"estimated total {total:.0f} s for a budget of {budget_s:.0f} s")


def _stop(signum: int, frame: Any) -> None:
  raise Stopped(signal.Signals(signum).name)


def main(argv: list[str]) -> None:
  try:
    run(argv[1:])
  except UsageError as e:
    print(f"bench/gpu.sh: {e}", file=sys.stderr, flush=True)
    sys.exit(2 if not str(e).startswith("preflight failed") else 1)


def run(positional: list[str]) -> None:
  """The whole command: checks its input, then preflight, rows and the OUT files."""
  if len(positional) != 1:
    raise UsageError("give one results folder: bench/gpu.sh OUT [--budget_s=480] [--tiny]"
                     " [--only=PATTERN,...].")
  out = os.path.abspath(positional[0])
  scale = TINY if _TINY.value else GPU
  guard = Guard(_BUDGET.value)
  rows = select_rows(grid(scale), _ONLY.value)
  check_out(out)
  check_budget(_BUDGET.value, scale, guard.reserve_s)
  if _DRY_RUN.value:
    print_plan(rows, scale, _BUDGET.value, print)
    return
  done_before, earlier_records, earlier_startup = earlier_results(out)
  os.makedirs(out, exist_ok=True)
  log = Log(os.path.join(out, "log.txt"))
  work = os.path.abspath(_CACHE_DIR.value or tempfile.mkdtemp(prefix="bnjax-gpu-"))
  os.makedirs(os.path.join(work, "rows"), exist_ok=True)
  results = Results(out, scale, _BUDGET.value, records=earlier_records, startup=earlier_startup)
  for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, _stop)
  log(f"# bench/gpu.sh {out} {' '.join(sys.argv[1:])}"
      f"  ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} on {socket.gethostname()})")
  if shutil.which("nvidia-smi"):
    log(f"# {host()['nvidia_smi']}")
  print_plan(rows, scale, _BUDGET.value, log)
  try:
    run_preflight(scale, work, guard, results, log, _PYTHON.value)
    run_grid(rows, scale, work, guard, results, log, done_before=done_before,
             python=_PYTHON.value)
  except Stopped as e:
    log(f"stopped by {e}: the rows not run are marked so in manifest.json")
    _mark_not_run(results, rows, f"not run: the command was stopped by {e}")
    raise SystemExit(143)
  finally:
    results.write()
    if _CACHE_DIR.value is None:
      shutil.rmtree(work, ignore_errors=True)
    problems = check_out_limits(out)
    log(f"{out}: " + ("; ".join(problems) if problems else
                      f"{len(os.listdir(out))} files, within the limits of a GPU host's results"))
  log(f"\n{report.results_markdown(results.as_json())}\n\nwrote {out}/table.md and"
      f" {out}/results.json in {time.time() - START:.0f} s")


def _mark_not_run(results: Results, rows: list[Row], reason: str) -> None:
  named = {e["name"] for e in results.manifest}
  results.manifest += [{"name": r.name, **dataclasses.asdict(r), "status": "not run",
                        "reason": reason} for r in rows if r.name not in named]


if __name__ == "__main__":
  app.run(main)
