"""Loads a finished sweep, takes the BN member at the highest rate, and inspects it.

    python examples/inspect_member.py runs/smoke
"""

import sys

import jax.numpy as jnp
from flax import traverse_util

from bnjax import checkpoint, data

run = checkpoint.load(sys.argv[1] if len(sys.argv) > 1 else "runs/smoke")
lr = max(m["lr"] for m in run.members if m["norm"] == "batch")
member = run.member_index(norm="batch", lr=lr, seed=run.config.sweep.seeds[0])
model, variables = run.model(member), run.variables(member)
dataset = data.load(run.config.data)
logits = model.apply(variables, data.normalize(dataset.test.images_Nx32x32x3, dataset))
accuracy = jnp.mean(jnp.argmax(logits, -1) == dataset.test.labels_N)
print(f"member {member} (norm=batch, lr={lr}) at step {run.step}: test accuracy {accuracy:.3f}")
for path, weights in traverse_util.flatten_dict(variables["params"], sep="/").items():
  print(f"  {path:40s} {float(jnp.linalg.norm(weights)):8.3f}")
