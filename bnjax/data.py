"""CIFAR-10 (TFDS) and a learnable synthetic stand-in, kept on the device.

A `Dataset` holds uint8 images and int32 labels as device arrays plus the
per-channel mean and std of its training images. Batches are cut and
augmented inside jitted code by `train_batch`, a pure function of
(data seed, step): any member, any resumed run, any executor sees the same
batch t.
"""

import dataclasses
import importlib.util
import os
import socket
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import errors

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CROP_PADDING = 4


class DataError(errors.BnjaxError):
  """The dataset cannot be provided; the message says why and what to do."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Split:
  """One split on the device: images (N, 32, 32, 3) uint8, labels (N,) int32."""

  images_Nx32x32x3: jax.Array
  labels_N: jax.Array

  @property
  def size(self) -> int:
    return self.labels_N.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits plus the train set's per-channel mean and std (3,)."""

  train: Split
  test: Split
  mean_C: jax.Array
  std_C: jax.Array


def _channel_stats(images_Nx32x32x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (3,) of uint8 images, scaled to [0, 1].

  From each channel's 256-bin histogram, in float64: the same float32
  numbers as from the pixels themselves, ~10x faster on CIFAR-10's 50k
  images (no float64 copy of 150M pixels).
  """
  pixels_Px3 = images_Nx32x32x3.reshape(-1, 3)
  levels = np.arange(256, dtype=np.float64) / 255.0
  counts_3x256 = np.stack([np.bincount(pixels_Px3[:, c], minlength=256) for c in range(3)])
  weights = counts_3x256 / pixels_Px3.shape[0]
  mean_3 = weights @ levels
  var_3 = (weights * np.square(levels[None] - mean_3[:, None])).sum(axis=1)
  return mean_3.astype(np.float32), np.sqrt(var_3).astype(np.float32)


def from_numpy(train: tuple[np.ndarray, np.ndarray],
               test: tuple[np.ndarray, np.ndarray]) -> Dataset:
  """Puts (images uint8, labels) pairs on the device as a `Dataset`."""
  mean, std = _channel_stats(train[0])
  to_split = lambda pair: Split(jnp.asarray(pair[0], jnp.uint8),
                                jnp.asarray(pair[1], jnp.int32))
  return Dataset(to_split(train), to_split(test), jnp.asarray(mean), jnp.asarray(std))


# ---------------------------------------------------------------- synthetic


def synthetic_split(seed: int, size: int, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
  """A CIFAR-shaped split with learnable class structure, as numpy uint8.

  Each class has a fixed smooth colour pattern (a sum of a few random
  low-frequency sinusoids per channel, shared across splits through a fixed
  template seed). An image is its class pattern, randomly shifted
  (circularly, up to 8 pixels), scaled in contrast, plus pixel noise. A
  convolutional network must learn translation-tolerant features to classify
  it, but a small ResNet gets well above chance within a few hundred steps.
  """
  templates = _class_templates()
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=size)
  shifts = rng.integers(-8, 9, size=(size, 2))
  contrast = rng.uniform(0.6, 1.4, size=(size, 1, 1, 1))
  # The circular shift: output pixel (y, x) is template pixel (y - shift_y,
  # x - shift_x) mod 32, i.e. the 32x32 window at offset (-shift mod 32) of the
  # template tiled 2x2.
  windows_10x33x33x3x32x32 = np.lib.stride_tricks.sliding_window_view(
      np.tile(templates, (1, 2, 2, 1)), (32, 32), axis=(1, 2))
  offsets_Nx2 = -shifts % 32
  # In chunks through two reused float64 buffers: the noise is drawn in the
  # same order, so the numbers are those of one whole-split draw, without
  # first touching ~1 GB of fresh float64 arrays (seconds at the smoke size).
  images = np.empty((size, 32, 32, 3), np.uint8)
  chunk = max(1, min(size, 512))
  pixels, pixel_noise = np.empty((chunk, 32, 32, 3)), np.empty((chunk, 32, 32, 3))
  for start in range(0, size, chunk):
    part = slice(start, min(start + chunk, size))
    x, z = pixels[:part.stop - start], pixel_noise[:part.stop - start]
    np.copyto(x.transpose(0, 3, 1, 2),
              windows_10x33x33x3x32x32[labels[part], offsets_Nx2[part, 0], offsets_Nx2[part, 1]])
    x *= contrast[part]
    rng.standard_normal(out=z)
    z *= noise
    x += z
    x *= 50.0
    x += 127.5
    np.clip(x, 0, 255, out=x)
    np.copyto(images[part], x, casting="unsafe")  # as astype(np.uint8)
  return images, labels.astype(np.int32)


def _class_templates(num_waves: int = 3) -> np.ndarray:
  """(10, 32, 32, 3) float patterns with unit-ish amplitude, one per class."""
  rng = np.random.default_rng(1234)
  grid = np.arange(32) / 32.0
  yy, xx = np.meshgrid(grid, grid, indexing="ij")
  templates = np.zeros((NUM_CLASSES, 32, 32, 3))
  for c in range(NUM_CLASSES):
    for ch in range(3):
      for _ in range(num_waves):
        fy, fx = rng.integers(-3, 4, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        templates[c, :, :, ch] += np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)
  return templates / np.sqrt(num_waves)


def synthetic(seed: int, train_size: int, test_size: int, noise: float = 0.6) -> Dataset:
  """The synthetic dataset; train and test are disjoint draws from one seed."""
  return from_numpy(synthetic_split(2 * seed, train_size, noise),
                    synthetic_split(2 * seed + 1, test_size, noise))


# ---------------------------------------------------------------- CIFAR-10

CIFAR10_URL_HOST = "www.cs.toronto.edu"


def _not_available(data_dir: str | None, why: str) -> DataError:
  where = data_dir or "the default TFDS data directory (~/tensorflow_datasets)"
  return DataError(
      f"CIFAR-10 is not prepared in {where} and {why}; either prepare it on a"
      " connected machine (`pip install -e \".[prepare]\" && python -m"
      " bnjax.prepare_data --data_dir=DIR`), copy DIR here and pass"
      " --config.data.data_dir=DIR, or use the synthetic data with"
      " --config.data.name=synthetic.")


def _can_reach(host: str, timeout_s: float = 3.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def _read_split(source: Any) -> tuple[np.ndarray, np.ndarray]:
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
  labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
  return images, labels


def _prepare(builder: Any) -> None:
  """Downloads and prepares CIFAR-10 as ArrayRecord files (needs TensorFlow)."""
  if importlib.util.find_spec("tensorflow") is None:
    raise DataError(
        "Preparing CIFAR-10 with TFDS needs TensorFlow, which is not installed; run"
        " `pip install -e \".[prepare]\"` once (reading prepared data does not need it),"
        " or use the synthetic data with --config.data.name=synthetic.")
  builder.download_and_prepare()


def cifar10(data_dir: str | None, download: bool) -> Dataset:
  """CIFAR-10 through TFDS random-access data sources (ArrayRecord files).

  Reads the prepared dataset in `data_dir`; if it is not there, downloads
  and prepares it when `download` is set and the source can be reached.
  Otherwise fails within seconds with a `DataError` that says what to do,
  instead of a long traceback from the download code.
  """
  import tensorflow_datasets as tfds  # slow to import; only the CIFAR path needs it

  if data_dir:
    data_dir = os.path.expanduser(data_dir)
  builder = tfds.builder("cifar10", data_dir=data_dir, file_format="array_record")
  open_splits = lambda: {name: builder.as_data_source(split=name) for name in ("train", "test")}
  try:
    splits = open_splits()
  except KeyError:  # TFDS's way of saying the dataset was never prepared
    if not download:
      raise _not_available(data_dir, "downloading is switched off (data.download=False)") from None
    if not _can_reach(CIFAR10_URL_HOST):
      raise _not_available(data_dir, f"{CIFAR10_URL_HOST} cannot be reached to download it") from None
    _prepare(builder)
    splits = open_splits()
  return from_numpy(_read_split(splits["train"]), _read_split(splits["test"]))


def load(data_config: Mapping[str, Any]) -> Dataset:
  """Builds the dataset the `data` section of a config names."""
  name = data_config["name"]
  if name == "synthetic":
    return synthetic(data_config["synthetic_seed"], data_config["synthetic_train_size"],
                     data_config["synthetic_test_size"], data_config["synthetic_noise"])
  if name == "cifar10":
    return cifar10(data_config["data_dir"] or None, data_config["download"])
  raise DataError(f"Unknown dataset {name!r}; use 'cifar10' or 'synthetic'.")


# ---------------------------------------------------------------- batches


def normalize(images_BxHxWxC: jax.Array, dataset: Dataset) -> jax.Array:
  """uint8 images -> float32, per-channel standardised with the train stats."""
  x = images_BxHxWxC.astype(jnp.float32) / 255.0
  return (x - dataset.mean_C[None, None, None]) / dataset.std_C[None, None, None]


def augment(images_Bx32x32x3: jax.Array, key: jax.Array) -> jax.Array:
  """Pad-4 random 32x32 crop and random horizontal flip, per image (uint8)."""
  batch = images_Bx32x32x3.shape[0]
  crop_key, flip_key = jax.random.split(key)
  p = CROP_PADDING
  padded = jnp.pad(images_Bx32x32x3, ((0, 0), (p, p), (p, p), (0, 0)))
  offsets_Bx2 = jax.random.randint(crop_key, (batch, 2), 0, 2 * p + 1)
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), IMAGE_SHAPE)
  cropped = jax.vmap(crop)(padded, offsets_Bx2)
  flip_B = jax.random.bernoulli(flip_key, 0.5, (batch,))
  return jnp.where(flip_B[:, None, None, None], cropped[:, :, ::-1, :], cropped)


def _stream_keys(data_seed: int | jax.Array, stream: int | jax.Array | None = None) -> jax.Array:
  """The (order, augmentation) keys of one data stream: the shared one, or stream `stream`."""
  key = jax.random.key(data_seed)
  if stream is not None:
    key = jax.random.fold_in(key, stream)
  return jax.random.split(key)


def batch_indices(data_seed: int | jax.Array, step: int | jax.Array,
                  batch_size: int, train_size: int, stream: int | jax.Array | None = None
                  ) -> jax.Array:
  """Indices (B,) of training batch `step`: epochs of a fresh permutation each.

  A pure function of (data_seed, stream, step); the last incomplete batch
  of each epoch is dropped, as is usual. `stream` None is the shared stream
  every member sees by default; an integer (a member's seed) is another one.
  """
  steps_per_epoch = train_size // batch_size
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  epoch_key = jax.random.fold_in(_stream_keys(data_seed, stream)[0], epoch)
  order = jax.random.permutation(epoch_key, train_size)
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def train_batch(dataset: Dataset, data_seed: int | jax.Array, step: int | jax.Array,
                batch_size: int, augmentation: bool = True,
                stream: int | jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Training batch `step`: normalised images (B, 32, 32, 3) f32, labels (B,).

  Jittable; batch t and its augmentation depend only on (data_seed,
  stream, t), see `batch_indices`.
  """
  idx_B = batch_indices(data_seed, step, batch_size, dataset.train.size, stream)
  images = dataset.train.images_Nx32x32x3[idx_B]
  if augmentation:
    aug_key = jax.random.fold_in(_stream_keys(data_seed, stream)[1], step)
    images = augment(images, aug_key)
  return normalize(images, dataset), dataset.train.labels_N[idx_B]


def test_batch(dataset: Dataset, index: int | jax.Array,
               batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Test batch `index` (padded at the end): images, labels, and a 0/1 mask (B,)."""
  size = dataset.test.size
  start = index * batch_size
  positions_B = start + jnp.arange(batch_size)
  clipped_B = jnp.minimum(positions_B, size - 1)
  images = normalize(dataset.test.images_Nx32x32x3[clipped_B], dataset)
  return images, dataset.test.labels_N[clipped_B], (positions_B < size).astype(jnp.float32)
