"""The `Backbone` handle: a frozen Flax module, its weights and its preprocessing."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsr_jax.models.net import Net
from dlsr_jax.normalisation import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from dlsr_jax.typedefs import Params

NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD),
                  "inception": (INCEPTION_MEAN, INCEPTION_STD)}


def preprocess_images(images: jax.Array, resolution: int,
                      mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD,
                      dtype=jnp.float32) -> jax.Array:
  """uint8 NHWC -> float NHWC at `resolution`, normalised with `mean`/`std`.

  Straight (aspect-changing) bilinear resize, no crop, as in the DLSR paper.

  Args:
    images: [B, H, W, 3] uint8 (or float in [0, 255]).
    resolution: output height and width.
    mean, std: per-channel normalisation on the [0, 1] scale.
    dtype: output dtype.

  Returns:
    [B, resolution, resolution, 3] float array.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected images of shape [B, H, W, 3], got {images.shape}")
  x = images.astype(jnp.float32) / 255.0
  b, h, w, c = x.shape
  if (h, w) != (resolution, resolution):
    x = jax.image.resize(x, (b, resolution, resolution, c), method="bilinear",
                         antialias=True)
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A frozen, pretrained (or randomly initialised) CNN.

  Attributes:
    name: registry name, e.g. "efficientnet_lite0".
    module: the Flax module. `module.apply(params, x, with_head=...)` returns
      `(logits_or_None, {level_name: [B, h, w, c] map})`; with the head the dict also
      holds "pre_logits" [B, D].
    params: Flax variables `{"params": ..., "batch_stats": ...}`.
    resolution: input height/width the backbone expects (224 for the paper).
    level_names: names of the resolution levels, shallow to deep.
    level_channels: channel count of each level map.
    default_layers: indices into `level_names` used for DLSR features by default.
    weights_id: short string identifying the weights (e.g. a file hash);
      used to key the feature cache.
    has_head: the weights include the classification layer (False: `logits` raises).
    mean, std: normalisation used by `preprocess`.
    head_name: the Flax name of the final dense layer in `params["params"]` ("_fc" for
      the EfficientNets, "fc" for ResNet-50), for `as_net`; None: unknown.
  """
  name: str
  module: nn.Module
  params: Params
  resolution: int
  level_names: tuple[str, ...]
  level_channels: tuple[int, ...]
  default_layers: tuple[int, ...]
  weights_id: str
  has_head: bool = True
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  head_name: Optional[str] = None

  def preprocess(self, images: jax.Array, resolution: Optional[int] = None) -> jax.Array:
    """uint8 [B, H, W, 3] -> normalised float [B, R, R, 3]."""
    return preprocess_images(images, resolution or self.resolution, self.mean, self.std)

  def apply(self, params: Params, x: jax.Array) -> list[jax.Array]:
    """Preprocessed [B, R, R, 3] -> list of level maps [B, h, w, c], shallow to deep."""
    _, levels = self.module.apply(params, x, with_head=False)
    return [levels[n] for n in self.level_names]

  def logits(self, params: Params, x: jax.Array) -> jax.Array:
    """Preprocessed [B, R, R, 3] -> ImageNet logits [B, num_classes]."""
    if not self.has_head:
      raise ValueError(f"backbone {self.name!r} has no classification head")
    logits, _ = self.module.apply(params, x, with_head=True)
    return logits

  @property
  def apply_fn(self) -> Callable[[Params, jax.Array], list[jax.Array]]:
    return self.apply

  def as_net(self) -> Net:
    """This backbone as a classifier `Net`, the contract of `models`, `evaluation.forward`
    and the detectors.

    `net.apply(params, x)` returns `(logits [B, K], out)` with out["pre_logits"] [B, D] (the
    pooled features the classification layer reads) and every level map under its name
    (out["level1"]..out["level5"]; ResNet-50: "layer1".."layer4"): the arrays of `logits`
    and `apply`. `net.head` is the classification layer (logits = pre_logits @ W + b);
    `net.preprocess` / `net.normalise` resize to `resolution` and normalise as `preprocess`
    (differentiably, for ODIN). `net.outputs` is ("logits", "pre_logits"), so
    `evaluation.forward` returns those and leaves the level maps out. Nets of the same
    module and preprocessing share their compiled functions. The net is for evaluation:
    training objectives need a `models.load` net.

    Raises:
      ValueError: the backbone has no classification head (`has_head` False) or does not
        name it (`head_name`).
    """
    if not self.has_head:
      raise ValueError(f"backbone {self.name!r} has no classification head (loaded with "
                       "allow_missing_head=True?), so it is no classifier Net")
    if self.head_name is None:
      raise ValueError(f"backbone {self.name!r} does not name its final dense layer "
                       "(head_name); load it with backbones.load")
    return Net(name=self.name, module=None, params=self.params, resolution=self.resolution,
               mean=self.mean, std=self.std, weights_id=self.weights_id,
               head_path=(self.head_name,),
               apply_fn=_classifier_apply(self.module, self.level_names),
               preprocess_fn=_net_preprocess(int(self.resolution), tuple(self.mean),
                                             tuple(self.std)))


# Cached per (module, levels) and per preprocessing: `evaluation.forward` keys its compiled
# functions on the identity of a net's functions, so every `as_net` of a backbone reuses them.
@functools.lru_cache(maxsize=32)
def _classifier_apply(module: nn.Module, level_names: tuple[str, ...]
                      ) -> Callable[[Params, jax.Array], tuple[jax.Array, dict[str, Any]]]:
  def apply(params: Params, x: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    logits, maps = module.apply(params, x, with_head=True)
    return logits, {"pre_logits": maps["pre_logits"], **{n: maps[n] for n in level_names}}
  return apply


@functools.lru_cache(maxsize=32)
def _net_preprocess(resolution: int, mean: tuple[float, ...], std: tuple[float, ...]
                    ) -> Callable[[jax.Array], jax.Array]:
  def preprocess(images: jax.Array) -> jax.Array:   # float [B, H, W, 3] in [0, 255]
    return preprocess_images(images, resolution, mean, std)
  return preprocess
