"""Loads a finished sweep, takes the BN member at the highest rate, and inspects it.

    python examples/inspect_member.py --workdir=runs/smoke
"""

import sys

import jax.numpy as jnp
from absl import app, flags
from flax import traverse_util

from bnjax import checkpoint, data, errors

_WORKDIR = flags.DEFINE_string("workdir", "runs/smoke", "Workdir of a finished sweep.")


def inspect(workdir: str) -> None:
  """Prints the member's test accuracy and the norm of each of its parameters."""
  run = checkpoint.load(workdir)  # --workdir, default runs/smoke
  lr = max(m["lr"] for m in run.members if m["norm"] == "batch")
  member = run.member_index(norm="batch", lr=lr, seed=run.config.sweep.seeds[0])
  model, variables = run.model(member), run.variables(member)
  dataset = data.load(run.config.data)
  logits = model.apply(variables, data.normalize(dataset.test.images_Nx32x32x3, dataset))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == dataset.test.labels_N)
  print(f"member {member} (norm=batch, lr={lr}) at step {run.step}: test accuracy {accuracy:.3f}")
  for path, weights in traverse_util.flatten_dict(variables["params"], sep="/").items():
    print(f"  {path:40s} {float(jnp.linalg.norm(weights)):8.3f}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {' '.join(argv[1:])}: name the run with"
                         " --workdir=DIR instead.")
  try:
    inspect(_WORKDIR.value)
  except errors.BnjaxError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
