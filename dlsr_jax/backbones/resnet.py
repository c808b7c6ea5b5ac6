"""ResNet-50 in Flax with torchvision's layout and parameter names (inference only).

Names follow torchvision with list indices folded into the module name, so a
torch key `layer1.0.downsample.0.weight` maps to `layer1_0/downsample_0/kernel`
(see `convert.py`). Bottleneck v1.5: the stride sits on the 3x3 convolution.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

LEVEL_NAMES = ("layer1", "layer2", "layer3", "layer4")
LEVEL_CHANNELS = (256, 512, 1024, 2048)


def _conv(x: jax.Array, name: str, features: int, kernel: int, stride: int, pad: int,
          dtype: Any) -> jax.Array:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, name=name)(x)


def _bn(x: jax.Array, name: str, dtype: Any) -> jax.Array:
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, name=name)(x)


class Bottleneck(nn.Module):
  """torchvision `Bottleneck` (expansion 4).

  Attributes:
    planes: width of the 3x3 conv; the block outputs 4 * planes channels.
    stride: stride of the 3x3 conv (and of the downsample projection).
    downsample: whether the shortcut is a 1x1 conv + BN projection.
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, Cin] -> [B, H/stride, W/stride, 4 * planes]."""
    dt = self.dtype
    out = nn.relu(_bn(_conv(x, "conv1", self.planes, 1, 1, 0, dt), "bn1", dt))
    out = nn.relu(_bn(_conv(out, "conv2", self.planes, 3, self.stride, 1, dt), "bn2", dt))
    out = _bn(_conv(out, "conv3", self.planes * 4, 1, 1, 0, dt), "bn3", dt)
    identity = x
    if self.downsample:
      identity = _bn(_conv(x, "downsample_0", self.planes * 4, 1, self.stride, 0, dt),
                     "downsample_1", dt)
    return nn.relu(out + identity)


class ResNet50(nn.Module):
  """torchvision ResNet-50.

  Attributes:
    num_classes: classifier outputs.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
  """
  num_classes: int = 1000
  dtype: Any = jnp.float32
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)

  @nn.compact
  def __call__(self, x: jax.Array, with_head: bool = False
               ) -> tuple[Optional[jax.Array], dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: [B, H, W, 3] normalised images.
      with_head: also run average pooling + fc and return logits.

    Returns:
      (logits [B, num_classes] or None, {"layer1".."layer4": [B, h, w, c]}) with
      strides 4, 8, 16, 32 and 256, 512, 1024, 2048 channels; with the head, the dict also
      holds "pre_logits" [B, 2048], the pooled features the final `fc` reads.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected input of shape [B, H, W, 3], got {x.shape}")
    dt = self.dtype
    x = x.astype(dt)
    x = nn.relu(_bn(_conv(x, "conv1", 64, 7, 2, 3, dt), "bn1", dt))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    levels = {}
    in_ch = 64
    for li, (reps, planes) in enumerate(zip(self.stage_sizes, (64, 128, 256, 512))):
      for b in range(reps):
        stride = 2 if (b == 0 and li > 0) else 1
        downsample = b == 0 and (stride != 1 or in_ch != planes * 4)
        x = Bottleneck(planes, stride, downsample, dtype=dt, name=f"layer{li + 1}_{b}")(x)
        in_ch = planes * 4
      levels[LEVEL_NAMES[li]] = x
    if not with_head:
      return None, levels
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=jnp.float32, name="fc")(x)
    return logits, {**levels, "pre_logits": x}
