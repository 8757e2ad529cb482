"""What verifying checkpoints costs: the checksums against the save they guard.

  python -m bench.checksums --config=configs/lr_sweep.py:smoke [--repeats=8] \
      [--out=bench/results/checksums_cpu_smoke.json] [--config.field=value ...]

Builds the checkpoint payload of the config's sweep (every arm's stacked
member states and metric sums, the shapes `bnjax.checkpoint.abstract_arms`
gives, filled with random numbers on the host, as the loop's snapshot is),
then times, `--repeats` times each and interleaved, so that a busy machine
slows both alike:

  checksums      `checkpoint.checksums(payload)`: a CRC32 per array and member
  save_blocking  `checkpoint.save`, checksums included, until it returns
  save_total     the same save until Orbax's background write has finished

and reports the medians and checksums / save_total, the share of a save
that verification adds (which must stay under 5%). Nothing is compiled and
no model runs: the payload's shapes come from `jax.eval_shape`.
"""

import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bnjax import checkpoint, logs, sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/lr_sweep.py:smoke", "Experiment config file, optionally with ':variant'.")
_REPEATS = flags.DEFINE_integer("repeats", 8, "Timed rounds of checksums and of a save.")
_OUT = flags.DEFINE_string("out", None, "Write the results here as JSON.")


def random_payload(config: Any, seed: int = 0) -> list[dict[str, Any]]:
  """Host arrays shaped as the sweep's checkpoint payload: random floats, zero integers."""
  rng = np.random.default_rng(seed)
  def fill(spec: jax.ShapeDtypeStruct) -> np.ndarray:
    if np.issubdtype(spec.dtype, np.floating):
      return rng.standard_normal(spec.shape).astype(spec.dtype)
    return np.zeros(spec.shape, spec.dtype)
  return jax.tree.map(fill, checkpoint.abstract_arms(sweep.make_arms(config), config))


def payload_bytes(payload: Any) -> int:
  return sum(leaf.nbytes for leaf in jax.tree.leaves(payload))


def measure(config: Any, repeats: int) -> dict[str, Any]:
  """Medians of the checksums' and a save's seconds over `repeats` interleaved rounds."""
  payload = random_payload(config)
  workdir = tempfile.mkdtemp(prefix="bnjax-bench-checksums-")
  times: dict[str, list[float]] = {"checksums": [], "save_blocking": [], "save_total": []}
  try:
    with checkpoint.make_manager(workdir, config) as manager:
      for step in range(repeats + 1):  # round 0 warms Orbax up and is not counted
        start = time.perf_counter()
        checkpoint.checksums(payload)
        sums = time.perf_counter()
        checkpoint.save(manager, step, payload, {"step": step, "last_log_step": step}, force=True)
        blocking = time.perf_counter()
        manager.wait_until_finished()
        total = time.perf_counter()
        if step:
          times["checksums"].append(sums - start)
          times["save_blocking"].append(blocking - sums)
          times["save_total"].append(total - sums)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  medians = {f"{k}_s": statistics.median(v) for k, v in times.items()}
  return {"payload_bytes": payload_bytes(payload), "repeats": repeats, **medians,
          "checksums_over_save": medians["checksums_s"] / medians["save_total_s"],
          "checksums_over_blocking_save": medians["checksums_s"] / medians["save_blocking_s"],
          "backend": jax.default_backend(), "seconds": times}


def main(argv: list[str]) -> None:
  del argv
  logs.setup()
  result = measure(_CONFIG.value, _REPEATS.value)
  print(f"payload {result['payload_bytes'] / 1e6:.1f} MB: checksums"
        f" {1e3 * result['checksums_s']:.1f} ms, save {1e3 * result['save_total_s']:.0f} ms"
        f" ({1e3 * result['save_blocking_s']:.0f} ms blocking):"
        f" {100 * result['checksums_over_save']:.2f}% of a save")
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  app.run(main)
