"""Wide ResNet (Zagoruyko & Komodakis 2016) for 32x32 images, e.g. WRN-40-2.

Pre-activation blocks: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the
shortcut. Where the width changes, the shortcut is a bias-free conv1x1 (with
the block's stride) applied to the pre-activated input BN-ReLU(x); otherwise it
is x itself. Stem conv3x3(3->16); three groups of n = (depth - 4) / 6 blocks of
widths 16k, 32k, 64k with strides 1, 2, 2; final BN-ReLU, global average pooling,
`fc`. Module names follow the PyTorch layout used by the Outlier Exposure and
Energy code releases: `conv1`, `block{1,2,3}.layer.{i}.bn1/conv1/bn2/conv2/
convShortcut`, `bn1`, `fc` (Flax paths `block1/layer_0/bn1`, ...).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsr_jax.models.layers import batch_norm, conv, global_pool


class WideBlock(nn.Module):
  """Pre-activation basic block of a WRN.

  Attributes:
    planes: output channels.
    stride: stride of the first conv and of the shortcut.
    dropout: dropout rate between the convs (needs a "dropout" rng when training).
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, Cin] -> [B, H / stride, W / stride, planes]."""
    dt = self.dtype
    act = nn.relu(batch_norm(x, train, "bn1", dt))
    out = nn.relu(batch_norm(conv(act, self.planes, 3, self.stride, "conv1", dt), train,
                             "bn2", dt))
    if self.dropout > 0:
      out = nn.Dropout(self.dropout, deterministic=not train)(out)
    out = conv(out, self.planes, 3, 1, "conv2", dt)
    if x.shape[-1] == self.planes and self.stride == 1:
      return x + out
    return conv(act, self.planes, 1, self.stride, "convShortcut", dt) + out


class WideGroup(nn.Module):
  """`blocks` WideBlocks named `layer_0`, `layer_1`, ... (torch `blockK.layer.i`).

  Attributes:
    planes: output channels of every block.
    stride: stride of the first block.
    blocks: number of blocks.
    dropout: dropout rate inside the blocks.
    dtype: compute dtype.
  """
  planes: int
  stride: int
  blocks: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, Cin] -> [B, H / stride, W / stride, planes]."""
    for i in range(self.blocks):
      x = WideBlock(self.planes, self.stride if i == 0 else 1, self.dropout, self.dtype,
                    name=f"layer_{i}")(x, train)
    return x


class WideResNet(nn.Module):
  """WRN-depth-widen for 32x32 images.

  Attributes:
    depth: 6n + 4 (40 for WRN-40-2).
    widen: width factor k (2 for WRN-40-2).
    num_classes: outputs of `fc`.
    dropout: dropout rate inside the blocks (0 by default).
    dtype: compute dtype; parameters stay float32.
  """
  depth: int = 40
  widen: int = 2
  num_classes: int = 10
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: [B, 32, 32, 3] normalised images.
      train: batch statistics (and dropout) instead of the running statistics.

    Returns:
      (logits [B, num_classes], out) with out["pre_logits"] [B, 64 * widen]
      (after the final BN-ReLU and global average pooling) and the group maps
      out["block1".."block3"] (strides 1, 2, 4; 16k, 32k, 64k channels).
    """
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ValueError(f"WRN depth must be 6n + 4, got {self.depth}")
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected normalised images of shape [B, H, W, 3], got {x.shape}")
    dt = self.dtype
    n = (self.depth - 4) // 6
    x = conv(x.astype(dt), 16, 3, 1, "conv1", dt)
    out = {}
    for g, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2))):
      x = WideGroup(width * self.widen, stride, n, self.dropout, dt, name=f"block{g + 1}")(
          x, train)
      out[f"block{g + 1}"] = x
    x = nn.relu(batch_norm(x, train, "bn1", dt))
    out["pre_logits"] = global_pool(x)
    logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=jnp.float32,
                      name="fc")(out["pre_logits"])
    return logits, out
