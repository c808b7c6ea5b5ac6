"""Training-time image augmentation as pure, jittable functions of a key.

The CIFAR recipe (random crop with 4 pixels of zero padding, horizontal flip
with probability 1/2) runs inside the jitted train step with a key derived
from the step key, so a resumed run augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def crop_flip(images: jax.Array, offsets: jax.Array, flip: jax.Array,
              pad: int = 4) -> jax.Array:
  """Crops each zero-padded image at `offsets` and mirrors those with `flip`.

  Args:
    images: [B, H, W, C] (any dtype).
    offsets: [B, 2] int (row, column) of each crop's corner in the padded
      image, each in [0, 2 * pad].
    flip: [B] bool, mirror left-right (after cropping).
    pad: zero padding on every side.

  Returns:
    [B, H, W, C] images of the input dtype.
  """
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  zero = jnp.zeros((), offsets.dtype)
  crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], zero), (h, w, c)))(
      padded, offsets)
  return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop of the zero-padded image (offsets uniform) and random horizontal flip.

  Args:
    key: PRNG key; the same key gives the same augmentation.
    images: [B, H, W, C] uint8 or float.
    pad: zero padding on every side (crop offsets uniform in [0, 2 * pad]).

  Returns:
    [B, H, W, C] images of the input dtype.
  """
  if images.ndim != 4:
    raise ValueError(f"expected images [B, H, W, C], got shape {images.shape}")
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}")
  k_crop, k_flip = jax.random.split(key)
  b = images.shape[0]
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return crop_flip(images, offsets, flip, pad)
