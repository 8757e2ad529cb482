"""Random matrices: why deep products of initial weights are ill conditioned.

Bjorck et al. (2018, figure 8, "random matrices") plot the singular values
of products of k i.i.d. Gaussian N×N matrices with entries N(0, 1/N): one
matrix follows the quarter-circle law on [0, 2]; the product of k spreads
to about [0, (k+1)^(k+1)/k^k]^(1/2) with a growing spike at 0. A network at
initialisation multiplies such matrices layer after layer; BN rescales each
layer and so removes the dependence on their conditioning.

`jacobian_singular_values` measures the same thing on a real network: the
singular values of its input-output Jacobian at initialisation.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import forward
from bnjax.analysis import common


def gaussian_product_singular_values(key: jax.Array, n: int, k: int) -> jax.Array:
  """(n,) singular values of W_k ... W_1, each W_i N×N with entries N(0, 1/n).

  `n` and `k` are static. For k = 1 they lie in [0, 2] (quarter circle), for
  larger k their upper edge grows like sqrt((k+1)^(k+1) / k^k).
  """
  w_KxNxN = jax.random.normal(key, (k, n, n)) / jnp.sqrt(n)
  product_NxN = jax.lax.fori_loop(1, k, lambda i, p: w_KxNxN[i] @ p, w_KxNxN[0])
  return jnp.linalg.svd(product_NxN, compute_uv=False)


def product_spectra(key: jax.Array, n: int, ks: tuple[int, ...] = (1, 3, 5),
                    trials: int = 1) -> dict[str, jax.Array]:
  """F8: {"k{k}": (trials * n,) singular values} for each product length k.

  Each k uses its own fold of `key`; `trials` independent products are
  pooled to smooth the histogram.
  """
  spectra = {}
  for k in ks:
    keys = jax.random.split(jax.random.fold_in(key, k), trials)
    values = jax.vmap(lambda kk: gaussian_product_singular_values(kk, n, k))(keys)
    spectra[f"k{k}"] = values.ravel()
  return spectra


def network_jacobian(model: nn.Module, variables: common.Variables, images_BxHxWxC: jax.Array,
                     chunk: int = 16) -> jax.Array:
  """(B*K, B*H*W*C) Jacobian of the batch's logits with respect to its images.

  Taken in train mode, where BN mixes the examples of a batch, so the
  whole batch is one input: B*K rows, one vector-Jacobian product each,
  computed `chunk` at a time. The number of rows, not the input size, sets
  the cost, which is what keeps this tractable for a ResNet. All NaN when
  the forward pass overflowed.
  """
  def logits(x):
    out, _, finite = forward.apply(model, variables, x, train=True, mutable=["batch_stats"])
    return out.ravel(), finite
  out, vjp, finite = jax.vjp(logits, images_BxHxWxC, has_aux=True)
  rows = jnp.eye(out.shape[0], dtype=out.dtype)
  jacobian = jax.lax.map(lambda r: vjp(r)[0].ravel(), rows, batch_size=chunk)
  return jnp.where(finite, jacobian, jnp.nan)


def jacobian_singular_values(model: nn.Module, variables: common.Variables,
                             images_BxHxWxC: jax.Array, chunk: int = 16) -> dict[str, jax.Array]:
  """Singular values (B*K,) of `network_jacobian`, largest first, and their spread.

  Returns "singular_values", "log10_condition" (log10 of largest over
  smallest) and "log10_max_over_median". The absolute scale differs by
  orders of magnitude between BN and no-BN networks; the spread is what
  the figure compares.
  """
  s = jnp.linalg.svd(network_jacobian(model, variables, images_BxHxWxC, chunk),
                     compute_uv=False)
  tiny = jnp.finfo(s.dtype).tiny
  return {"singular_values": s,
          "log10_condition": jnp.log10(s[0] / jnp.maximum(s[-1], tiny)),
          "log10_max_over_median": jnp.log10(s[0] / jnp.maximum(jnp.median(s), tiny))}
