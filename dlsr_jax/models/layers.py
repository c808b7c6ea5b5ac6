"""Shared layers of the classifiers: torch-like convolutions and batch norm.

Convolutions use explicit symmetric padding (as torch's `padding=`) so that a
stride-2 conv matches PyTorch exactly, no bias (every conv is followed by BN),
and He-normal (fan-out) initialisation. BatchNorm follows torch: epsilon 1e-5,
running averages updated with weight 0.1 (Flax momentum 0.9), stored in the
`batch_stats` collection and used when `train=False`. One difference to torch:
Flax updates the running variance with the biased batch variance.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(x: jax.Array, features: int, kernel: int, stride: int, name: str,
         dtype: Any = jnp.float32) -> jax.Array:
  """Bias-free `kernel`x`kernel` conv with torch padding `kernel // 2`.

  Args:
    x: [B, H, W, Cin].
    features: output channels.
    kernel: square kernel size (1 or 3).
    stride: spatial stride.
    name: module name (the torch attribute, list indices folded: `shortcut_0`).
    dtype: compute dtype; parameters stay float32.

  Returns:
    [B, ceil(H / stride), ceil(W / stride), features].
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=CONV_INIT,
                 dtype=dtype, param_dtype=jnp.float32, name=name)(x)


def batch_norm(x: jax.Array, train: bool, name: str, dtype: Any = jnp.float32) -> jax.Array:
  """torch-like BatchNorm over the channel axis of [B, H, W, C] (or [B, C])."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)(x)


def global_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C] global average pooling."""
  return jnp.mean(x, axis=(1, 2))
