import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax import augment

PAD = 2


def _images(b=32, h=6, w=5, c=3, seed=0):
  """uint8 images whose pixels are all >= 1, so zero padding is visible."""
  return np.random.default_rng(seed).integers(1, 256, (b, h, w, c)).astype(np.uint8)


def _reference(image, dy, dx, flip, pad=PAD):
  h, w = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  crop = padded[dy:dy + h, dx:dx + w]
  return crop[:, ::-1] if flip else crop


def test_crop_flip_matches_numpy():
  x = _images(4)
  offsets = np.array([[0, 0], [4, 4], [1, 3], [2, 2]])
  flip = np.array([True, False, True, False])
  got = np.asarray(augment.crop_flip(jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(flip),
                                     PAD))
  for i in range(4):
    np.testing.assert_array_equal(got[i], _reference(x[i], *offsets[i], flip[i]))
  # Zero padding: the corner crop has a zero border of PAD rows and columns.
  assert np.all(got[1][-PAD:] == 0) and np.all(got[1][:, -PAD:] == 0)
  assert np.all(got[0][:PAD] == 0) and np.all(got[0][:, -PAD:] == 0)  # flipped


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_flip_offsets_in_range_and_deterministic(dtype):
  x = _images(64).astype(dtype)
  fn = jax.jit(augment.random_crop_flip, static_argnames="pad")
  got = np.asarray(fn(jax.random.key(3), jnp.asarray(x), pad=PAD))
  assert got.shape == x.shape and got.dtype == x.dtype
  np.testing.assert_array_equal(got, np.asarray(fn(jax.random.key(3), jnp.asarray(x), pad=PAD)))
  assert not np.array_equal(got, np.asarray(fn(jax.random.key(4), jnp.asarray(x), pad=PAD)))
  seen = set()
  for i in range(len(x)):
    match = [(dy, dx, f) for dy, dx, f in itertools.product(range(2 * PAD + 1),
                                                            range(2 * PAD + 1), (False, True))
             if np.array_equal(got[i], _reference(x[i], dy, dx, f))]
    assert match, f"image {i} is no crop/flip of its input with offsets in [0, {2 * PAD}]"
    seen.update(match)
  assert {f for _, _, f in seen} == {False, True}
  assert len({(dy, dx) for dy, dx, _ in seen}) > 5


def test_random_crop_flip_rejects_bad_input():
  with pytest.raises(ValueError, match="B, H, W, C"):
    augment.random_crop_flip(jax.random.key(0), jnp.zeros((4, 4, 3)))
