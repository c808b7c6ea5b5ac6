"""DCGAN generator and discriminator for 32x32 RGB images (Radford et al. 2016).

The pair the GAN-outlier objective trains (Lee et al. 2018,
`objectives.gan_outliers`), at CIFAR size:

* `Generator(nz, ngf)`: z [B, nz] -> (as a 1x1 map) transposed convolutions
  4x4x(4 ngf) -> 8x8x(2 ngf) -> 16x16x(ngf) -> 32x32x3, BatchNorm + ReLU after
  every layer but the last, tanh output in [-1, 1].
* `Discriminator(ndf)`: 32x32x3 -> 16x16x(ndf) -> 8x8x(2 ndf) -> 4x4x(4 ndf)
  with stride-2 4x4 convolutions and LeakyReLU(0.2), BatchNorm on every layer
  after the first, then a 4x4 "valid" convolution to one logit per image [B].

Every (transposed) convolution has a 4x4 kernel and no bias, as in DCGAN; the
stride-2 ones double / halve the size exactly like torch's `padding=1`. DCGAN
init: kernels N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0. BatchNorm
momentum 0.9 (torch's 0.1), epsilon 1e-5. `train=True` normalises with the
batch statistics and needs `mutable=["batch_stats"]`.

`init_variables(module, key)` draws the same initialisation as `module.init`
from one normal draw: about a tenth of the compile time of `module.init`'s
per-parameter draws on a CPU (seconds, for every jitted train-state init).
"""

from __future__ import annotations

from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL_STD = 0.02


def _kernel_init():
  return nn.initializers.normal(KERNEL_STD)


def _scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """BatchNorm scale ~ N(1, 0.02)."""
  return 1.0 + KERNEL_STD * jax.random.normal(key, shape, dtype)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=_scale_init, name=name)


def _check_width(name: str, value: int) -> None:
  if int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")


class Generator(nn.Module):
  """z [B, nz] -> images [B, 32, 32, 3] in [-1, 1].

  Attributes:
    nz: latent size.
    ngf: width of the last hidden layer (the layers have 4, 2, 1 x ngf channels).
  """
  nz: int = 100
  ngf: int = 64

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    _check_width("Generator.nz", self.nz)
    _check_width("Generator.ngf", self.ngf)
    if z.ndim != 2 or z.shape[-1] != self.nz:
      raise ValueError(f"Generator expects z of shape [B, {self.nz}], got {z.shape}")
    x = z.reshape(z.shape[0], 1, 1, self.nz)
    # torch ConvTranspose2d(k=4, s, p) == lax conv_transpose with padding k - 1 - p.
    x = nn.ConvTranspose(4 * self.ngf, (4, 4), padding="VALID", use_bias=False,
                         kernel_init=_kernel_init(), name="deconv1")(x)      # 4x4
    x = nn.relu(_batch_norm(train, "bn1")(x))
    for i, width in ((2, 2 * self.ngf), (3, self.ngf)):                    # 8x8, 16x16
      x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                           use_bias=False, kernel_init=_kernel_init(), name=f"deconv{i}")(x)
      x = nn.relu(_batch_norm(train, f"bn{i}")(x))
    x = nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                         use_bias=False, kernel_init=_kernel_init(), name="deconv4")(x)
    return jnp.tanh(x)                                                       # 32x32x3


class Discriminator(nn.Module):
  """Images [B, 32, 32, 3] (in [-1, 1]) -> real/fake logits [B].

  Attributes:
    ndf: width of the first layer (the layers have 1, 2, 4 x ndf channels).
  """
  ndf: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _check_width("Discriminator.ndf", self.ndf)
    if x.shape[1:] != (32, 32, 3):
      raise ValueError(f"Discriminator expects images [B, 32, 32, 3], got {x.shape}")
    for i, width in enumerate((self.ndf, 2 * self.ndf, 4 * self.ndf), start=1):
      x = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=_kernel_init(), name=f"conv{i}")(x)            # 16, 8, 4
      if i > 1:
        x = _batch_norm(train, f"bn{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding="VALID", use_bias=False, kernel_init=_kernel_init(),
                name="conv4")(x)                                             # 1x1x1
    return x.reshape(x.shape[0])


def init_variables(module: Union[Generator, Discriminator], key: jax.Array) -> dict:
  """DCGAN-initialised variables of `module`, from one normal draw.

  Kernels N(0, 0.02), BatchNorm scales N(1, 0.02) and shifts 0, running means 0
  and variances 1: the distribution `module.init` draws, not the same numbers.

  Args:
    module: a `Generator` or a `Discriminator`.
    key: PRNG key.

  Returns:
    {"params": ..., "batch_stats": ...}.
  """
  if isinstance(module, Generator):
    x = jnp.zeros((1, module.nz), jnp.float32)
  elif isinstance(module, Discriminator):
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  else:
    raise TypeError(f"init_variables takes a Generator or a Discriminator, got {module!r}")
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes["params"])
  noise = jax.random.normal(key, (sum(leaf.size for _, leaf in leaves),), jnp.float32)
  values, start = [], 0
  for path, leaf in leaves:
    draw = noise[start:start + leaf.size].reshape(leaf.shape)
    start += leaf.size
    kind = path[-1].key
    if kind == "kernel":
      values.append(KERNEL_STD * draw)
    elif kind == "scale":
      values.append(1.0 + KERNEL_STD * draw)
    elif kind == "bias":
      values.append(jnp.zeros(leaf.shape, leaf.dtype))
    else:
      raise ValueError(f"init_variables: unexpected parameter {jax.tree_util.keystr(path)}")
  stats = jax.tree_util.tree_map_with_path(
      lambda path, leaf: (jnp.ones if path[-1].key == "var" else jnp.zeros)(leaf.shape,
                                                                           leaf.dtype),
      shapes["batch_stats"])
  return {"params": jax.tree.unflatten(treedef, values), "batch_stats": stats}
