"""The `reproduce` job: the paper's numbers at the paper's size, over seeds and inputs, judged.

    python -m bnjax.main --config=configs/reproduce.py --workdir=DIR

For ResNet-110 with and without BN it measures, at initialisation, every
seed of `sweep.seeds` on training batch 0 (`analysis.batch_size`, 128 as in
the paper): F3's layer-55 weight gradients, F5's channel variances after
the step −`analysis.update_lr`·g (no BN), F6's channel moments, F7's output
gradients and F2's SGD noise against its bound, and F4's relative loss
along the gradient for the first `analysis.line_seeds` seeds. F3, F5, F6
and F7 are measured again on each stand-in input of `analysis.inputs`
(`bnjax.inputs`: i.i.d. N(0, 1) and Gaussian 1/f² images), with the labels
of the same batch. Then F8's random matrix products; for the first seed,
F1's first `analysis.train_steps` SGD steps at each of the paper's rates
(batch `analysis.train_batch_size`, constant rate), measuring F4 again
before minibatches 4 and 7 of the members at the paper's F4 rates; and the
no-BN network under every initialiser of `analysis.compare_initializers`,
the evidence for the default initialiser.

Every reading is a list of members, one per seed; `bnjax.paper.judge` turns
it into the median and [min, max], the verdict from the median and whether
the whole range lies inside, outside or across the band. Outputs:
DIR/analysis/reproduction.json and DIR/reproduction.md (written by
`bnjax.experiments._reproduction_report`).

Cost: each program is compiled once per (model, batch shape), with the
variables and the batch as traced arguments, so every seed, input and
initialiser reuses it. Seeds run one after another, not vmapped: on a CPU a
vmapped convolution becomes a grouped one, several times slower than the
members one by one (README, "Executors"). Each arm's at-initialisation
numbers come to the host in one transfer.

Data: CIFAR-10 when prepared; otherwise, with `analysis.fallback_to_synthetic`,
the synthetic data (the report says which).
"""

import functools
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from bnjax import data, distributed, errors, files, forward, inputs, paper, sweep, train
from bnjax import workdir as workdir_lib
from bnjax.analysis import activations as act, common, gradients as grad, landscape, noise
from bnjax.analysis import random_matrix as rm
from bnjax.experiments import _reproduction_claims as claims
from bnjax.experiments._reproduction_claims import DATA_INPUT, F3_LAYER, F5_NORMS, paper_layer
from bnjax.experiments import _reproduction_report as report
from bnjax.models import layers, make_model

Numbers = dict[str, Any]
Batch = tuple[jax.Array, jax.Array]

RECORDINGS = ("conv_out", "logits")  # the numbered layers of F5 and F6, and F7's logits
# The measured input first, then the stand-ins of `bnjax.inputs`.
INPUTS = (DATA_INPUT, *inputs.STAND_INS)


# ---------------------------------------------------------------- compiled pieces


def probe(model, variables: common.Variables, images_BxHxWxC: jax.Array,
          labels_B: jax.Array) -> Numbers:
  """Loss and per-layer channel summaries of one train-mode forward pass.

  For weight layers 1..L (conv outputs, then logits): the mean over
  channels of log10 |channel mean| and of log10 channel std (F6's points),
  and log10 of the largest channel variance (F5). The loss is NaN when any
  layer overflowed.
  """
  outputs = act.numbered_layers(model, variables, images_BxHxWxC)
  finite = forward.all_finite(outputs)
  moments = [act.channel_moments(x) for x in outputs]
  log10 = lambda v: jnp.log10(jnp.maximum(v, 1e-30))
  return {
      "loss": jnp.where(finite, train.cross_entropy(outputs[-1], labels_B), jnp.nan),
      "finite": finite,
      "log10_abs_mean_L": jnp.stack([jnp.mean(log10(jnp.abs(m["mean_C"]))) for m in moments]),
      "log10_std_L": jnp.stack([jnp.mean(0.5 * log10(m["var_C"])) for m in moments]),
      "log10_max_var_L": jnp.stack([log10(jnp.max(m["var_C"])) for m in moments]),
      "output_grad_BxK": jnp.where(finite, jax.grad(train.cross_entropy)(outputs[-1], labels_B),
                                   jnp.nan),
  }


def layer_gradient(model, variables: common.Variables, images_BxHxWxC: jax.Array,
                   labels_B: jax.Array, layer: int) -> jax.Array:
  """Conv layer `layer`'s kernel gradient of the train-mode loss; all NaN on overflow.

  Only this kernel's gradient leaves the program, so XLA computes no other
  weight gradient: on a 2-core CPU at batch 128 that took a ResNet-110 from
  about 14 forward passes' time (the whole gradient) to about 1.3.
  """
  def loss_fn(params):
    logits, _, finite = forward.apply(model, {**variables, "params": params}, images_BxHxWxC,
                                      train=True, mutable=["batch_stats"])
    return train.cross_entropy(logits, labels_B), finite
  grads, finite = jax.grad(loss_fn, has_aux=True)(variables["params"])
  values = common.conv_kernels(grads, model)[layer - 1][1]
  return jnp.where(finite & jnp.all(jnp.isfinite(values)), values, jnp.nan)


def readings(model, variables: common.Variables, images_BxHxWxC: jax.Array,
             labels_B: jax.Array, layer: int) -> Numbers:
  """F3, F6, F7 and the loss of one member on one batch: `probe` plus layer `layer`'s gradient."""
  probed = probe(model, variables, images_BxHxWxC, labels_B)
  values = layer_gradient(model, variables, images_BxHxWxC, labels_B, layer)
  independence = grad.input_independence(probed.pop("output_grad_BxK"))
  return {**probed, "max_abs_grad": jnp.max(jnp.abs(values)), "grad_std": jnp.std(values),
          "same_class_share": independence["same_class_share"]}


class Programs:
  """One arm's jitted programs, each compiled once per shape and reused for every seed.

  The model's initialiser plays no part in `apply`, so these also measure
  variables drawn with another initialiser.
  """

  def __init__(self, model, config: ml_collections.ConfigDict):
    self.model = model
    self.tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
    constant = {**config.train.to_dict(), "lr_boundaries": (), "warmup_steps": 0}
    layer = paper_layer(F3_LAYER, model.depth)
    self.readings = jax.jit(functools.partial(readings, model, layer=layer))
    self.probe = jax.jit(functools.partial(probe, model))
    self.gradient = jax.jit(functools.partial(common.loss_and_grad, model))
    self.step = jax.jit(functools.partial(train.member_step, model, self.tx, constant))
    self.pool_statistics = jax.jit(functools.partial(noise.pool_statistics, model))
    self.per_example = jax.jit(lambda v, x, y: noise.per_example_grads(
        noise.separable_loss(model, v), v["params"], x, y))
    self.grad_chunk = config.analysis.grad_chunk
    self.batch_statistics = bool(jax.tree.leaves(train.abstract_variables(model)["batch_stats"]))

  def full_gradient(self, variables: common.Variables, images_BxHxWxC: jax.Array,
                    labels_B: jax.Array) -> tuple[jax.Array, Any]:
    """(L, ∂L/∂θ) of the batch-mean train-mode loss, as `common.loss_and_grad`.

    Without batch statistics the examples do not interact, so the batch is
    taken in chunks of `grad_chunk` and their losses and gradients averaged:
    the same numbers up to float rounding, and on a 2-core CPU a ResNet-110
    gradient at batch 128 took about 1.6x the CPU time of four at 32. With
    BN the batch's statistics couple the examples: the batch is taken whole.
    """
    batch, chunk = labels_B.shape[0], self.grad_chunk
    if self.batch_statistics or chunk >= batch or batch % chunk:
      return self.gradient(variables, images_BxHxWxC, labels_B)
    parts = [self.gradient(variables, images_BxHxWxC[i:i + chunk], labels_B[i:i + chunk])
             for i in range(0, batch, chunk)]
    mean = lambda *xs: sum(xs) / len(xs)
    return mean(*(loss for loss, _ in parts)), jax.tree.map(mean, *(g for _, g in parts))


def _moved(variables: common.Variables, direction: Any, scale: float) -> common.Variables:
  """`variables` with params θ + scale·direction."""
  params = jax.tree.map(lambda p, d: p + scale * d, variables["params"], direction)
  return {**variables, "params": params}


# ---------------------------------------------------------------- measurements


def line_losses(programs: Programs, variables: common.Variables, grads: Any, batch: Batch,
                etas: np.ndarray) -> jax.Array:
  """(E,) L(θ − ηg) on `batch` for each η, left on the device."""
  return jnp.stack([programs.probe(_moved(variables, grads, -eta), *batch)["loss"]
                    for eta in etas])


def relative_line(loss: float, losses_E: np.ndarray, etas: np.ndarray) -> Numbers:
  """F4: L(θ − ηg)/L(θ) for each η, and the first η past the paper's 1e3 (inf if none)."""
  relative = np.asarray(losses_E, np.float64) / loss
  divergent = ~(relative <= landscape.DIVERGENCE_THRESHOLD)
  first = float(etas[np.argmax(divergent)]) if divergent.any() else math.inf
  return {"eta": etas, "relative_loss": relative, "first_divergent_eta": first}


def seed_at_init(programs: Programs, variables: common.Variables, batches: dict[str, Batch],
                 cfg: ml_collections.ConfigDict, with_line: bool) -> Numbers:
  """One seed at initialisation on every input, as device arrays (nothing is fetched).

  Per input: `readings`; for the F5 norms, also log10 of each layer's
  largest channel variance after the step −update_lr·g on that input. With
  `with_line`, F4's losses along −g on the data batch.
  """
  found: Numbers = {name: programs.readings(variables, *batch) for name, batch in batches.items()}
  for name, batch in batches.items():
    moved = programs.model.norm in F5_NORMS
    line = with_line and name == DATA_INPUT
    if not (moved or line):
      continue
    loss, g = programs.full_gradient(variables, *batch)
    if moved:
      found[name]["update_log10_max_var_L"] = programs.probe(
          _moved(variables, g, -cfg.update_lr), *batch)["log10_max_var_L"]
    if line:
      found["line"] = {"loss": loss, "losses_E": line_losses(programs, variables, g, batch,
                                                               _etas(cfg))}
  return found


def _etas(cfg: ml_collections.ConfigDict) -> np.ndarray:
  return landscape.log_grid(cfg.eta_low, cfg.eta_high, cfg.num_etas)


def sgd_noise(programs: Programs, variables: common.Variables, pool: Batch,
              cfg: ml_collections.ConfigDict) -> Numbers:
  """F2 at initialisation: C, and the measured noise of |B|-minibatches over α²C/|B| (device).

  Per-example gradients with the pool's BN statistics held fixed (see
  `bnjax.analysis.noise`); minibatches drawn without replacement, for which
  the expected ratio is (N − |B|)/(N − 1). The ratio does not depend on α.
  """
  images, labels = pool
  fixed = programs.pool_statistics(variables, images)
  grads_NxP = jnp.concatenate([programs.per_example(fixed, images[i:i + cfg.noise_chunk],
                                                    labels[i:i + cfg.noise_chunk])
                               for i in range(0, labels.shape[0], cfg.noise_chunk)])
  stats = noise.noise_statistics(grads_NxP, tuple(noise.leaf_sizes(variables["params"])))
  idx = noise.sample_without_replacement(jax.random.key(0), labels.shape[0],
                                         cfg.noise_batch_size, cfg.noise_num_batches)
  measured = noise.minibatch_noise(stats["gram_NxN"], idx).mean()
  bound = noise.sgd_noise_bound(1.0, stats["C"], cfg.noise_batch_size)
  return {"C": stats["C"], "noise_over_bound": measured / bound}


def first_steps(programs: Programs, config: ml_collections.ConfigDict, dataset: data.Dataset,
                variables: common.Variables, lr: float, probe_batch: Batch,
                line_at: tuple[int, ...] = ()) -> Numbers:
  """F1's start: up to `train_steps` SGD steps at constant rate `lr`.

  A rate of `warmup_from_lr` or more runs at `warmup_factor` times itself:
  He et al. (2016) warm ResNet-110 up at 0.01 for its first 400 steps
  before going to 0.1, and these are those steps.

  From `variables`, the member at initialisation. Before the updates of the
  minibatches in `line_at` (1-based), F4's line is measured on that
  minibatch. The probe loss (train mode, on `probe_batch`) is taken before
  and after; a member trains when it never diverged and its probe loss
  fell. A member that diverges is frozen by the step, so the steps stop
  there: `train_loss` has one entry per step taken.
  """
  cfg = config.analysis
  rate = lr * (cfg.warmup_factor if lr >= cfg.warmup_from_lr else 1.0)
  state = train.member_state(variables, programs.tx, rate)
  start = float(programs.probe(train.model_variables(state), *probe_batch)["loss"])
  losses, lines = [], {}
  for step in range(cfg.train_steps):
    batch = data.train_batch(dataset, config.train.data_seed, step, cfg.train_batch_size,
                             config.data.augmentation)
    if step + 1 in line_at:
      at = train.model_variables(state)
      loss, g = programs.gradient(at, *batch)
      losses_E = jax.device_get(line_losses(programs, at, g, batch, _etas(cfg)))
      if np.isfinite(loss):
        lines[step + 1] = relative_line(float(loss), losses_E, _etas(cfg))
    state, metrics = programs.step(state, *batch, jnp.asarray(step, jnp.int32))
    losses.append(float(metrics["train_loss"]))
    if bool(state.diverged):
      break
  end = float(programs.probe(train.model_variables(state), *probe_batch)["loss"])
  diverged = bool(state.diverged)
  return {"lr": lr, "rate": rate, "probe_loss_start": start, "probe_loss_end": end,
          "train_loss": losses,
          "diverged": diverged, "diverged_step": int(state.diverged_step) if diverged else None,
          "trains": (not diverged) and end < start, "lines": lines}


# ---------------------------------------------------------------- the job

_POSITIVE_INTS = ("batch_size", "train_batch_size", "train_steps", "num_etas", "noise_pool_size",
                  "noise_num_batches", "noise_chunk", "matrix_size", "trials", "line_seeds",
                  "grad_chunk")
_POSITIVE_NUMBERS = ("eta_low", "eta_high", "update_lr", "warmup_from_lr", "warmup_factor")


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError with one sentence for the first bad `config.analysis` value."""
  a = config.analysis
  def refuse(condition: bool, message: str) -> None:
    if not condition:
      raise errors.ConfigError(message)
  for field in _POSITIVE_INTS:
    value = a[field]
    refuse(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
           f"config.analysis.{field}={value!r} is not a positive integer; give one >= 1.")
  for field in _POSITIVE_NUMBERS:
    value = a[field]
    refuse(isinstance(value, (int, float)) and not isinstance(value, bool)
           and math.isfinite(value) and value > 0,
           f"config.analysis.{field}={value!r} is not a positive number; give a finite one > 0.")
  refuse(a.eta_low < a.eta_high, f"config.analysis.eta_low={a.eta_low!r} is not below"
                                 f" eta_high={a.eta_high!r}; give 0 < eta_low < eta_high.")
  refuse(a.line_seeds <= len(config.sweep.seeds),
         f"config.analysis.line_seeds={a.line_seeds} exceeds the {len(config.sweep.seeds)}"
         " seeds of config.sweep.seeds; give at most that many.")
  names = tuple(a.inputs)
  refuse(len(names) > 0 and names[0] == DATA_INPUT and set(names) <= set(INPUTS)
         and len(set(names)) == len(names),
         f"config.analysis.inputs={names!r} must start with {DATA_INPUT!r} (the readings the"
         f" verdicts use) and list each of {list(INPUTS)} at most once.")
  refuse(2 <= a.noise_batch_size < a.noise_pool_size,
         f"config.analysis.noise_batch_size={a.noise_batch_size!r} must lie between 2 and"
         f" noise_pool_size - 1 ({a.noise_pool_size - 1}) for minibatches without replacement.")
  refuse(len(tuple(a.ks)) > 0 and all(isinstance(k, int) and k >= 1 for k in a.ks),
         f"config.analysis.ks={tuple(a.ks)!r} must list the number of matrices of each product,"
         " integers >= 1.")
  unknown = [n for n in a.compare_initializers if n not in layers.INITIALIZERS]
  refuse(not unknown, f"config.analysis.compare_initializers names unknown initialisers"
                      f" {unknown}; use names from {sorted(layers.INITIALIZERS)}.")
  norms = [arm.model_config["norm"] for arm in sweep.make_arms(config)]
  refuse(set(norms) == {"batch", "none"},
         f"The reproduction compares BN with no BN, but config.sweep.arms.norm gives {norms};"
         " set it to ('batch', 'none').")
  for norm in norms:
    rate = a.lr_by_norm.get(norm)
    refuse(isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0,
           f"config.analysis.lr_by_norm.{norm}={rate!r} is not a positive rate; give the"
           f" paper's F4 rate (0.1 with BN, 1e-4 without).")


def _load_data(config: ml_collections.ConfigDict) -> tuple[data.Dataset, str]:
  """The config's dataset, or the synthetic one when CIFAR-10 is missing and allowed."""
  try:
    return data.load(config.data), config.data.name
  except data.DataError as e:
    if not config.analysis.fallback_to_synthetic or config.data.name == "synthetic":
      raise
    logging.warning("%s Measuring on the synthetic data instead.", e)
    synthetic = {**config.data.to_dict(), "name": "synthetic"}
    return data.load(synthetic), "synthetic (CIFAR-10 was not prepared)"


def input_batches(config: ml_collections.ConfigDict, dataset: data.Dataset) -> dict[str, Batch]:
  """{input name: (images, labels)}: training batch 0, and each stand-in with its labels.

  A stand-in is drawn from `train.data_seed` (folded with its position), so
  every seed of the model sees the same images, as it sees the same data.
  """
  cfg = config.analysis
  images, labels = data.train_batch(dataset, config.train.data_seed, 0, cfg.batch_size,
                                    config.data.augmentation)
  key = jax.random.key(config.train.data_seed)
  batches = {DATA_INPUT: (images, labels)}
  for i, name in enumerate(cfg.inputs[1:], start=1):
    batches[name] = (inputs.stand_in(name, jax.random.fold_in(key, i), cfg.batch_size), labels)
  return batches


class _Clock:
  """Seconds spent per section, wall-clock and CPU, for the report.

  The CPU seconds (this process, all its threads) change little when other
  work shares the machine; the wall-clock seconds do.
  """

  def __init__(self):
    self.start, self.cpu_start = time.perf_counter(), time.process_time()
    self.sections, self.cpu_sections = {}, {}

  def time(self, name: str, fn: Callable[[], Any]) -> Any:
    begin, cpu_begin = time.perf_counter(), time.process_time()
    out = fn()
    self.sections[name] = time.perf_counter() - begin
    self.cpu_sections[name] = time.process_time() - cpu_begin
    logging.info("reproduce: %s took %.0f s (%.0f s of CPU)", name, self.sections[name],
                 self.cpu_sections[name])
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> Numbers:
  """Measures everything, judges it against `paper.CLAIMS`, writes the JSON and Markdown."""
  check(config)
  clock = _Clock()
  dataset, data_name = _load_data(config)
  workdir_lib.prepare(workdir, config)
  cfg = config.analysis
  batches = input_batches(config, dataset)
  pool = (data.normalize(dataset.train.images_Nx32x32x3[:cfg.noise_pool_size], dataset),
          dataset.train.labels_N[:cfg.noise_pool_size])
  arms = {}
  for arm in sweep.make_arms(config):
    norm = arm.model_config["norm"]
    programs = Programs(sweep.build_model(arm, config), config)
    arms[norm] = clock.time(f"{norm}: at initialisation", functools.partial(
        measure_at_init, programs, config, batches, pool))
    arms[norm]["first_steps"] = clock.time(f"{norm}: first steps", functools.partial(
        measure_first_steps, programs, config, dataset, batches[DATA_INPUT]))
    if norm == "none":
      arms[norm]["initializers"] = clock.time("no BN: initialisers", functools.partial(
          compare_initializers, programs, arm, config, dataset, batches[DATA_INPUT],
          arms[norm]))
  spectra = clock.time("random matrices", lambda: jax.device_get(rm.product_spectra(
      jax.random.key(0), cfg.matrix_size, tuple(cfg.ks), cfg.trials)))
  f8 = {f"f8_max_singular/{k[1:]}": [float(np.max(v))] for k, v in spectra.items()}
  by_input = {name: claims.members(arms, config, name) for name in cfg.inputs}
  members = {**by_input[DATA_INPUT], **f8}
  result = {"data": data_name, "device": _device(), "seconds": clock.sections,
            "cpu_seconds": clock.cpu_sections,
            "total_seconds": time.perf_counter() - clock.start,
            "total_cpu_seconds": time.process_time() - clock.cpu_start,
            "settings": _settings(config),
            "rows": [paper.judge(c, members.get(c.key, [])) for c in paper.CLAIMS],
            "inputs": {name: [paper.judge(c, found[c.key]) for c in paper.CLAIMS
                              if c.figure in report.INPUT_FIGURES and c.key in found]
                       for name, found in by_input.items()},
            "arms": arms}
  if distributed.is_writer():
    workdir_lib.write_analysis(workdir, "reproduction", result)
    with files.replaced(os.path.join(workdir, "reproduction.md")) as f:
      f.write(report.markdown(result))
  return result


def measure_at_init(programs: Programs, config: ml_collections.ConfigDict,
                    batches: dict[str, Batch], pool: Batch) -> Numbers:
  """Every seed of the arm at initialisation on every input, and F2; fetched in one transfer.

  Returns {seeds, init: {input: {reading: [one entry per seed]}}, lines:
  [{seed, eta, relative_loss, first_divergent_eta}] for the first
  `line_seeds` seeds, noise: {C, noise_over_bound: [per seed]}}.
  """
  cfg, seeds = config.analysis, [int(s) for s in config.sweep.seeds]
  pending = []
  for i, seed in enumerate(seeds):
    variables = train.init_variables(programs.model, seed)
    pending.append({**seed_at_init(programs, variables, batches, cfg, i < cfg.line_seeds),
                    "noise": sgd_noise(programs, variables, pool, cfg)})
  fetched = jax.device_get(pending)
  per_seed = lambda get: [get(f) for f in fetched]
  init = {name: {key: per_seed(lambda f: _plain(f[name][key])) for key in fetched[0][name]}
          for name in batches}
  lines = [{"seed": seed, **relative_line(float(f["line"]["loss"]), f["line"]["losses_E"],
                                          _etas(cfg))}
           for seed, f in zip(seeds, fetched) if "line" in f]
  noise_found = {key: per_seed(lambda f: float(f["noise"][key])) for key in fetched[0]["noise"]}
  return {"seeds": seeds, "init": init, "lines": lines, "noise": noise_found}


def _plain(value: Any) -> Any:
  """A fetched number or array as a Python float or list (for the JSON and the judging)."""
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def measure_first_steps(programs: Programs, config: ml_collections.ConfigDict,
                        dataset: data.Dataset, batch: Batch) -> list[Numbers]:
  """F1's first steps of the first seed at every rate, F4's later lines at the arm's F4 rate."""
  cfg = config.analysis
  variables = train.init_variables(programs.model, int(config.sweep.seeds[0]))
  return [first_steps(programs, config, dataset, variables, float(lr), batch,
                      (4, 7) if lr == cfg.lr_by_norm[programs.model.norm] else ())
          for lr in config.sweep.lrs]


def compare_initializers(programs: Programs, arm: sweep.Arm, config: ml_collections.ConfigDict,
                         dataset: data.Dataset, batch: Batch, measured: Numbers
                         ) -> dict[str, Numbers]:
  """The no-BN network at initialisation and over its first steps, per initialiser; first seed.

  The config's own initialiser is the arm already measured: its numbers are
  taken from `measured` (the arm's first seed), not measured twice.
  """
  cfg, found = config.analysis, {}
  seed, lr = int(config.sweep.seeds[0]), float(cfg.lr_by_norm["none"])
  for name in cfg.compare_initializers:
    variables = train.init_variables(make_model({**arm.model_config, "initializer": name}), seed)
    if name == arm.model_config["initializer"]:
      init = {key: values[0] for key, values in measured["init"][DATA_INPUT].items()}
      line = next((l for l in measured["lines"] if l["seed"] == seed), None)
      steps = next((r for r in measured["first_steps"] if r["lr"] == lr), None)
    else:
      fetched = jax.device_get(seed_at_init(programs, variables, {DATA_INPUT: batch}, cfg, True))
      init = {key: _plain(value) for key, value in fetched[DATA_INPUT].items()}
      line = relative_line(float(fetched["line"]["loss"]), fetched["line"]["losses_E"],
                           _etas(cfg))
      steps = None
    if steps is None:
      steps = first_steps(programs, config, dataset, variables, lr, batch)
    found[name] = {"loss": init["loss"], "log10_std_L": init["log10_std_L"],
                   "max_abs_grad": init["max_abs_grad"],
                   "first_divergent_eta": line["first_divergent_eta"] if line else None,
                   "first_steps": {k: v for k, v in steps.items() if k != "lines"}}
  return found


def _settings(config: ml_collections.ConfigDict) -> Numbers:
  cfg = config.analysis
  seeds = [int(s) for s in config.sweep.seeds]
  return {"depth": config.model.depth, "initializer": config.model.initializer,
          "seeds": seeds, "line_seeds": seeds[:cfg.line_seeds], "first_steps_seed": seeds[0],
          "inputs": list(cfg.inputs), "batch_size": cfg.batch_size, "grad_chunk": cfg.grad_chunk,
          "train_batch_size": cfg.train_batch_size, "train_steps": cfg.train_steps,
          "lrs": list(config.sweep.lrs), "etas": _etas(cfg).tolist(),
          "warmup_from_lr": cfg.warmup_from_lr, "warmup_factor": cfg.warmup_factor,
          "update_lr": cfg.update_lr, "noise_pool_size": cfg.noise_pool_size,
          "noise_batch_size": cfg.noise_batch_size, "matrix_size": cfg.matrix_size,
          "momentum": config.train.momentum, "weight_decay": config.train.weight_decay}


def _device() -> str:
  device = jax.devices()[0]
  return (f"{device.device_kind} ({jax.default_backend()}, {os.cpu_count()} CPU cores,"
          f" {platform.machine()}), jax {jax.__version__}")
