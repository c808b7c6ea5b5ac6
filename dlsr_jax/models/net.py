"""The `Net` handle: a classifier module, its variables and the input normalisation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsr_jax.normalisation import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from dlsr_jax.typedefs import Params

# name -> (mean, std) on the [0, 1] scale.
NORMALISATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclasses.dataclass(frozen=True)
class Net:
  """A classifier (or a head on features) with its variables.

  `module.apply(params, x, train=...)` returns `(logits, out)` with
  out["pre_logits"] (the penultimate features after global average pooling).

  Attributes:
    name: registry name, e.g. "cifar_resnet20".
    module: the Flax module.
    params: the full Flax variables `{"params": ..., "batch_stats": ...}` (heads
      have no "batch_stats").
    resolution: input height/width of image models (32); None for heads on
      features.
    mean, std: per-channel normalisation on the [0, 1] scale the weights expect;
      None for heads.
    weights_id: short string identifying the weights (a file hash prefix, or
      "random-seed<seed>").
    outputs: the per-example arrays `apply` provides: "logits" and the keys of
      `out` (["pre_logits"]; a confidence-branch net adds "confidence").
    head_path: where the final dense layer (logits = pre_logits @ W + b) lives in
      `params["params"]`, e.g. ("linear",); None when the net has no such layer.
    apply_fn: a wrapped model's `(params, x) -> (logits, out)` (`models.wrap`); None
      for the registry's Flax modules, which `apply` runs with `train=False`.
    preprocess_fn: a wrapped model's `(float images in [0, 255]) -> network input`;
      None: the `mean` / `std` normalisation.
  """
  name: str
  module: Optional[nn.Module]
  params: Params
  resolution: Optional[int] = 32
  mean: Optional[tuple[float, ...]] = None
  std: Optional[tuple[float, ...]] = None
  weights_id: str = ""
  outputs: tuple[str, ...] = ("logits", "pre_logits")
  head_path: Optional[tuple[str, ...]] = None
  apply_fn: Optional[Callable[[Params, jax.Array], Any]] = None
  preprocess_fn: Optional[Callable[[jax.Array], jax.Array]] = None

  @property
  def head(self) -> tuple[jax.Array, jax.Array]:
    """The final dense layer as `(W [D, K], b [K])` float32: logits = pre_logits @ W + b.

    Raises:
      ValueError: the net names no final dense layer (`head_path`), or the layer found
        there is not a dense kernel / bias pair.
    """
    if self.head_path is None:
      raise ValueError(f"net {self.name!r} does not name its final dense layer: load it "
                       "with models.load, or pass head=<module name> to models.wrap")
    node = self.params.get("params", {})
    for i, part in enumerate(self.head_path):
      if not hasattr(node, "keys") or part not in node:
        where = "/".join(self.head_path[:i]) or "params"
        raise ValueError(f"net {self.name!r}: no {part!r} under {where!r} of its params "
                         f"(head_path {'/'.join(self.head_path)})")
      node = node[part]
    kernel = node.get("kernel") if hasattr(node, "get") else None
    if kernel is None or jnp.ndim(kernel) != 2:
      raise ValueError(f"net {self.name!r}: params/{'/'.join(self.head_path)} is not a dense "
                       "layer (no 2-D 'kernel')")
    w = jnp.asarray(kernel, jnp.float32)
    bias = node.get("bias")
    b = jnp.zeros((w.shape[1],), jnp.float32) if bias is None else jnp.asarray(bias,
                                                                                jnp.float32)
    return w, b

  def normalise(self, x01: jax.Array) -> jax.Array:
    """Images in [0, 1] -> network input, differentiably (as ODIN needs).

    Args:
      x01: [B, H, W, 3] float in [0, 1].

    Returns:
      [B, H, W, 3] float32, (x01 - mean) / std; heads return the input as is.
    """
    if self.preprocess_fn is not None:
      return self.preprocess_fn(x01 * 255.0)
    if self.mean is None or self.std is None:
      return x01
    return (x01 - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] -> normalised float32 [B, H, W, 3] (no resize)."""
    if self.resolution is None:
      raise ValueError(f"{self.name!r} takes features [N, C], not images")
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected images of shape [B, H, W, 3], got {images.shape}")
    if self.preprocess_fn is not None:
      return self.preprocess_fn(jnp.asarray(images).astype(jnp.float32))
    return self.normalise(jnp.asarray(images).astype(jnp.float32) / 255.0)

  def apply(self, params: Params, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Eval-mode forward pass (running BN statistics, no dropout); jittable.

    Args:
      params: Flax variables (e.g. `self.params`).
      x: [B, H, W, 3] normalised images (or [N, C] features for heads).

    Returns:
      (logits [B, num_classes], out) with out["pre_logits"] [B, D].
    """
    if self.apply_fn is not None:
      return self.apply_fn(params, x)
    return self.module.apply(params, x, train=False)
