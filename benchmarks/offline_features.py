"""The offline benchmarks' features: a config's backbone and the cached features of a source,
through the library (`dlsr_jax.backbones`, `dlsr_jax.data`, `dlsr_jax.features`)."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
from absl import logging

from dlsr_jax import backbones, data, features


def load_backbone(c):
  weights = None if c.weights in ("none", "", None) else c.weights
  return backbones.load(c.backbone, weights=weights, dtype=jnp.dtype(c.backbone_dtype),
                        normalisation=c.normalisation)


def source_features(c, backbone, source: str, cache) -> tuple[np.ndarray, dict]:
  """(features [N, C], timing info) of one data source, through the cache."""
  t0 = time.time()
  images = data.load_images(source, image_size=c.data.image_size or None,
                            tfds_data_dir=c.data.tfds_data_dir or None,
                            limit=c.data.limit or None).images
  t1 = time.time()
  spec = features.FeatureSpec(layers=tuple(c.layers) or None, pooling=c.pooling,
                              resolution=c.resolution or None)
  z, _, cached = features.extract_cached(backbone, images, source, cache,
                                         c.feature_batch_size, spec)
  dt = time.time() - t1
  info = {"num_images": int(images.shape[0]), "load_s": round(t1 - t0, 3),
          "features_s": round(dt, 3), "cached": cached}
  if not cached:
    info["features_images_per_s"] = round(images.shape[0] / max(dt, 1e-9), 2)
  logging.info("features of %s: %s (%s)", source, z.shape, info)
  return z, info
