"""The PyTorch baseline: M members trained one after another, as a user would.

Each member is its own `torch_resnet.CifarResNet` (channels_last) with SGD
(momentum 0.9, weight decay 1e-4) and cross-entropy, compiled with
`torch.compile` where that works and run eagerly otherwise (the record says
which and why). The batch is a fixed tensor already on the device, so the
baseline pays nothing for input: the comparison favours PyTorch.

torch is an optional dependency (`pip install -e .[bench]`); `available()`
says whether it can be imported, and nothing here is imported by bnjax.
The benchmark runs `measure` in a process of its own
(`measure_in_subprocess`), away from JAX's threads.
"""

import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from bench import processes

# A compiled member runs slowly for its 2nd and 3rd calls too (measured on
# CPU, torch 2.x), so it gets at least this many warm-up steps.
MIN_WARMUP = 3


def available() -> bool:
  """True when torch can be imported."""
  return importlib.util.find_spec("torch") is not None


def _device() -> str:
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


def _synchronize(device: str) -> None:
  import torch
  if device == "cuda":
    torch.cuda.synchronize()


def _make_member(depth: int, norm: str, shortcut: str, device: str,
                 seed: int) -> tuple[Any, Any]:
  import torch
  from bench import torch_resnet
  torch.manual_seed(seed)
  model = torch_resnet.CifarResNet(depth, norm, shortcut).to(
      device, memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  return model, opt


def _make_step(model: Any, opt: Any, dtype: str, compiled: bool, device: str):
  """One training step of one member: forward, cross-entropy, backward, SGD."""
  import torch
  forward = torch.compile(model) if compiled else model
  autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None

  def step(images: Any, labels: Any) -> Any:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
      loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    opt.step()
    return loss

  return step


def _first_calls(members: list, images: Any, labels: Any, dtype: str, device: str,
                 use_compile: bool) -> tuple[list, bool, str, float]:
  """Builds every member's step and runs it once; falls back to eager if compile fails.

  Returns (steps, compiled, note, seconds of these first calls).
  """
  note = ""
  start = time.perf_counter()
  if use_compile:
    try:
      steps = [_make_step(m, o, dtype, True, device) for m, o in members]
      for step in steps:
        step(images, labels)
      _synchronize(device)
      return steps, True, note, time.perf_counter() - start
    except Exception as e:  # inductor needs a C++ compiler / Triton; eager still works
      note = f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); eager"
  steps = [_make_step(m, o, dtype, False, device) for m, o in members]
  start = time.perf_counter()
  for step in steps:
    step(images, labels)
  _synchronize(device)
  return steps, False, note, time.perf_counter() - start


def _time_round(step_fns: list, images: Any, labels: Any, steps: int, device: str) -> float:
  """Seconds per step of all members, run one after another for `steps` steps each."""
  start = time.perf_counter()
  for step in step_fns:
    for _ in range(steps):
      loss = step(images, labels)
  loss.item()
  _synchronize(device)
  return (time.perf_counter() - start) / steps


def set_precision(precision: str) -> bool:
  """Matches JAX's float32 matmul precision; returns whether TF32 is allowed.

  JAX's "default" lets a GPU run float32 convolutions in TF32, as PyTorch
  does by default (cudnn.allow_tf32); "highest" (or "float32") is full
  float32 for both.
  """
  import torch
  full = precision in ("highest", "float32")
  torch.backends.cudnn.allow_tf32 = not full
  if full:
    torch.backends.cuda.matmul.allow_tf32 = False
  return torch.backends.cudnn.allow_tf32


def measure(depth: int, norm: str, num_members: int, dtype: str, batch: int,
            warmup: int, steps: int, use_compile: bool = True, repeats: int = 1,
            precision: str = "default", min_round_s: float = 0.0,
            shortcut: str = "A") -> dict[str, Any]:
  """Times `steps` steps of each of M members run one after another, `repeats` times.

  `norm` and `shortcut` are bnjax's config.model fields (`torch_resnet`).

  A step is one step of every member; its time is the median over the
  rounds, and images/s is aggregated over members: M * batch / step time.
  With `min_round_s` > 0 a round has as many more steps as it takes to last
  that long, going by one step of every member timed after the warm-up.
  """
  import torch
  tf32 = set_precision(precision)
  device = _device()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  gen = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, 32, 32, generator=gen).to(
      device, memory_format=torch.channels_last)
  labels = torch.randint(0, 10, (batch,), generator=gen).to(device)
  members = [_make_member(depth, norm, shortcut, device, seed) for seed in range(num_members)]
  step_fns, compiled, note, first_s = _first_calls(
      members, images, labels, dtype, device, use_compile)
  warmup = max(warmup, MIN_WARMUP)
  start = time.perf_counter()
  for step in step_fns:
    for _ in range(warmup):
      step(images, labels)
  _synchronize(device)
  first_s += time.perf_counter() - start  # compiling may go on for a few calls
  if min_round_s > 0:
    one_step_s = _time_round(step_fns, images, labels, 1, device)
    steps = max(steps, min(math.ceil(min_round_s / max(one_step_s, 1e-6)), 100_000))
  round_step_s = [_time_round(step_fns, images, labels, steps, device) for _ in range(repeats)]
  step_time = statistics.median(round_step_s)  # the time for one step of every member
  peak = None
  if device == "cuda":
    peak = (torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated")
  return {
      "framework": "torch", "torch_version": torch.__version__, "device": device,
      "compiled": compiled, "note": note, "warmup_steps": warmup, "timed_steps": steps,
      "precision": precision, "tf32": tf32,
      "round_step_time_s": round_step_s, "step_time_s": step_time,
      "spread": (max(round_step_s) - min(round_step_s)) / step_time,
      "images_per_s": num_members * batch / step_time,
      "images_per_s_per_member": batch / step_time,
      # the first and warm-up calls of all M members minus as many steady steps
      "compile_time_s": max(first_s - (1 + warmup) * step_time, 0.0),
      "peak_memory": peak,
  }


def measure_in_subprocess(depth: int, norm: str, num_members: int, dtype: str, batch: int,
                          warmup: int, steps: int, use_compile: bool = True,
                          repeats: int = 1, precision: str = "default",
                          min_round_s: float = 0.0, shortcut: str = "A") -> dict[str, Any]:
  """`measure` in a fresh Python process, and its record.

  A process of its own keeps torch's threads from competing with the thread
  pools of the JAX runtime that measured bnjax, and makes the reported peak
  memory (max RSS on CPU) the baseline's alone.
  """
  args = json.dumps([depth, norm, num_members, dtype, batch, warmup, steps, use_compile,
                     repeats, precision, min_round_s, shortcut])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "-m", "bench.torch_baseline", args], cwd=root,
                        capture_output=True, text=True, check=False,
                        preexec_fn=processes.die_with_parent)
  if done.returncode != 0:
    raise RuntimeError(f"The PyTorch baseline failed:\n{done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _main(args_json: str) -> None:
  result = measure(*json.loads(args_json))
  if result["peak_memory"] is None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_memory"] = (rss if sys.platform == "darwin" else rss * 1024, "process max RSS")
  print(json.dumps(result))


if __name__ == "__main__":
  _main(sys.argv[1])
