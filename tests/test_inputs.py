"""The stand-in inputs: white and 1/f² Gaussian images with a normalised data set's moments."""

import jax
import numpy as np
import pytest

from bnjax import data, inputs


def _slope(images) -> float:
  """The power spectrum's log-log slope over rings of 1..16 cycles per image."""
  f, power = inputs.radial_power(images)
  return float(np.polyfit(np.log(np.asarray(f)), np.log(np.asarray(power)), 1)[0])


@pytest.mark.parametrize("name, slope", [("pink", -2.0), ("gaussian", 0.0)])
def test_power_falls_as_one_over_f_squared_for_pink_and_is_flat_for_white(name, slope):
  images = inputs.stand_in(name, jax.random.key(0), 256)
  assert abs(_slope(images) - slope) < 0.15


@pytest.mark.parametrize("name", inputs.STAND_INS)
def test_every_channel_has_the_moments_of_a_normalised_data_set(name):
  """data.normalize gives each channel mean 0 and std 1 over the data set; so does a stand-in."""
  drawn = inputs.stand_in(name, jax.random.key(1), 512)
  assert drawn.shape == (512, *data.IMAGE_SHAPE) and drawn.dtype == np.float32
  images = np.asarray(drawn, np.float64)
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=0.03)
  np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=0.03)


def test_pink_pixels_are_correlated_with_their_neighbours_and_white_ones_are_not():
  pink, white = (np.asarray(inputs.stand_in(n, jax.random.key(2), 256))
                 for n in ("pink", "gaussian"))
  neighbours = lambda x: float(np.mean(x[:, :, 1:] * x[:, :, :-1]))
  assert neighbours(pink) > 0.5 and abs(neighbours(white)) < 0.02


@pytest.mark.parametrize("name", inputs.STAND_INS)
def test_a_stand_in_is_a_pure_function_of_its_key(name):
  a, b = (np.asarray(inputs.stand_in(name, jax.random.key(3), 4)) for _ in range(2))
  c = np.asarray(inputs.stand_in(name, jax.random.key(4), 4))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_an_unknown_stand_in_is_refused_naming_the_valid_ones():
  with pytest.raises(ValueError, match=r"stand-in input 'cifar'; use one of \['gaussian', 'pink'\]"):
    inputs.stand_in("cifar", jax.random.key(0), 1)
