"""The data stream: determinism, epochs, augmentation, TFDS, clear failures."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bnjax import data


def test_batch_is_a_pure_function_of_seed_and_step(tiny_dataset):
  batch = jax.jit(data.train_batch, static_argnums=(3,))
  x1, y1 = batch(tiny_dataset, 7, 5, 16)
  x2, y2 = batch(tiny_dataset, 7, 5, 16)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, y2)
  x3, _ = batch(tiny_dataset, 7, 6, 16)
  x4, _ = batch(tiny_dataset, 8, 5, 16)
  assert not np.array_equal(x1, x3) and not np.array_equal(x1, x4)


def test_each_epoch_visits_every_full_batch_once():
  train_size, batch_size = 100, 16  # 6 batches per epoch, 4 images dropped
  idx = np.concatenate([data.batch_indices(3, t, batch_size, train_size) for t in range(6)])
  assert len(set(idx.tolist())) == 96
  next_epoch = np.concatenate([data.batch_indices(3, t, batch_size, train_size) for t in range(6, 12)])
  assert not np.array_equal(idx, next_epoch)


def test_augmentation_crops_and_flips_per_image():
  images = jnp.broadcast_to(jnp.arange(32, dtype=jnp.uint8)[None, None, :, None], (64, 32, 32, 3))
  out = data.augment(images, jax.random.key(0))
  assert out.shape == images.shape and out.dtype == jnp.uint8
  rows = np.asarray(out[:, 16, :, 0]).astype(int)
  steps = np.diff(rows[:, 8:24], axis=1)  # away from the zero padding
  flipped = (steps == -1).all(axis=1)
  unflipped = (steps == 1).all(axis=1)
  assert (flipped | unflipped).all() and flipped.any() and unflipped.any()
  assert len({tuple(r) for r in rows}) > 4  # different crops


def test_normalisation_uses_train_statistics(tiny_dataset):
  x = data.normalize(tiny_dataset.train.images_Nx32x32x3, tiny_dataset)
  np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1, atol=1e-3)


def test_synthetic_data_is_deterministic():
  a, la = data.synthetic_split(5, 32)
  b, lb = data.synthetic_split(5, 32)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert a.shape == (32, 32, 32, 3) and a.dtype == np.uint8


def test_synthetic_images_are_their_shifted_class_template_with_noise_bit_for_bit():
  """The docstring's definition, written out: the data every recorded number was measured on."""
  size, noise = 1100, 1.0  # chunks of 512, 512 and 76
  rng = np.random.default_rng(7)
  labels = rng.integers(0, data.NUM_CLASSES, size=size)
  shifts = rng.integers(-8, 9, size=(size, 2))
  contrast = rng.uniform(0.6, 1.4, size=(size, 1, 1, 1))
  templates = data._class_templates()
  expected = np.stack([np.roll(templates[label], tuple(shift), axis=(0, 1))
                       for label, shift in zip(labels, shifts)])
  expected = expected * contrast + rng.standard_normal(expected.shape) * noise
  expected = np.clip(expected * 50.0 + 127.5, 0, 255).astype(np.uint8)
  images, got_labels = data.synthetic_split(7, size, noise)
  np.testing.assert_array_equal(got_labels, labels)
  np.testing.assert_array_equal(images, expected)


def test_test_batches_cover_the_split_once(tiny_dataset):
  seen = []
  for i in range(3):  # 64 test images in batches of 30: the last is padded
    _, labels, mask = data.test_batch(tiny_dataset, i, 30)
    seen.append(np.asarray(labels)[np.asarray(mask) > 0])
  np.testing.assert_array_equal(np.concatenate(seen), tiny_dataset.test.labels_N)


def test_cifar10_through_tfds_data_source():
  with tfds.testing.mock_data(num_examples=40):
    dataset = data.load({"name": "cifar10", "data_dir": "", "download": False})
  assert dataset.train.images_Nx32x32x3.shape == (40, 32, 32, 3)
  assert dataset.train.images_Nx32x32x3.dtype == jnp.uint8
  assert dataset.test.size == 40
  x, y = data.train_batch(dataset, 0, 0, 8)
  assert x.shape == (8, 32, 32, 3) and y.shape == (8,)


def test_missing_cifar10_fails_fast_with_one_clear_sentence(tmp_path, monkeypatch):
  config = {"name": "cifar10", "data_dir": str(tmp_path), "download": False}
  start = time.perf_counter()
  with pytest.raises(data.DataError, match="not prepared in .*synthetic") as info:
    data.load(config)
  assert str(tmp_path) in str(info.value)
  monkeypatch.setattr(data, "_can_reach", lambda host, timeout_s=3.0: False)
  with pytest.raises(data.DataError, match="cannot be reached"):
    data.load({**config, "download": True})
  assert time.perf_counter() - start < 10
  assert not any(tmp_path.iterdir())  # nothing half-downloaded left behind


def _write_fake_cifar10_binaries(root, per_file: int) -> None:
  """Files shaped like cifar-10-binary.tar.gz, extracted: label byte + 3072 pixels."""
  folder = root / "cifar-10-batches-bin"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
  for name in names:
    records = [np.concatenate([[i % 10], rng.integers(0, 256, 3072)]) for i in range(per_file)]
    (folder / name).write_bytes(np.asarray(records, np.uint8).tobytes())
  classes = "airplane automobile bird cat deer dog frog horse ship truck".split()
  (folder / "batches.meta.txt").write_text("\n".join(classes))


def test_cifar10_is_prepared_by_tfds_when_missing(tmp_path, monkeypatch):
  """The download-and-prepare path, with only the network fetch replaced."""
  _write_fake_cifar10_binaries(tmp_path / "download", per_file=4)
  monkeypatch.setattr(data, "_can_reach", lambda host, timeout_s=3.0: True)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, url: str(tmp_path / "download"))
  dataset = data.cifar10(str(tmp_path / "tfds"), download=True)
  assert dataset.train.size == 20 and dataset.test.size == 4
  assert sorted(np.asarray(dataset.train.labels_N).tolist()) == sorted([0, 1, 2, 3] * 5)
  again = data.cifar10(str(tmp_path / "tfds"), download=False)  # now read, not prepared
  np.testing.assert_array_equal(again.train.images_Nx32x32x3, dataset.train.images_Nx32x32x3)


def test_preparing_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "_can_reach", lambda host, timeout_s=3.0: True)
  real_find_spec = data.importlib.util.find_spec
  monkeypatch.setattr(data.importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a))
  with pytest.raises(data.DataError, match="needs TensorFlow.*\\.\\[prepare\\]"):
    data.cifar10(str(tmp_path), download=True)


def test_a_stream_is_a_pure_function_of_data_seed_stream_and_step():
  dataset = data.synthetic(0, 256, 8)
  batch = lambda stream, step: data.train_batch(dataset, 0, step, 16, True, stream)
  np.testing.assert_array_equal(batch(3, 5)[0], batch(3, 5)[0])
  shared, first, second = (data.batch_indices(0, 5, 16, 256, s) for s in (None, 1, 2))
  assert not np.array_equal(first, shared) and not np.array_equal(first, second)
  # Within a stream, an epoch is still a permutation of the training set.
  epoch = np.concatenate([data.batch_indices(0, t, 16, 256, 7) for t in range(16)])
  assert sorted(epoch.tolist()) == list(range(256))
