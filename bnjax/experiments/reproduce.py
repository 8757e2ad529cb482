"""The `reproduce` job: the paper's numbers at the paper's size, measured and judged.

    python -m bnjax.main --config=configs/reproduce.py --workdir=DIR

For ResNet-110 with and without BN (seed `sweep.seeds[0]`) it measures, at
initialisation on training batch 0 (`analysis.batch_size`, 128 as in the
paper): F3's layer-55 weight gradients, F4's relative loss along the
gradient, F5's channel variances along a diverging SGD step, F6's channel
moments, F7's output gradients and F2's SGD noise against its bound; F8's
random matrix products; and F1's first `analysis.train_steps` SGD steps at
each of the paper's rates (batch `analysis.train_batch_size`, constant
rate), measuring F4 again before minibatches 4 and 7 of the members at the
paper's F4 rates. Each number is set against the paper's reading
(`bnjax.paper`) with a verdict. The no-BN network is also measured with
every initialiser of `analysis.compare_initializers`, the evidence for
the default initialiser. Outputs: DIR/analysis/reproduction.json and
DIR/reproduction.md.

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

from bnjax import data, distributed, files, forward, paper, sweep, train
from bnjax import workdir as workdir_lib
from bnjax.analysis import activations as act, common, gradients as grad, landscape, noise
from bnjax.analysis import random_matrix as rm
from bnjax.models import make_model

Numbers = dict[str, Any]


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
  }


def gradient(model, variables: common.Variables, images_BxHxWxC: jax.Array,
             labels_B: jax.Array) -> Numbers:
  """The train-mode loss, ∂L/∂θ and ∂L/∂logits (B, K) of a batch; NaN on overflow."""
  loss, grads = common.loss_and_grad(model, variables, images_BxHxWxC, labels_B)
  return {"loss": loss, "grads": grads,
          "output_grad_BxK": grad.output_gradient(model, variables, images_BxHxWxC, labels_B)}


class Programs:
  """One arm's jitted probe, gradient and train step, each compiled once per shape.

  The model's initialiser plays no part in `apply`, so these also measure
  variables drawn with another initialiser.
  """

  def __init__(self, model, config: ml_collections.ConfigDict):
    self.model = model
    self.tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
    constant = {**config.train.to_dict(), "lr_boundaries": (), "warmup_steps": 0}
    self.probe = jax.jit(functools.partial(probe, model))
    self.gradient = jax.jit(functools.partial(gradient, model))
    self.step = jax.jit(functools.partial(train.member_step, model, self.tx, constant))


def paper_layer(layer: int, depth: int) -> int:
  """The weight layer of a depth-`depth` ResNet at the relative depth of ResNet-110's `layer`."""
  return max(1, min(depth, round(layer * depth / 110)))


def _moved(variables: common.Variables, direction: Any, scale: float) -> common.Variables:
  """`variables` with params θ + scale·direction."""
  params = jax.tree.map(lambda p, d: p + scale * d, variables["params"], direction)
  return {**variables, "params": params}


# ---------------------------------------------------------------- measurements


def relative_loss_line(programs: Programs, variables: common.Variables, grads: Any,
                       batch: tuple[jax.Array, jax.Array], etas: np.ndarray,
                       loss: float) -> Numbers:
  """F4: L(θ − ηg)/L(θ) for each η, and the first η past the paper's 1e3."""
  losses = [float(programs.probe(_moved(variables, grads, -eta), *batch)["loss"]) for eta in etas]
  relative = np.asarray(losses) / loss
  divergent = ~(relative <= landscape.DIVERGENCE_THRESHOLD)
  first = float(etas[np.argmax(divergent)]) if divergent.any() else math.inf
  return {"eta": etas, "relative_loss": relative, "first_divergent_eta": first}


def at_initialisation(programs: Programs, variables: common.Variables,
                      batch: tuple[jax.Array, jax.Array], cfg: ml_collections.ConfigDict
                      ) -> Numbers:
  """F3, F4 (minibatch 1), F5, F6 and F7 of one member at initialisation."""
  probed = jax.device_get(programs.probe(variables, *batch))
  g = programs.gradient(variables, *batch)
  kernels = common.conv_kernels(g["grads"], programs.model)
  layer_values = np.asarray(kernels[paper_layer(55, programs.model.depth) - 1][1])
  out = {"loss": float(probed["loss"]), "gradient_loss": float(g["loss"]),
         "finite": bool(probed["finite"]) and bool(np.isfinite(g["loss"])),
         "log10_abs_mean_L": probed["log10_abs_mean_L"], "log10_std_L": probed["log10_std_L"],
         "max_abs_grad": float(np.max(np.abs(layer_values))),
         "grad_std": float(np.std(layer_values)),
         "same_class_share": float(
             grad.input_independence(g["output_grad_BxK"])["same_class_share"])}
  if out["finite"]:
    out["line"] = relative_loss_line(programs, variables, g["grads"], batch, _etas(cfg),
                                     out["loss"])
    step = jax.tree.map(lambda d: -cfg.update_lr * d, g["grads"])
    out["update_log10_max_var"] = {
        s: jax.device_get(programs.probe(_moved(variables, step, s), *batch)["log10_max_var_L"])
        for s in cfg.update_fractions}
  return out


def _etas(cfg: ml_collections.ConfigDict) -> np.ndarray:
  return landscape.log_grid(cfg.eta_low, cfg.eta_high, cfg.num_etas)


def first_steps(programs: Programs, config: ml_collections.ConfigDict, dataset: data.Dataset,
                variables: common.Variables, lr: float, probe_batch: tuple[jax.Array, jax.Array],
                line_at: tuple[int, ...] = ()) -> Numbers:
  """F1's start: `train_steps` SGD steps at constant rate `lr`.

  A rate of `warmup_from_lr` or more runs at `warmup_factor` times itself:
  He et al. (2016) warm ResNet-110 up at 0.01 for its first 400 steps
  before going to 0.1, and these are those steps.

  From `variables`, the member at initialisation. Before the updates of the minibatches in `line_at`
  (1-based), F4's line is measured on that minibatch. The probe loss (train
  mode, on `probe_batch`) is taken before and after; a member trains when
  it never diverged and its probe loss fell.
  """
  cfg = config.analysis
  rate = lr * (cfg.warmup_factor if lr >= cfg.warmup_from_lr else 1.0)
  state = train.member_state(variables, programs.tx, rate)
  start = float(programs.probe(train.model_variables(state), *probe_batch)["loss"])
  losses, lines = [], {}
  for step in range(cfg.train_steps):
    batch = data.train_batch(dataset, config.train.data_seed, step, cfg.train_batch_size,
                             config.data.augmentation)
    if step + 1 in line_at and not bool(state.diverged):
      at = train.model_variables(state)
      g = programs.gradient(at, *batch)
      if np.isfinite(g["loss"]):
        lines[step + 1] = relative_loss_line(programs, at, g["grads"], batch, _etas(cfg),
                                             float(g["loss"]))
    state, metrics = programs.step(state, *batch, jnp.asarray(step, jnp.int32))
    losses.append(float(metrics["train_loss"]))
  end = float(programs.probe(train.model_variables(state), *probe_batch)["loss"])
  diverged = bool(state.diverged)
  return {"lr": lr, "rate": rate, "probe_loss_start": start, "probe_loss_end": end,
          "train_loss": losses,
          "diverged": diverged, "diverged_step": int(state.diverged_step) if diverged else None,
          "trains": (not diverged) and end < start, "lines": lines}


def sgd_noise(programs: Programs, variables: common.Variables,
              pool: tuple[jax.Array, jax.Array], cfg: ml_collections.ConfigDict) -> Numbers:
  """F2 at initialisation: C, and the measured noise of |B|-minibatches over α²C/|B|.

  Per-example gradients with the pool's BN statistics held fixed (see
  `bnjax.analysis.noise`); minibatches drawn without replacement, for which
  the expected ratio is (N − |B|)/(N − 1). The ratio does not depend on α.
  """
  images, labels = pool
  fixed = jax.jit(functools.partial(noise.pool_statistics, programs.model))(variables, images)
  per_example = jax.jit(lambda v, x, y: noise.per_example_grads(
      noise.separable_loss(programs.model, v), v["params"], x, y))
  grads_NxP = jnp.concatenate([per_example(fixed, images[i:i + cfg.noise_chunk],
                                           labels[i:i + cfg.noise_chunk])
                               for i in range(0, labels.shape[0], cfg.noise_chunk)])
  stats = noise.noise_statistics(grads_NxP, tuple(noise.leaf_sizes(variables["params"])))
  idx = noise.sample_without_replacement(jax.random.key(0), labels.shape[0],
                                         cfg.noise_batch_size, cfg.noise_num_batches)
  measured = float(noise.minibatch_noise(stats["gram_NxN"], idx).mean())
  bound = float(noise.sgd_noise_bound(1.0, stats["C"], cfg.noise_batch_size))
  return {"C": float(stats["C"]), "noise_over_bound": measured / bound,
          "expected_ratio": (labels.shape[0] - cfg.noise_batch_size) / (labels.shape[0] - 1)}


# ---------------------------------------------------------------- the job


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


class _Clock:
  """Seconds spent per section, for the report."""

  def __init__(self):
    self.start, self.sections = time.perf_counter(), {}

  def time(self, name: str, fn: Callable[[], Any]) -> Any:
    begin = time.perf_counter()
    out = fn()
    self.sections[name] = time.perf_counter() - begin
    logging.info("reproduce: %s took %.0f s", name, self.sections[name])
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> Numbers:
  """Measures everything, judges it against `paper.CLAIMS`, writes the JSON and Markdown."""
  clock = _Clock()
  dataset, data_name = _load_data(config)
  workdir_lib.prepare(workdir, config)
  cfg = config.analysis
  batch = data.train_batch(dataset, config.train.data_seed, 0, cfg.batch_size,
                           config.data.augmentation)
  pool = (data.normalize(dataset.train.images_Nx32x32x3[:cfg.noise_pool_size], dataset),
          dataset.train.labels_N[:cfg.noise_pool_size])
  arms = {}
  for arm in sweep.make_arms(config):
    norm = arm.model_config["norm"]
    programs = Programs(sweep.build_model(arm, config), config)
    arms[norm] = clock.time(f"{norm}: measurements", functools.partial(
        _measure_arm, programs, config, dataset, batch, pool))
    if norm == "none":
      arms[norm]["initializers"] = clock.time("no BN: initialisers", functools.partial(
          _compare_initializers, programs, arm, config, dataset, batch))
  spectra = clock.time("random matrices", lambda: jax.device_get(rm.product_spectra(
      jax.random.key(0), cfg.matrix_size, tuple(cfg.ks), cfg.trials)))
  measured = {**_claim_values(arms, config),
              **{f"f8_max_singular/{k[1:]}": float(np.max(v)) for k, v in spectra.items()}}
  rows = [{**vars(c), "measured": measured.get(c.key),
           "verdict": paper.verdict(c, measured.get(c.key))} for c in paper.CLAIMS]
  result = {"data": data_name, "device": _device(), "seconds": clock.sections,
            "total_seconds": time.perf_counter() - clock.start, "settings": _settings(config),
            "rows": rows, "arms": arms}
  if distributed.is_writer():
    workdir_lib.write_analysis(workdir, "reproduction", result)
    with files.replaced(os.path.join(workdir, "reproduction.md")) as f:
      f.write(markdown(result))
  return result


def _measure_arm(programs: Programs, config: ml_collections.ConfigDict, dataset: data.Dataset,
                 batch: tuple, pool: tuple) -> Numbers:
  """Everything of one arm: at initialisation, F2, and F1's first steps at every rate."""
  cfg = config.analysis
  variables = train.init_variables(programs.model, int(config.sweep.seeds[0]))
  norm = programs.model.norm
  out = {"init": at_initialisation(programs, variables, batch, cfg),
         "noise": sgd_noise(programs, variables, pool, cfg), "first_steps": []}
  for lr in config.sweep.lrs:
    line_at = (4, 7) if lr == cfg.lr_by_norm[norm] else ()
    out["first_steps"].append(
        first_steps(programs, config, dataset, variables, float(lr), batch, line_at))
  return out


def _compare_initializers(programs: Programs, arm: sweep.Arm, config: ml_collections.ConfigDict,
                          dataset: data.Dataset, batch: tuple) -> dict[str, Numbers]:
  """The no-BN network at initialisation and over its first steps, per initialiser."""
  cfg, found = config.analysis, {}
  for name in cfg.compare_initializers:
    model = make_model({**arm.model_config, "initializer": name})
    variables = train.init_variables(model, int(config.sweep.seeds[0]))
    init = at_initialisation(programs, variables, batch, cfg)
    steps = first_steps(programs, config, dataset, variables, float(cfg.lr_by_norm["none"]),
                        batch)
    found[name] = {"loss": init["loss"], "log10_std_L": init["log10_std_L"],
                   "max_abs_grad": init["max_abs_grad"],
                   "first_divergent_eta": init.get("line", {}).get("first_divergent_eta"),
                   "first_steps": {k: v for k, v in steps.items() if k != "lines"}}
  return found


# ---------------------------------------------------------------- judging and writing

F6_LAYERS = tuple(range(6, 110, 12)) + (110,)  # the paper's F6 points: 6, 18, ..., 102, 110


def _claim_values(arms: dict[str, Numbers], config: ml_collections.ConfigDict
                  ) -> dict[str, float]:
  """The measured number behind each `paper.CLAIMS` key (absent where not measured)."""
  depth, values = config.model.depth, {}
  at = lambda k: paper_layer(k, depth) - 1
  for norm, arm in arms.items():
    init = arm["init"]
    for run in arm["first_steps"]:
      values[f"f1_trains/{norm}/{run['lr']:g}"] = float(run["trains"])
    values[f"f2_noise_over_bound/{norm}"] = arm["noise"]["noise_over_bound"]
    values[f"f3_max_abs_grad/{norm}"] = _log10(init["max_abs_grad"])
    values[f"f7_same_class_share/{norm}"] = init["same_class_share"]
    lines = {1: init.get("line")}
    lines.update(next((r["lines"] for r in arm["first_steps"]
                       if r["lr"] == config.analysis.lr_by_norm[norm]), {}))
    for minibatch, line in lines.items():
      if line is None:
        continue
      values[f"f4_first_divergent_eta/{norm}/{minibatch}"] = line["first_divergent_eta"]
      values[f"f4_max_relative_loss/{norm}/{minibatch}"] = float(np.max(line["relative_loss"]))
      values[f"f4_min_relative_loss/{norm}/{minibatch}"] = float(np.min(line["relative_loss"]))
    for name in ("log10_abs_mean", "log10_std"):
      per_layer = np.asarray(init[f"{name}_L"])
      points = per_layer[[at(k) for k in F6_LAYERS]]
      values[f"f6_{name}_range/{norm}"] = float(np.max(points) - np.min(points))
      for k in (6, 110):
        values[f"f6_{name}/{norm}/{k}"] = float(per_layer[at(k)])
  if "batch" in arms and "none" in arms:
    values["f3_spread_ratio"] = (values["f3_max_abs_grad/none"]
                                 - values["f3_max_abs_grad/batch"])
  update = arms.get("none", {}).get("init", {}).get("update_log10_max_var", {})
  if 1.0 in update:
    for k in (8, 44, 80):
      values[f"f5_log10_max_var/{k}"] = float(update[1.0][at(k)])
  return values


def _log10(x: float) -> float:
  return math.log10(x) if x > 0 and math.isfinite(x) else math.nan


def _settings(config: ml_collections.ConfigDict) -> Numbers:
  cfg = config.analysis
  return {"depth": config.model.depth, "initializer": config.model.initializer,
          "seed": int(config.sweep.seeds[0]), "batch_size": cfg.batch_size,
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


def _number(x: Any) -> str:
  """A measured value for the table: 3 significant digits, "—" where there is none."""
  if x is None:
    return "—"
  x = float(x)
  if math.isnan(x):
    return "NaN"
  if math.isinf(x):
    return "none on the grid" if x > 0 else "−inf"
  return f"{x:.3g}"


def markdown(result: Numbers) -> str:
  """The report as Markdown: settings, the verdict table, the initialisers, F1's steps, time."""
  s = result["settings"]
  counts = {v: sum(r["verdict"] == v for r in result["rows"])
            for v in ("agrees", "differs", "not measured")}
  lines = [
      "# Reproduction report: Bjorck et al. (2018) at the paper's size", "",
      "Written by `python -m bnjax.main --config=configs/reproduce.py --workdir=DIR`"
      f" on {result['device']} in {result['total_seconds'] / 60:.1f} minutes.", "",
      f"ResNet-{s['depth']}, initialiser `{s['initializer']}`, seed {s['seed']}, data:"
      f" {result['data']}. At initialisation (F3–F7): training batch 0 of {s['batch_size']}"
      f" images. F1's first steps: {s['train_steps']} SGD steps at each rate, batch"
      f" {s['train_batch_size']}, constant rate, except that rates of {s['warmup_from_lr']:g}"
      f" and more run at {s['warmup_factor']:g}× (He et al.'s ResNet-110 warm-up), momentum"
      f" {s['momentum']}, weight decay {s['weight_decay']}; a member *trains* when it never"
      " diverged and its train-mode loss on batch 0 fell. F4's minibatches 4 and 7 are those"
      f" of the members at the paper's F4 rates, batch {s['train_batch_size']}. η grid:"
      f" {len(s['etas'])} points from {s['etas'][0]:g} to {s['etas'][-1]:g}. F5: the step"
      f" −{s['update_lr']:g}·g. F2: {s['noise_pool_size']} pooled examples, minibatches of"
      f" {s['noise_batch_size']}. F8: {s['matrix_size']}×{s['matrix_size']} matrices.", "",
      f"**{counts['agrees']} of {len(result['rows'])} readings agree, {counts['differs']}"
      f" differ, {counts['not measured']} could not be measured.** A band is the paper's"
      " reading with its own reading error, never widened to let a measurement pass"
      " (`bnjax/paper.py`).", "",
      "| figure | quantity | paper | band | measured | verdict |",
      "|---|---|---|---|---|---|"]
  for r in result["rows"]:
    band = f"{_number(r['low'])} … {_number(r['high'])}"
    cells = (r["figure"], r["what"], r["reading"], band, _number(r["measured"]), r["verdict"])
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  lines += _differences(result) + _initializer_table(result) + _first_steps_table(result)
  lines += ["", "## Time", "", "| section | seconds |", "|---|---|"]
  lines += [f"| {name} | {seconds:.0f} |" for name, seconds in result["seconds"].items()]
  return "\n".join(lines) + "\n"


def _differences(result: Numbers) -> list[str]:
  """The readings that differ, grouped by what is known of why."""
  by_note: dict[str, list[str]] = {}
  for r in result["rows"]:
    if r["verdict"] != "agrees":
      by_note.setdefault(r["note"] or "Not explained.", []).append(
          f"{r['figure']} {r['what']} ({_number(r['measured'])})")
  if not by_note:
    return []
  lines = ["", "## Where the measurement differs, and why", ""]
  for note, readings in by_note.items():
    lines.append(f"- {'; '.join(readings)}. {note}")
  return lines


def _initializer_table(result: Numbers) -> list[str]:
  found = result["arms"].get("none", {}).get("initializers", {})
  if not found:
    return []
  lines = ["", "## The no-BN network under each initialiser", "",
           "Same seed, batch and measurements as above; the first steps are at the no-BN F4"
           " rate.", "",
           "| initialiser | loss at init | log10 channel std, first → last layer |"
           " max \\|∂L/∂w\\|, F3 layer | first η past 1e3 (F4) | first steps: probe loss |",
           "|---|---|---|---|---|---|"]
  for name, f in found.items():
    steps = f["first_steps"]
    outcome = (f"diverged at step {steps['diverged_step']}" if steps["diverged"] else
               f"{_number(steps['probe_loss_start'])} → {_number(steps['probe_loss_end'])}")
    stds = f["log10_std_L"]
    lines.append(f"| `{name}` | {_number(f['loss'])} | {_number(stds[0])} → {_number(stds[-1])} |"
                 f" {_number(f['max_abs_grad'])} | {_number(f['first_divergent_eta'])} |"
                 f" {outcome} |")
  return lines


def _first_steps_table(result: Numbers) -> list[str]:
  lines = ["", "## F1: the first steps", "",
           "| norm | lr | rate of these steps | probe loss, start → end |"
           " train loss, first → last step | diverged |",
           "|---|---|---|---|---|---|"]
  for norm, arm in result["arms"].items():
    for run in arm["first_steps"]:
      losses = run["train_loss"]
      diverged = f"at step {run['diverged_step']}" if run["diverged"] else "no"
      lines.append(f"| {norm} | {run['lr']:g} | {run['rate']:g} |"
                   f" {_number(run['probe_loss_start'])} →"
                   f" {_number(run['probe_loss_end'])} | {_number(losses[0])} →"
                   f" {_number(losses[-1])} | {diverged} |")
  return lines
