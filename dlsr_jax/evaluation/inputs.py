"""How a run loads its images, its frozen backbone and its feature cache, as plain values.

`Inputs` is what an experiment config's data / backbone / feature keys become
(`experiments.build.inputs`); the functions below load what it names: images of a source,
their count, the backbone, the features of a source through the cache, and the
`arrays.ArrayStore` of a run's data sets. A Python user can fill an `Inputs` by hand.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax import backbones, data, features
from dlsr_jax.evaluation import arrays


@dataclasses.dataclass(frozen=True)
class Inputs:
  """How a run loads its images and the frozen backbone, and where its features are cached.

  Attributes:
    backbone, weights, backbone_dtype, normalisation: `backbones.load`'s arguments (weights
      None = random init).
    layers, pooling, resolution: the features (`feature_spec`; () = the backbone's default
      levels, resolution 0 = the backbone's own).
    feature_batch_size, classifier_batch_size: batch sizes of extraction / classifier passes.
    image_size, tfds_data_dir, limit: `data.load_images`' settings (0 / "" = none).
    cache_dir: the feature cache ("" = <workdir>/feature_cache).
  """
  backbone: str = "efficientnet_lite0"
  weights: Optional[str] = "imagenet"
  backbone_dtype: str = "float32"
  normalisation: str = "native"
  layers: tuple[int, ...] = ()
  pooling: str = "gap"
  resolution: int = 0
  feature_batch_size: int = 64
  classifier_batch_size: int = 256
  image_size: int = 0
  tfds_data_dir: str = ""
  limit: int = 0
  cache_dir: str = ""

  @property
  def feature_spec(self) -> features.FeatureSpec:
    """The library's feature settings (checked when made: build leaves the checks to
    `validate`, which lists every problem at once)."""
    return features.FeatureSpec(layers=tuple(self.layers) or None, pooling=self.pooling,
                                resolution=self.resolution or None)


def load_source(inputs: Inputs, source: str,
                rows: Optional[tuple[int, int]] = None) -> data.ImageSet:
  return data.load_images(source, image_size=inputs.image_size or None,
                          tfds_data_dir=inputs.tfds_data_dir or None,
                          limit=inputs.limit or None, rows=rows)


def count_source(inputs: Inputs, source: str) -> int:
  return data.count_images(source, tfds_data_dir=inputs.tfds_data_dir or None,
                           limit=inputs.limit or None)


def load_backbone(inputs: Inputs) -> backbones.Backbone:
  weights = None if inputs.weights in ("none", "", None) else inputs.weights
  return backbones.load(inputs.backbone, weights=weights,
                        dtype=jnp.dtype(inputs.backbone_dtype),
                        normalisation=inputs.normalisation)


def cache_dir(inputs: Inputs, workdir: str) -> str:
  return inputs.cache_dir or os.path.join(workdir, "feature_cache")


def source_features(inputs: Inputs, backbone, source: str, cache,
                    shard: bool = False) -> tuple[np.ndarray, tuple, dict]:
  """(z [N, C], boundaries, timing info) of one data source (`features.extract_source`;
  `shard`: each process extracts its rows only, then all-gathers)."""
  return features.extract_source(backbone, source, cache, inputs.feature_batch_size,
                                 inputs.feature_spec, _loader(inputs),
                                 lambda s: count_source(inputs, s), shard)


def _loader(inputs: Inputs) -> Callable[..., data.ImageSet]:
  return lambda source, rows=None: load_source(inputs, source, rows)


def array_store(inputs: Inputs, workdir: str, sources, shard_train: bool = False,
                write_to: Optional[str] = None) -> arrays.ArrayStore:
  """The run's `ArrayStore` of `sources`. `write_to`: where new cache entries go (default
  `cache_dir(inputs, workdir)`, which is then still read): an evaluation writing to its own
  --outdir writes nothing into the workdir."""
  default = cache_dir(inputs, workdir)
  write = write_to or default
  return arrays.ArrayStore(
      sources, load_images=_loader(inputs), count_images=lambda s: count_source(inputs, s),
      load_backbone=lambda: load_backbone(inputs), feature_spec=inputs.feature_spec,
      feature_batch_size=inputs.feature_batch_size, cache_dir=write,
      read_also=() if write == default else (default,),
      classifier_batch_size=inputs.classifier_batch_size, shard_train=shard_train)


def settings_summary(inputs: Inputs, summary: Mapping[str, Any], backbone) -> dict:
  """The results' settings line: the backbone and its features (`inputs`, `backbone`), the
  LFDN's settings (`summary`, `Plan.summary`) and the devices."""
  layers = features.resolve_layers(backbone, tuple(inputs.layers) or None)
  bounds = features.boundaries_for([backbone.level_channels[i] for i in layers])
  return {
      "backbone": backbone.name, "weights": backbone.weights_id,
      "resolution": inputs.resolution or backbone.resolution,
      "layers": list(inputs.layers) or "default",
      "normalisation": f"{inputs.normalisation}: mean {[round(m, 4) for m in backbone.mean]}, "
                       f"std {[round(v, 4) for v in backbone.std]}",
      "pooling": inputs.pooling, "feature_dim": int(bounds[-1]), "boundaries": list(bounds),
      **summary,
      "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
  }
