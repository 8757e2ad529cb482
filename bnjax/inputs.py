"""Input batches that stand in for a data set when a network is measured at initialisation.

The model normally sees `data.normalize`d images: each channel standardised
with the training set's per-channel mean and std, so that over the data set
every channel has mean 0 and std 1. A stand-in drawn "at CIFAR-10's
per-channel mean and std" and normalised with CIFAR-10's statistics is
therefore, to the model, an input with per-channel mean 0 and std 1; the
stand-ins here are drawn in that normalised space directly, and differ only
in how the pixels of an image are correlated:

* `gaussian`: i.i.d. N(0, 1) pixels, a flat (white) power spectrum.
* `pink`: Gaussian images whose power falls as 1/f² with spatial frequency
  f, the classic second-order model of natural images (Field 1987; van der
  Schaaf & van Hateren 1996): large smooth structures, little fine detail.
  Channels are drawn independently.

Each is a pure function of a PRNG key, so a measurement on it is repeatable.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bnjax import data

STAND_INS = ("gaussian", "pink")


def gaussian(key: jax.Array, batch: int) -> jax.Array:
  """(batch, 32, 32, 3) float32 of i.i.d. N(0, 1): white noise in the model's input space."""
  return jax.random.normal(key, (batch, *data.IMAGE_SHAPE), jnp.float32)


def pink_amplitude(size: int = data.IMAGE_SHAPE[0]) -> jax.Array:
  """(size, size) Fourier amplitudes 1/|f|, f in cycles per image, scaled to mean square 1.

  The constant term (f = 0) gets the amplitude of the lowest frequency
  (|f| = 1) rather than an infinite one, so images differ in overall
  brightness by about as much as in their coarsest structure. With mean
  square 1 the images have pixel variance 1 (Parseval).
  """
  f = jnp.fft.fftfreq(size, 1.0 / size)  # cycles per image: 0, 1, ..., -1
  radius_SxS = jnp.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
  amplitude_SxS = 1.0 / jnp.maximum(radius_SxS, 1.0)
  return amplitude_SxS / jnp.sqrt(jnp.mean(amplitude_SxS**2))


def pink(key: jax.Array, batch: int) -> jax.Array:
  """(batch, 32, 32, 3) float32 Gaussian images with a 1/f² power spectrum, per-pixel N(0, 1).

  White Gaussian noise filtered in the Fourier domain by `pink_amplitude`:
  the filter is real and symmetric (A(f) = A(−f)), so the images are real,
  Gaussian, stationary, and each pixel of each channel has mean 0 and
  variance 1 over the ensemble, the moments of a normalised data set.
  """
  size = data.IMAGE_SHAPE[0]
  white_BxCxSxS = jax.random.normal(key, (batch, data.IMAGE_SHAPE[2], size, size), jnp.float32)
  filtered = jnp.fft.ifft2(jnp.fft.fft2(white_BxCxSxS) * pink_amplitude(size)[None, None]).real
  return jnp.transpose(filtered, (0, 2, 3, 1)).astype(jnp.float32)


GENERATORS: dict[str, Callable[[jax.Array, int], jax.Array]] = {"gaussian": gaussian,
                                                                 "pink": pink}


def stand_in(name: str, key: jax.Array, batch: int) -> jax.Array:
  """The stand-in called `name` (one of `STAND_INS`); ValueError names the valid ones."""
  if name not in GENERATORS:
    raise ValueError(f"Unknown stand-in input {name!r}; use one of {list(STAND_INS)}.")
  return GENERATORS[name](key, batch)


def radial_power(images_BxSxSxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(frequencies F, mean power F): the images' power spectrum averaged over rings of |f|.

  Rings of width one cycle per image, from 1 to size/2 (the highest
  frequency along an axis); the mean over images, channels and the ring.
  What a test of `pink` (power ∝ 1/f²) and `gaussian` (flat) reads.
  """
  size = images_BxSxSxC.shape[1]
  power = jnp.abs(jnp.fft.fft2(jnp.moveaxis(images_BxSxSxC, -1, 1))) ** 2
  power_SxS = jnp.mean(power, axis=(0, 1))
  f = jnp.fft.fftfreq(size, 1.0 / size)
  ring_SxS = jnp.round(jnp.sqrt(f[:, None] ** 2 + f[None, :] ** 2)).astype(jnp.int32)
  rings = jnp.arange(1, size // 2 + 1)
  mean_F = jnp.stack([jnp.sum(jnp.where(ring_SxS == r, power_SxS, 0.0)) / jnp.sum(ring_SxS == r)
                      for r in rings])
  return rings.astype(jnp.float32), mean_F
