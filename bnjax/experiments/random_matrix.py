"""F8: singular values of random matrix products, and of the network's input-output Jacobian.

Products of k = 1, 3, 5 i.i.d. Gaussian matrices (matrix_size x matrix_size,
entries N(0, 1/matrix_size), `trials` products pooled per k), and the
singular values of each member's Jacobian: the logits of `jacobian_batch`
training images with respect to those images, in train mode (BN couples the
batch), `chunk` vector-Jacobian products at a time. Members: every arm x
seed at initialisation (`python -m bnjax.main
--config=configs/random_matrix.py`), or one seed's members of a trained
sweep (`python -m bnjax.analyze --analyses=random_matrix`). Writes
DIR/analysis/<stem>.json ({matrix_size, trials, products, jacobian_batch,
step, jacobian: [{arm, seed, step[, lr, member], ...}]}) and the figure
<stem>_f8.
"""

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnjax import data, plots, workdir as workdir_lib
from bnjax.analysis import random_matrix as rm
from bnjax.experiments import _members

RECORDINGS = ()  # the network's Jacobian only


def defaults() -> ml_collections.ConfigDict:
  """The paper's sizes: 1024 x 1024 matrices; 16 images (160 singular values) for the Jacobian."""
  return ml_collections.ConfigDict(dict(
      matrix_size=1024, ks=(1, 3, 5), trials=1, matrix_seed=0, jacobian_batch=16, chunk=16))


def products(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Per k ("k1", ...): the pooled singular values, their maximum and share below 0.1."""
  a = config.analysis
  spectra = jax.jit(lambda key: rm.product_spectra(key, a.matrix_size, tuple(a.ks), a.trials))(
      jax.random.key(a.matrix_seed))
  return {k: {"singular_values": v, "max": float(jnp.max(v)),
              "share_below_0.1": float(jnp.mean(v < 0.1))} for k, v in spectra.items()}


def measure(config: ml_collections.ConfigDict, subjects: Iterable[_members.Subject],
            dataset: data.Dataset, step: int, seed: int | None = None) -> dict[str, Any]:
  """The products' spectra and every subject's Jacobian spectrum.

  On the first `jacobian_batch` images of training batch `step`, the one the
  subjects (all at that step) train on next.
  """
  a = config.analysis
  images, _ = _members.train_batch(config, dataset, step, a.jacobian_batch, seed=seed)
  spectrum = lambda model, variables, x: rm.jacobian_singular_values(model, variables, x, a.chunk)
  jacobian = [{**subject.identity(), **out}
              for subject, out in _members.measure_each(subjects, spectrum, images)]
  return {"matrix_size": a.matrix_size, "trials": a.trials, "products": products(config),
          "jacobian_batch": a.jacobian_batch, "step": step, "setting": plots.setting(config),
          "jacobian": jacobian}


def figures(result: dict[str, Any], workdir: str, stem: str) -> list[str]:
  """The F8 figure."""
  path = workdir_lib.figure_path(workdir, f"{stem}_f8")
  random_matrix_figure(result, path, _members.when(result["step"]))
  return [path]


def random_matrix_figure(results: dict, path: str, when: str) -> None:
  """F8: singular values of products of k Gaussian matrices; the network Jacobian's.

  Top row: one histogram per k (density). Bottom row: the Jacobian's
  singular values of every arm, as they are and divided by the largest,
  largest first on a log axis.
  """
  products = results["products"]
  arms = plots.by_arm(results["jacobian"])
  cols = max(len(products), 2)
  fig, axes = plots.subplots(2, cols, figsize=(4.2 * cols, 7), squeeze=False)
  for ax, (name, p) in zip(axes[0], products.items()):
    s = plots.as_float(p["singular_values"])
    ax.hist(s, bins=60, density=True, color="C0")
    ax.set_title(f"k = {name[1:]} Gaussian matrices (N={results['matrix_size']})", fontsize=10)
    ax.set_xlabel("singular value")
    ax.set_ylabel("density")
  sorted_ax, spread_ax = axes[1][0], axes[1][1]
  for i, (arm, records) in enumerate(arms.items()):
    for j, r in enumerate(records):
      s = plots.as_float(r["singular_values"])
      label = f"{arm} (log10 cond {plots.number(r['log10_condition'], '.2f')})" if j == 0 else None
      alpha = 1.0 if j == 0 else 0.4
      sorted_ax.plot(np.arange(1, len(s) + 1), s, "o-", ms=2, color=f"C{i}", alpha=alpha,
                     label=label)
      spread_ax.plot(np.arange(1, len(s) + 1), s / np.nanmax(s), "o-", ms=2, color=f"C{i}",
                     alpha=alpha, label=label)
  for ax, what in ((sorted_ax, "singular value"), (spread_ax, "singular value / largest")):
    ax.set_yscale("log")
    ax.set_xlabel("index (largest first)")
    ax.set_ylabel(what)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  sorted_ax.set_title("Network Jacobian (logits w.r.t. images)", fontsize=10)
  spread_ax.set_title("Network Jacobian, normalised by the largest", fontsize=10)
  for ax in list(axes[0][len(products):]) + list(axes[1][2:]):
    ax.axis("off")
  plots.save(fig, path, "Singular values: random matrix products and the network's input-output"
             f" Jacobian {when}, {results['jacobian_batch']} images", results.get("setting"))


run, from_checkpoint = _members.entry_points("random_matrix", measure, figures)
