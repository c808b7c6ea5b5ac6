"""Multi-layer DLSR features: pooled, per-layer z-scored, concatenated; cached.

For each selected backbone level m: global average pool -> f_m [c_m];
z-score within the sample, (f_m - mean(f_m)) / (std(f_m, ddof=1) + 1e-5);
concatenate -> z [C]. `boundaries` gives the layer slices of z.

`pooling="gap"` (default) pools each map exactly. `pooling="dlsr"` first
resizes every map bilinearly (align_corners) to the stride-16 grid, as the
official release does; that resize followed by a mean is a separable weighted
average, computed here without materialising the resized map.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dlsr_jax import cache as cache_lib
from dlsr_jax import multihost
from dlsr_jax.backbones.base import Backbone, preprocess_images
from dlsr_jax.cache import images_digest
from dlsr_jax.data import batching
from dlsr_jax.typedefs import Params

POOLINGS = ("gap", "dlsr")
ZSCORE_EPS = 1e-5

MIN_RESOLUTION = 32   # every backbone's last level is 1/32 of the input

@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Which levels, how pooled, at what input resolution."""
  layers: Optional[tuple[int, ...]] = None   # None: the backbone's default layers
  pooling: str = "gap"
  resolution: Optional[int] = None           # None: the backbone's resolution

  def __post_init__(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
    if self.resolution is not None and (not isinstance(self.resolution, int)
                                        or self.resolution < MIN_RESOLUTION):
      raise ValueError(f"feature resolution must be an int >= {MIN_RESOLUTION} (the backbones "
                       f"downsample {MIN_RESOLUTION}x) or None, got {self.resolution!r}")


def resolve_layers(backbone: Backbone, layers: Optional[Sequence[int]]) -> tuple[int, ...]:
  layers = tuple(backbone.default_layers if layers is None else layers)
  n = len(backbone.level_names)
  if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
    raise ValueError(f"layers {layers} invalid for {backbone.name} with {n} levels "
                     f"{backbone.level_names}: give distinct indices in 0..{n - 1}")
  return layers


def boundaries_for(channels: Sequence[int]) -> tuple[int, ...]:
  """Layer channel counts -> cumulative boundaries (0, c_0, c_0 + c_1, ...)."""
  return tuple(int(x) for x in np.concatenate([[0], np.cumsum(channels)]))


def _align_corners_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_in] weights w with mean_i(resize_ac(x)[i]) = sum_a w[a] x[a]."""
  w = np.zeros((n_out, n_in), np.float64)
  if n_out == 1 or n_in == 1:
    pos = np.zeros(n_out)
  else:
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(w, (np.arange(n_out), hi), frac)
  return w.mean(axis=0).astype(np.float32)


def pool_map(fmap: jax.Array, pooling: str, target_hw: Optional[tuple[int, int]] = None) -> jax.Array:
  """[B, h, w, c] -> [B, c] (float32)."""
  fmap = fmap.astype(jnp.float32)
  if pooling == "gap":
    return jnp.mean(fmap, axis=(1, 2))
  _, h, w, _ = fmap.shape
  wh = jnp.asarray(_align_corners_weights(h, target_hw[0]))
  ww = jnp.asarray(_align_corners_weights(w, target_hw[1]))
  return jnp.einsum("bhwc,h,w->bc", fmap, wh, ww)


def zscore(f: jax.Array) -> jax.Array:
  """Per-sample z-score of a [B, c] layer vector (unbiased std, +1e-5)."""
  mean = jnp.mean(f, axis=-1, keepdims=True)
  std = jnp.std(f, axis=-1, keepdims=True, ddof=1)
  return (f - mean) / (std + ZSCORE_EPS)


def make_feature_fn(backbone: Backbone, spec: FeatureSpec = FeatureSpec()
                    ) -> tuple[Callable[[Params, jax.Array], jax.Array], tuple[int, ...]]:
  """Returns `(fn(params, images_uint8 [B, H, W, 3]) -> z [B, C], boundaries)`.

  `fn` is pure (params are an argument, never closed over); jit it.
  """
  layers = resolve_layers(backbone, spec.layers)
  res = spec.resolution or backbone.resolution
  target = (math.ceil(res / 16), math.ceil(res / 16))
  bounds = boundaries_for([backbone.level_channels[i] for i in layers])

  def fn(params: Params, images: jax.Array) -> jax.Array:
    x = preprocess_images(images, res, backbone.mean, backbone.std)
    maps = backbone.apply(params, x)
    parts = [zscore(pool_map(maps[i], spec.pooling, target)) for i in layers]
    return jnp.concatenate(parts, axis=-1)

  return fn, bounds


def extract(backbone: Backbone, images: np.ndarray, batch_size: int = 64,
            spec: FeatureSpec = FeatureSpec(), progress: bool = True,
            desc: str = "features") -> tuple[np.ndarray, tuple[int, ...]]:
  """Features of a whole image array, batched; the last batch is padded.

  Args:
    backbone: a loaded `Backbone`.
    images: [N, H, W, 3] uint8.
    batch_size: images per jitted call (the compile is reused for every batch).
    spec: layers / pooling / resolution.
    progress: show a tqdm bar.

  Returns:
    (z [N, C] float32 numpy, boundaries).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
  if images.shape[0] == 0:
    raise ValueError("cannot extract features of an empty image set")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  fn, bounds = make_feature_fn(backbone, spec)
  jfn = jax.jit(fn)
  # Every call has batch_size images (the last batch padded with copies of the last image,
  # never dropping one): one compile for every set, whatever its size.
  out = batching.map_padded(lambda chunk: jfn(backbone.params, chunk), images, batch_size,
                            full_batches=True, progress=progress, desc=desc)
  out = np.asarray(out, np.float32)
  if not np.all(np.isfinite(out)):
    raise FloatingPointError(f"non-finite features for {desc}: check the backbone weights")
  return out, bounds


def cache_key(backbone: Backbone, spec: FeatureSpec, dataset: str, digest: str) -> dict:
  """Everything the cached features depend on.

  The cache holds every level of the backbone (each z-scored on its own), so any
  layer selection is an exact slice of one cached entry: `spec.layers` is not part
  of the key.
  """
  return {
      "backbone": backbone.name,
      "weights": backbone.weights_id,
      "resolution": spec.resolution or backbone.resolution,
      "levels": list(backbone.level_names),
      "pooling": spec.pooling,
      "normalisation": [list(backbone.mean), list(backbone.std)],
      "dataset": dataset,
      "images": digest,
  }


class FeatureCache(cache_lib.ArrayCache):
  """On-disk cache of extracted features: `<dir>/<dataset-slug>-<hash>.npz` ("z", "boundaries")."""

  def load(self, key: dict) -> Optional[tuple[np.ndarray, tuple[int, ...]]]:
    arrays = self.load_arrays(key)   # None if absent, damaged or non-finite (warned)
    if arrays is None:
      return None
    return arrays["z"], tuple(int(b) for b in arrays["boundaries"])

  def save(self, key: dict, z: np.ndarray, boundaries: Sequence[int]) -> str:
    return self.save_arrays(key, {"z": z, "boundaries": np.asarray(boundaries)})


def select_layers(z_all: np.ndarray, backbone: Backbone, layers: Sequence[int]
                  ) -> tuple[np.ndarray, tuple[int, ...]]:
  """Slices the given levels out of all-level features (exact: z-scores are per layer)."""
  all_bounds = boundaries_for(backbone.level_channels)
  parts = [z_all[:, all_bounds[i]:all_bounds[i + 1]] for i in layers]
  return (np.concatenate(parts, axis=1),
          boundaries_for([backbone.level_channels[i] for i in layers]))


def extract_cached(backbone: Backbone, images: np.ndarray, dataset: str,
                   cache: Optional[FeatureCache], batch_size: int = 64,
                   spec: FeatureSpec = FeatureSpec(), progress: bool = True
                   ) -> tuple[np.ndarray, tuple[int, ...], bool]:
  """`extract` through the cache. Returns (z, boundaries, was_cached).

  With a cache, all levels are extracted and stored once; the requested layers
  are sliced from them.
  """
  layers = resolve_layers(backbone, spec.layers)
  if cache is None:
    return (*extract(backbone, images, batch_size, spec, progress, desc=dataset), False)
  key = cache_key(backbone, spec, dataset, images_digest(np.asarray(images)))
  hit = cache.load(key)
  cached = hit is not None
  if cached:
    z_all = hit[0]
  else:
    all_spec = dataclasses.replace(spec, layers=tuple(range(len(backbone.level_names))))
    z_all, bounds = extract(backbone, images, batch_size, all_spec, progress, desc=dataset)
    cache.save(key, z_all, bounds)
  z, bounds = select_layers(z_all, backbone, layers)
  return z, bounds, cached


def extract_source(backbone: Backbone, source: str, cache: Optional[FeatureCache],
                   batch_size: int, spec: FeatureSpec, load_images: Callable,
                   count_images: Callable[[str], int], shard: bool = False
                   ) -> tuple[np.ndarray, tuple[int, ...], dict]:
  """(z [N, C], boundaries, timing info) for one data source, through the cache.

  `load_images(source, rows=None)` -> a `data.ImageSet`; `count_images(source)` -> N (no
  decoding). `shard`: in a multi-process job each process loads, extracts (and caches) only
  its `multihost.shard_range` of the images; the features are then all-gathered, so every
  process returns the same full [N, C] array.
  """
  t0 = time.time()
  if shard and jax.process_count() > 1:
    n = count_images(source)
    lo, hi = multihost.shard_range(n)
    images, name = load_images(source, rows=(lo, hi)).images, f"{source}[{lo}:{hi}]"
  else:
    images = load_images(source).images
    n, name = int(images.shape[0]), source
  t1 = time.time()
  z, bounds, cached = extract_cached(backbone, images, name, cache, batch_size, spec)
  if shard and jax.process_count() > 1:
    z = multihost.allgather_rows(z, n)
  dt = time.time() - t1
  info = {"num_images": n, "load_s": round(t1 - t0, 3),
          "features_s": round(dt, 3), "cached": cached}
  if not cached:
    info["features_images_per_s"] = round(images.shape[0] / max(dt, 1e-9), 2)
  logging.info("features of %s: %s (%s)", source, z.shape, info)
  return z, bounds, info
