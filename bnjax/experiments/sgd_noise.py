"""F2: SGD noise against its bound α²C/|B|, with and without BN.

From initialisation (`python -m bnjax.main --config=configs/sgd_noise.py`):
for each norm and rate α of `sweep.lrs` a member of seed `sweep.seeds[0]`
trains `analysis.train_steps` SGD steps at constant rate α, then is
measured. From a checkpoint (`python -m bnjax.analyze --analyses=sgd_noise`):
each member of one seed is measured at its scheduled rate of the next step.

The measurement, on a pool of `analysis.pool_size` training examples (the
"full" set): C = E_i‖∇ℓ_i − ∇ℓ‖² from per-example gradients (BN statistics of
the pool held fixed), the bound, the noise measured over
`analysis.num_batches` sampled minibatches, the train-mode noise over
`analysis.num_train_batches`, and McCandlish et al.'s B_simple. One schema
either way: per arm, `members`, each {arm, seed, lr, base_lr, step,
diverged[, member], and the numbers of `measure`}.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnjax import checkpoint, data, experiments, forward, logs, models, plots, train
from bnjax import workdir as workdir_lib
from bnjax.analysis import noise
from bnjax.experiments import _members

BN_MODE = ("per-example gradients with BN statistics of the pool held fixed;"
           " measured_train_mode uses train-mode minibatch gradients")

RECORDINGS = ()  # per-example gradients only


def defaults() -> ml_collections.ConfigDict:
  """The paper's sizes: a pool of 512 examples standing in for the training set."""
  # num_batches minibatches per member for the measured noise (cheap: from the
  # per-example gradients); num_train_batches for the train-mode noise and
  # the two-batch estimator (one backward pass each, with BN). chunk: examples
  # per vmapped per-example gradient call (8 ran fastest on a 2-core CPU).
  return ml_collections.ConfigDict(dict(
      pool_size=512, num_batches=4096, num_train_batches=32, big_batch=512,
      train_steps=400, chunk=8, seed=0))


class Programs:
  """The compiled pieces of `measure` for one model, shared by all its members and rates.

  Variables and rate are traced arguments, so each piece compiles once per
  arm. The host dispatches the pieces without waiting (per-example gradients
  a chunk of `analysis.chunk` examples per call, train-mode gradients a
  minibatch per call) and fetches a member's numbers once, at the end. Not
  one `lax.map` over chunks or minibatches: on XLA:CPU such a loop ran over
  ten times slower than the same calls from the host (docs/performance.md).
  """

  def __init__(self, model: nn.Module):
    self.model = model
    self.pool_stats = jax.jit(functools.partial(noise.pool_statistics, model))
    self.per_example = jax.jit(
        lambda v, x, y: noise.per_example_grads(noise.separable_loss(model, v), v["params"], x, y))
    self.gram_numbers = jax.jit(functools.partial(_gram_numbers, model),
                                static_argnames=("batch", "separable"))
    self.train_noise = jax.jit(functools.partial(noise.train_mode_noise, model))


def pool(config: ml_collections.ConfigDict, dataset: data.Dataset) -> tuple[jax.Array, jax.Array]:
  """The first `analysis.pool_size` training images (normalised) and labels."""
  n = min(config.analysis.pool_size, dataset.train.size)
  return (data.normalize(dataset.train.images_Nx32x32x3[:n], dataset),
          dataset.train.labels_N[:n])


def minibatches(pool_size: int, batch: int, num_batches: int, num_train_batches: int,
                big_batch: int, seed: int) -> dict[str, jax.Array]:
  """The pool indices of every minibatch `measure` draws; the same for every member.

  without (num_batches, batch): each minibatch without replacement;
  with (num_batches, batch): with replacement; big (num_train_batches,
  min(big_batch, pool_size)): with replacement. The train-mode noise uses
  the first num_train_batches of `without` and of `with`.
  """
  key_without, key_small, key_big = jax.random.split(jax.random.key(seed), 3)
  return {
      "without": noise.sample_without_replacement(key_without, pool_size, batch, num_batches),
      "with": jax.random.randint(key_small, (num_batches, batch), 0, pool_size),
      "big": jax.random.randint(key_big, (num_train_batches, min(big_batch, pool_size)),
                                0, pool_size)}


def _gram_numbers(model: nn.Module, params: Any, grads_NxP: jax.Array, lr: jax.Array,
                  idx: dict[str, jax.Array], batch: int, separable: bool) -> dict[str, Any]:
  """Every number `measure` takes from the per-example gradients, as one program.

  With a `separable` loss (no BN) the train-mode noise of each minibatch
  comes from the same gradients (`noise.separable_minibatch_noise`);
  otherwise `measure` computes it by backward passes, and it is left out.
  """
  size = grads_NxP.shape[0]
  stats = noise.noise_statistics(grads_NxP, tuple(noise.leaf_sizes(params)))
  c = stats["C"]
  layers = noise.layer_sums(model, params, stats["C_P"])
  numbers = {
      "finite": forward.all_finite(grads_NxP), "C": c, "grad_sq_norm": stats["grad_sq_norm"],
      "mean_grad_P": stats["mean_grad_P"],
      "bound": noise.sgd_noise_bound(lr, c, batch),
      "expected_without_replacement": noise.expected_noise_without_replacement(lr, c, batch, size),
      "measured": lr**2 * noise.minibatch_noise(stats["gram_NxN"], idx["without"]).mean(),
      "measured_with_replacement":
          lr**2 * noise.minibatch_noise(stats["gram_NxN"], idx["with"]).mean(),
      "b_simple": stats["b_simple"],
      "layer_C": [value for _, value in layers],
  }
  if separable:
    k = idx["big"].shape[0]
    numbers["train_noise"] = tuple(
        jnp.stack(noise.separable_minibatch_noise(stats, i), axis=1)
        for i in (idx["without"][:k], idx["with"][:k], idx["big"]))
  return numbers


def measure(config: ml_collections.ConfigDict, programs: Programs, variables: dict[str, Any],
            pool_: tuple[jax.Array, jax.Array], lr: float) -> dict[str, Any]:
  """Every F2 number of one member (variables) at rate `lr` on the pool (images, labels).

  Returns device arrays, computed asynchronously: fetch them once.
  """
  a, batch = config.analysis, config.train.batch_size
  images, labels = pool_
  size = labels.shape[0]
  idx = minibatches(size, batch, a.num_batches, a.num_train_batches, a.big_batch, a.seed)
  fixed = programs.pool_stats(variables, images)
  grads = jnp.concatenate([programs.per_example(fixed, images[i:i + a.chunk],
                                                labels[i:i + a.chunk])
                           for i in range(0, size, a.chunk)])
  params = variables["params"]
  separable = not variables.get("batch_stats")
  numbers = programs.gram_numbers(params, grads, jnp.float32(lr), idx, batch=batch,
                                  separable=separable)
  if separable:
    without, small, big = numbers.pop("train_noise")
  else:  # train-mode gradients, one backward pass per minibatch
    k = a.num_train_batches
    train_noise = lambda rows: jnp.stack([jnp.stack(programs.train_noise(
        variables, images[i], labels[i], numbers["mean_grad_P"])) for i in rows])
    without, small, big = (train_noise(rows) for rows in
                           (idx["without"][:k], idx["with"][:k], idx["big"]))
  del numbers["mean_grad_P"]
  return {
      **numbers,
      "measured_train_mode": lr**2 * without[:, 0].mean(),
      "b_simple_two_batch_train_mode": noise.two_batch_noise_scale(
          small[:, 1].mean(), big[:, 1].mean(), batch, idx["big"].shape[1])["b_simple"],
      # Two lists, not a dict: fetching a dict to the host sorts its keys.
      "layers": [path for path, _ in models.ordered_leaves(programs.model, params)],
  }


def _record(config, programs: Programs, subject: _members.Subject, pool_, lr: float
            ) -> dict[str, Any]:
  """The subject's line: identity, its rate `lr` now, and, unless it diverged, `measure`."""
  record = {**subject.identity(), "base_lr": subject.lr, "lr": lr, "diverged": subject.diverged}
  if not subject.diverged:
    record.update(jax.device_get(measure(config, programs, subject.variables, pool_, lr)))
  return record


def _summary(record: dict[str, Any]) -> str:
  """E.g. "norm=batch lr 0.0001 (base 0.01, step 600): C 182, bound 1.14e-07, ..."."""
  rate = f"lr {record['lr']:.3g}"
  if record.get("base_lr") not in (None, record["lr"]):
    rate += f" (base {record['base_lr']:g}, step {record['step']})"
  if record["diverged"]:
    return f"{record['arm']} {rate}: diverged, not measured"
  return (f"{record['arm']} {rate}: C {record['C']:.3g}, bound α²C/|B| {record['bound']:.3g},"
          f" measured {record['measured']:.3g}, train-mode {record['measured_train_mode']:.3g},"
          f" B_simple {record['b_simple']:.3g} (two-batch, train mode"
          f" {record['b_simple_two_batch_train_mode']:.3g})")


def _result(config: ml_collections.ConfigDict, arms: dict[str, dict[str, Any]], size: int,
            step: int) -> dict[str, Any]:
  return {"name": "sgd_noise", "batch_size": config.train.batch_size, "pool_size": size,
          "step": step, "bn_mode": BN_MODE, "setting": plots.setting(config),
          "arms": list(arms.values())}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """From initialisation: every (arm, rate) after `train_steps` steps at that rate."""
  dataset = _members.load_then_prepare(config, workdir)
  pool_ = pool(config, dataset)
  arms: dict[str, dict[str, Any]] = {}
  subjects = list(_members.at_init(config, seeds=(int(config.sweep.seeds[0]),)))
  progress = logs.Progress("sgd_noise", len(subjects) * len(config.sweep.lrs))
  for subject in subjects:
    programs, step_fn = Programs(subject.model), _members.trainer(config, subject.model)
    for lr in config.sweep.lrs:
      trained = _members.trained(config, dataset, subject, float(lr),
                                 config.analysis.train_steps, step_fn)
      record = _record(config, programs, trained, pool_, float(lr))
      _members.grouped(arms, subject, "members").append(record)
      progress.done(_summary(record))
  result = _result(config, arms, len(pool_[1]), config.analysis.train_steps)
  experiments.write(workdir, "sgd_noise", result, figures)
  return result


def from_checkpoint(run_: checkpoint.Run, config: ml_collections.ConfigDict,
                    dataset: data.Dataset, seed: int | None = None) -> dict[str, Any]:
  """Each member of `seed` at the rate of its next step (its base rate times the schedule's)."""
  pool_, factor = pool(config, dataset), float(train.lr_factor(run_.step, config.train))
  arms: dict[str, dict[str, Any]] = {}
  programs: dict[str, Programs] = {}
  subjects = list(_members.at_checkpoint(run_, seed))
  progress = logs.Progress("sgd_noise", len(subjects))
  for subject in subjects:
    programs.setdefault(subject.arm, Programs(subject.model))
    record = _record(config, programs[subject.arm], subject, pool_, subject.lr * factor)
    _members.grouped(arms, subject, "members").append(record)
    progress.done(_summary(record))
  return _result(config, arms, len(pool_[1]), run_.step)


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """F2: SGD noise against the learning rate α (log-log), one column per arm.

  Top row: the bound α²C/|B|, its expectation without replacement, the
  measured noise (fixed-statistics and train-mode gradients). Bottom row:
  per-layer C of the conv and dense kernels in depth order, one line per rate.
  """
  arms = result["arms"]
  fig, axes = plots.subplots(2, len(arms), figsize=(5.2 * len(arms), 7.5), squeeze=False)
  for col, arm in enumerate(arms):
    _noise_panel(axes[0, col], arm["members"])
    axes[0, col].set_title(f"{models.describe(arm)}\n|B|={result['batch_size']},"
                           f" pool N={result['pool_size']}", fontsize=9)
    _layer_panel(axes[1, col], [m for m in arm["members"] if not m["diverged"]])
  path = workdir_lib.figure_path(workdir, stem)
  plots.save(fig, path, f"SGD noise and its bound {_when(result)}", result.get("setting"))
  return [path]


def _noise_panel(ax, members: list[dict[str, Any]]) -> None:
  alive = [m for m in members if not m["diverged"]]
  lr = np.asarray([m["lr"] for m in alive])
  series = (("bound", "bound α²C/|B|", "k", "-"),
            ("expected_without_replacement", "expected, without replacement", "gray", ":"),
            ("measured", "measured (BN stats fixed)", "C0", "none"),
            ("measured_train_mode", "measured (train-mode gradient)", "C3", "none"))
  for key, label, color, ls in series:
    ax.plot(lr, plots.as_float([m[key] for m in alive]), color=color, ls=ls,
            marker="o" if ls == "none" else None, label=label)
  for m in members:
    if m["diverged"]:
      ax.axvline(m["lr"], color="r", lw=0.8, ls="--", label=f"lr {m['lr']:g} diverged")
  ax.set_ylabel("E‖α∇ℓ − α∇_SGD‖²")
  plots.log_log(ax, "learning rate α")


def _layer_panel(ax, alive: list[dict[str, Any]]) -> None:
  for m in alive:
    kernels = [v for k, v in zip(m["layers"], m["layer_C"]) if k.endswith("kernel")]
    ax.plot(range(len(kernels)), plots.as_float(kernels), marker=".",
            label=f"lr {m['lr']:g}  (B_simple {plots.number(m['b_simple'], '.3g')},"
                  f" two-batch {plots.number(m['b_simple_two_batch_train_mode'], '.3g')})")
  ax.set_yscale("log")
  ax.set_xlabel("kernel in depth order (input … classifier)")
  ax.set_ylabel("per-layer C")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)


def _when(result: dict[str, Any]) -> str:
  if any("member" in m for arm in result["arms"] for m in arm["members"]):
    return f"at checkpoint step {result['step']} (α: each member's rate there)"
  return f"after {result['step']} steps at each rate"
