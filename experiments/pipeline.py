"""Config -> library calls: the composition behind the experiment entry points.

Everything that knows about ConfigDicts, workdirs and files lives here and in
the entry points; `dlsr_jax` itself takes frozen dataclasses and arrays.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dlsr_jax import (backbones, data, diffusion, features, lfdn, multihost, schedule, scoring,
                      trainer)
from dlsr_jax import train as train_lib
from dlsr_jax.evaluation import arrays
from experiments import workdir as workdir_lib


# ----------------------------------------------------------------- configs --
def feature_spec(c) -> features.FeatureSpec:
  return features.FeatureSpec(layers=tuple(c.layers) or None, pooling=c.pooling,
                              resolution=c.resolution or None)


def schedule_config(c) -> schedule.ScheduleConfig:
  s = c.schedule
  return schedule.ScheduleConfig(kind=s.kind, num_steps=s.num_steps,
                                 beta_start=s.beta_start, beta_end=s.beta_end)


def model_config(c, num_features: int) -> lfdn.LFDNConfig:
  m = c.model
  return lfdn.LFDNConfig(features=num_features, width=m.width, embed_dim=m.embed_dim,
                         num_blocks=m.num_blocks, dropout=m.dropout,
                         use_time_embedding=m.use_time_embedding, dtype=m.dtype)


def optim_config(c) -> train_lib.OptimConfig:
  o = c.optim
  return train_lib.OptimConfig(learning_rate=o.learning_rate, weight_decay=o.weight_decay,
                               warmup_steps=o.warmup_steps,
                               grad_clip_norm=o.grad_clip_norm or None, ema_decay=o.ema_decay)


def fit_config(c) -> trainer.FitConfig:
  t = c.train
  return trainer.FitConfig(batch_size=t.batch_size, num_epochs=t.num_epochs, seed=c.seed,
                           log_every_steps=t.log_every_steps,
                           checkpoint_every_epochs=t.checkpoint_every_epochs,
                           checkpoint_every_steps=t.checkpoint_every_steps,
                           lr_reference_steps=t.lr_reference_steps,
                           keep_steps=tuple(int(s) for s in t.keep_steps))


def score_config(c, boundaries) -> scoring.ScoreConfig:
  e = c.eval
  return scoring.ScoreConfig(
      boundaries=tuple(boundaries),
      ddim=diffusion.DDIMConfig(stride=e.stride, eta=e.eta, release_compat=e.release_compat),
      num_draws=e.num_draws, mfsim_skip_first=e.release_compat)


# ---------------------------------------------------------- data/features --
def load_backbone(c) -> backbones.Backbone:
  weights = None if c.weights in ("none", "", None) else c.weights
  return backbones.load(c.backbone, weights=weights, dtype=jnp.dtype(c.backbone_dtype),
                        normalisation=c.normalisation)


def cache_dir(c, workdir: str) -> str:
  return c.cache_dir or os.path.join(workdir, "feature_cache")


def load_source(c, source: str, rows: Optional[tuple[int, int]] = None) -> data.ImageSet:
  return data.load_images(source, image_size=c.data.image_size or None,
                          tfds_data_dir=c.data.tfds_data_dir or None,
                          limit=c.data.limit or None, rows=rows)


def count_source(c, source: str) -> int:
  return data.count_images(source, tfds_data_dir=c.data.tfds_data_dir or None,
                           limit=c.data.limit or None)


def source_features(c, backbone, source: str, cache,
                    shard: bool = False) -> tuple[np.ndarray, tuple, dict]:
  """(z [N, C], boundaries, timing info) for one data source, through the cache.

  `shard`: in a multi-process job each process loads, extracts (and caches)
  only its `multihost.shard_range` of the images; the features are then
  all-gathered, so every process returns the same full [N, C] array.
  """
  t0 = time.time()
  if shard and jax.process_count() > 1:
    n = count_source(c, source)
    lo, hi = multihost.shard_range(n)
    images, name = load_source(c, source, rows=(lo, hi)).images, f"{source}[{lo}:{hi}]"
  else:
    images = load_source(c, source).images
    n, name = int(images.shape[0]), source
  t1 = time.time()
  z, bounds, cached = features.extract_cached(backbone, images, name, cache,
                                              c.feature_batch_size, feature_spec(c))
  if shard and jax.process_count() > 1:
    z = multihost.allgather_rows(z, n)
  dt = time.time() - t1
  info = {"num_images": n, "load_s": round(t1 - t0, 3),
          "features_s": round(dt, 3), "cached": cached}
  if not cached:
    info["features_images_per_s"] = round(images.shape[0] / max(dt, 1e-9), 2)
  logging.info("features of %s: %s (%s)", source, z.shape, info)
  return z, bounds, info


def array_store(c, workdir: str, sources, shard_train: bool = False,
                write_to: Optional[str] = None) -> arrays.ArrayStore:
  """The run's `ArrayStore` of `sources`. `write_to`: where new cache entries go (default
  `cache_dir(c, workdir)`, which is then still read): an evaluation writing to its own
  --outdir writes nothing into the workdir."""
  default = cache_dir(c, workdir)
  write = write_to or default
  return arrays.ArrayStore(
      sources, load_images=lambda source, rows=None: load_source(c, source, rows),
      count_images=lambda source: count_source(c, source),
      load_backbone=lambda: load_backbone(c), feature_spec=feature_spec(c),
      feature_batch_size=c.feature_batch_size, cache_dir=write,
      read_also=() if write == default else (default,),
      classifier_batch_size=c.eval.get("classifier_batch_size", 256), shard_train=shard_train)


def feature_boundaries(c, backbone) -> tuple[int, ...]:
  layers = features.resolve_layers(backbone, tuple(c.layers) or None)
  return features.boundaries_for([backbone.level_channels[i] for i in layers])


# ------------------------------------------------------------------- train --
def write_config(c, workdir: str) -> None:
  """Records `c` in `workdir/config.json`; raises if it differs in a guarded key."""
  workdir_lib.record_config(c, workdir)


def seed_runs(c, workdir: str) -> list[tuple[object, str]]:
  """(config, workdir) of every training run of `c`.

  Without `c.seeds`: `c` itself in `workdir`. With `c.seeds = (s0, s1, ...)`: a
  copy with `seed = s_i` in `<workdir>/seed_<s_i>/` each, all sharing the
  feature cache of `workdir`.
  """
  seeds = [int(s) for s in (c.get("seeds") or ())]
  if not seeds:
    return [(c, workdir)]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {seeds}")
  runs = []
  for s in seeds:
    cs = c.copy_and_resolve_references()
    with cs.unlocked():
      cs.seed, cs.seeds, cs.cache_dir = s, (), cache_dir(c, workdir)
    runs.append((cs, os.path.join(workdir, f"seed_{s}")))
  return runs


def lr_reference_step(c) -> int:
  """The step of the LR score's reference checkpoint for config `c`.

  `train.lr_reference_steps` (0 = one epoch of the training set, counted
  without loading it).
  """
  if c.train.lr_reference_steps:
    return int(c.train.lr_reference_steps)
  return count_source(c, c.data.train) // c.train.batch_size


def restore_ema(c, workdir: str, num_features: int, reference_step: Optional[int] = None):
  """EMA params of the final checkpoint in `workdir`, or of a kept reference step."""
  from dlsr_jax.detectors import dlsr  # pylint: disable=g-import-not-at-top
  return dlsr.restore_ema(workdir, model_config(c, num_features), optim_config(c),
                          reference_step)


def release_config(c, model: lfdn.LFDNConfig, reference_step: Optional[int]):
  """`c` with a converted release LFDN's sizes, `eval.release_compat` and (with a first
  checkpoint) `train.lr_reference_steps` at its step: the config its workdir records."""
  c = c.copy_and_resolve_references()  # unlocked copy
  c.model.width, c.model.embed_dim = model.width, model.embed_dim
  c.model.num_blocks, c.model.use_time_embedding = model.num_blocks, model.use_time_embedding
  c.eval.release_compat = True
  if reference_step is not None:
    c.train.lr_reference_steps = reference_step
  return c


# ---------------------------------------------------------------- settings --
def settings_summary(c, backbone, bounds) -> dict:
  return {
      "backbone": backbone.name, "weights": backbone.weights_id,
      "resolution": c.resolution or backbone.resolution, "layers": list(c.layers) or "default",
      "normalisation": f"{c.normalisation}: mean {[round(m, 4) for m in backbone.mean]}, "
                       f"std {[round(v, 4) for v in backbone.std]}",
      "pooling": c.pooling, "feature_dim": int(bounds[-1]), "boundaries": list(bounds),
      "lfdn": f"W={c.model.width} E={c.model.embed_dim} N={c.model.num_blocks}",
      "train": f"{c.train.num_epochs} epochs, batch {c.train.batch_size}, "
               f"lr {c.optim.learning_rate}, wd {c.optim.weight_decay}, ema {c.optim.ema_decay}",
      "ddim": f"stride {c.eval.stride}, eta {c.eval.eta}, release_compat {c.eval.release_compat}",
      "num_draws": c.eval.num_draws, "lr_orientation": c.eval.lr_orientation,
      "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
  }
