"""CIFAR ResNets in Flax: ResNet-20/32/44/56 (option A) and ResNet-18 with a 32x32 stem.

Module names follow the PyTorch layouts with list indices folded into the name,
so the torch key `layer1.0.conv1.weight` is the Flax path `layer1_0/conv1/kernel`
(see `dlsr_jax.weights.convert`).

* `CifarResNet` (He et al. 2016, section 4.2), the layout of the akamaster
  weights in `../shared/weights/cifar10_resnet`: conv3x3(3->16) + BN + ReLU;
  three stages of n basic blocks (16, 32, 64 channels; strides 1, 2, 2);
  global average pooling; `linear`. Where a block changes shape its shortcut is
  "option A" and has no parameters: `x[:, ::2, ::2]`, channels zero-padded by
  planes / 4 on each side. Keys: `conv1`, `bn1`, `layer{1,2,3}.{i}.conv1/bn1/
  conv2/bn2`, `linear`.
* `ResNet18` (the 32x32 variant of OpenOOD v1.5): conv3x3(3->64) stride 1, no
  max-pool; four stages of two basic blocks (64, 128, 256, 512; strides 1, 2,
  2, 2); projection shortcuts conv1x1 + BN; global average pooling; `fc`. Keys:
  `conv1`, `bn1`, `layer{1..4}.{i}.conv1/bn1/conv2/bn2/shortcut.0/shortcut.1`, `fc`
  (`shortcut`, not torchvision's `downsample`, as OpenOOD's `ResNet18_32x32`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsr_jax.models.layers import batch_norm, conv, global_pool

CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9}  # depth -> blocks per stage (depth = 6n + 2)


def option_a_shortcut(x: jax.Array, planes: int, stride: int) -> jax.Array:
  """Parameter-free shortcut: subsample by `stride`, zero-pad channels to `planes`.

  Args:
    x: [B, H, W, Cin] with Cin + 2 * (planes // 4) == planes.
    planes: output channels.
    stride: spatial subsampling (every `stride`-th pixel, starting at 0).

  Returns:
    [B, ceil(H / stride), ceil(W / stride), planes].
  """
  pad = planes // 4
  if x.shape[-1] + 2 * pad != planes:
    raise ValueError(f"option A shortcut cannot map {x.shape[-1]} to {planes} channels")
  x = x[:, ::stride, ::stride, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU.

  Attributes:
    planes: output channels.
    stride: stride of the first conv (and of the shortcut).
    shortcut: "A" (option A, parameter-free) or "projection" (conv1x1 + BN named
      `shortcut_0` / `shortcut_1`); used only where the shape changes.
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  shortcut: str = "A"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, Cin] -> [B, H / stride, W / stride, planes]."""
    dt = self.dtype
    out = nn.relu(batch_norm(conv(x, self.planes, 3, self.stride, "conv1", dt), train, "bn1",
                             dt))
    out = batch_norm(conv(out, self.planes, 3, 1, "conv2", dt), train, "bn2", dt)
    identity = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      if self.shortcut == "A":
        identity = option_a_shortcut(x, self.planes, self.stride)
      elif self.shortcut == "projection":
        identity = batch_norm(conv(x, self.planes, 1, self.stride, "shortcut_0", dt), train,
                              "shortcut_1", dt)
      else:
        raise ValueError(f"unknown shortcut {self.shortcut!r}; valid: 'A', 'projection'")
    return nn.relu(out + identity)


def _stages(x: jax.Array, train: bool, widths: tuple[int, ...], strides: tuple[int, ...],
            blocks: int, shortcut: str, dtype: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs the stages `layer1`, `layer2`, ... (called inside a compact `__call__`)."""
  maps = {}
  for s, (planes, stride) in enumerate(zip(widths, strides)):
    for b in range(blocks):
      x = BasicBlock(planes, stride if b == 0 else 1, shortcut, dtype,
                     name=f"layer{s + 1}_{b}")(x, train)
    maps[f"layer{s + 1}"] = x
  return x, maps


def _check_input(x: jax.Array) -> None:
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"expected normalised images of shape [B, H, W, 3], got {x.shape}")


class CifarResNet(nn.Module):
  """ResNet-(6n+2) of He et al. for 32x32 images, option A shortcuts.

  Attributes:
    depth: 20, 32, 44 or 56.
    num_classes: outputs of `linear`.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
  """
  depth: int = 20
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: [B, 32, 32, 3] normalised images.
      train: batch statistics (updating `batch_stats`, which must be mutable)
        instead of the running ones.

    Returns:
      (logits [B, num_classes], out) with out["pre_logits"] [B, 64] (after
      global average pooling) and the stage maps out["layer1".."layer3"]
      ([B, 32, 32, 16], [B, 16, 16, 32], [B, 8, 8, 64] at 32x32).
    """
    if self.depth not in CIFAR_DEPTHS:
      raise ValueError(f"depth must be one of {sorted(CIFAR_DEPTHS)}, got {self.depth}")
    _check_input(x)
    dt = self.dtype
    x = nn.relu(batch_norm(conv(x.astype(dt), 16, 3, 1, "conv1", dt), train, "bn1", dt))
    x, out = _stages(x, train, (16, 32, 64), (1, 2, 2), CIFAR_DEPTHS[self.depth], "A", dt)
    out["pre_logits"] = global_pool(x)
    logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=jnp.float32,
                      name="linear")(out["pre_logits"])
    return logits, out


class ResNet18(nn.Module):
  """ResNet-18 with a 32x32 stem (conv3x3 stride 1, no max-pool), projection shortcuts.

  Attributes:
    num_classes: outputs of `fc`.
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: [B, 32, 32, 3] normalised images.
      train: batch statistics instead of the running ones.

    Returns:
      (logits [B, num_classes], out) with out["pre_logits"] [B, 512] and the
      stage maps out["layer1".."layer4"] (strides 1, 2, 4, 8; 64..512 channels).
    """
    _check_input(x)
    dt = self.dtype
    x = nn.relu(batch_norm(conv(x.astype(dt), 64, 3, 1, "conv1", dt), train, "bn1", dt))
    x, out = _stages(x, train, (64, 128, 256, 512), (1, 2, 2, 2), 2, "projection", dt)
    out["pre_logits"] = global_pool(x)
    logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=jnp.float32,
                      name="fc")(out["pre_logits"])
    return logits, out
