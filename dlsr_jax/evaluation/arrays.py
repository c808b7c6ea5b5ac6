"""Per-(net, data set) arrays, each computed at most once and cached on disk.

`ArrayStore.get(net, set, keys)` returns the asked arrays of one data set as seen by one net:
"images" and "labels" straight from the data, "features" of the frozen backbone (the feature
cache), "logits" / "pre_logits" of a classifier or head net (an `ArrayCache` keyed by the net's
name, a hash of its params, the data set and its content digest, and the array name). Every
array is memoised, so a second row reading it costs nothing. The store takes plain values and
functions (how to load a source's images, the backbone, the feature settings), never a config.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from absl import logging

from dlsr_jax import cache as cache_lib
from dlsr_jax import data, features, multihost
from dlsr_jax.evaluation.evaluate import forward
from dlsr_jax.models.net import Net

BACKBONE = "backbone"   # the frozen feature extractor's name among the nets
# Arrays a net computes (the ones a given net provides: `Net.outputs`).
NET_ARRAYS = ("logits", "pre_logits", "confidence")
VAL, OOD_VAL = "val", "ood_val"   # the store's names of data.val (a source) and data.ood_val


class ArrayStore:
  """The arrays of every (net, data set) pair of one run.

  Attributes:
    sources: {set name: data source} ("train", "id" and every OOD set).
    nets: {net name: `Net`} of the classifier and head nets (set once trained / restored).
    timing: per data set: loading and feature extraction info.
    computed: counts of (net, set, "forward" | "features") computations (for tests).
  """

  def __init__(self, sources: Mapping[str, str], *,
               load_images: Callable[..., data.ImageSet],
               count_images: Callable[[str], int],
               load_backbone: Callable[[], object],
               feature_spec: features.FeatureSpec, feature_batch_size: int,
               cache_dir: str, read_also: Sequence[str] = (),
               classifier_batch_size: int = 256, shard_train: bool = False):
    """
    Args:
      sources: {set name: data source}.
      load_images: `load_images(source, rows=None)` -> `data.ImageSet` (rows: (lo, hi)).
      count_images: `count_images(source)` -> the number of images (no decoding).
      load_backbone: returns the frozen backbone (called once, when features are needed).
      feature_spec, feature_batch_size: how features are extracted.
      cache_dir: where new cache entries go; `read_also`: other caches that are read.
      classifier_batch_size: the batch of a net's forward pass.
      shard_train: in a multi-process job each process extracts its shard of "train".
    """
    self.sources = dict(sources)
    self.nets: dict[str, Net] = {}
    self.kinds: dict[str, str] = {BACKBONE: BACKBONE}
    self._weights: dict[str, str] = {}   # net -> hash of its params (part of the cache key)
    self.timing: dict[str, dict] = {}
    self.computed: collections.Counter = collections.Counter()
    self._load_images, self._count_images = load_images, count_images
    self._load_backbone = load_backbone
    self._feature_spec, self._feature_batch_size = feature_spec, feature_batch_size
    self._classifier_batch_size = classifier_batch_size
    self._shard_train = shard_train
    self._backbone = None
    self._images: dict[str, data.ImageSet] = {}
    self._memo: dict[tuple[str, str, str], np.ndarray] = {}
    self._feature_cache = features.FeatureCache(cache_dir, read_also=tuple(read_also))
    self._net_cache = cache_lib.ArrayCache(os.path.join(cache_dir, "nets"),
                                           read_also=tuple(os.path.join(d, "nets")
                                                           for d in read_also))

  @property
  def backbone(self):
    if self._backbone is None:
      self._backbone = self._load_backbone()
    return self._backbone

  def add_net(self, name: str, kind: str, net: Net) -> None:
    self.nets[name], self.kinds[name] = net, kind
    self._weights[name] = cache_lib.params_digest(net.params)

  def image_set(self, name: str) -> data.ImageSet:
    if name not in self._images:
      t0 = time.time()
      self._images[name] = self._load_images(self.sources[name])
      self.timing.setdefault(name, {})["load_s"] = round(time.time() - t0, 3)
    return self._images[name]

  def get(self, net: str, set_name: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays `keys` of data set `set_name` as net `net` sees them."""
    return {k: self._array(net, set_name, k) for k in keys}

  def _array(self, net: str, set_name: str, key: str) -> np.ndarray:
    owner = net if key in NET_ARRAYS else BACKBONE   # raw data and features are shared
    memo = (owner, set_name, key)
    if memo not in self._memo:
      if key == "images":
        self._memo[memo] = self.image_set(set_name).images
      elif key == "labels":
        self._memo[memo] = self.image_set(set_name).labels
      elif key == "features":
        self._memo[memo] = self._features(set_name)
      elif key in NET_ARRAYS:
        self._memo.update({(owner, set_name, k): v
                           for k, v in self._net_arrays(owner, set_name).items()})
        if memo not in self._memo:
          raise ValueError(f"net {owner!r} does not provide {key!r} (it provides "
                           f"{self.nets[owner].outputs})")
      else:
        raise ValueError(f"unknown array {key!r}")
    return self._memo[memo]

  def _features(self, set_name: str) -> np.ndarray:
    self.computed[(BACKBONE, set_name, "features")] += 1
    source = self.sources[set_name]
    t0 = time.time()
    if self._shard_train and set_name == "train" and jax.process_count() > 1:
      n = self._count_images(source)   # each process extracts only its shard, then gathers
      lo, hi = multihost.shard_range(n)
      images, name = self._load_images(source, rows=(lo, hi)).images, f"{source}[{lo}:{hi}]"
    else:
      images, name = self.image_set(set_name).images, source
      n = int(images.shape[0])
    t1 = time.time()
    z, _, cached = features.extract_cached(self.backbone, images, name, self._feature_cache,
                                           self._feature_batch_size, self._feature_spec)
    if name != source:
      z = multihost.allgather_rows(z, n)
    dt = time.time() - t1
    info = {"num_images": n, "features_s": round(dt, 3), "cached": cached}
    if name != source:
      info = {"num_images": n, "load_s": round(t1 - t0, 3), **info}
      if not cached:
        info["features_images_per_s"] = round(images.shape[0] / max(dt, 1e-9), 2)
    self.timing.setdefault(set_name, {}).update(info)
    logging.info("features of %s: %s (%s)", set_name, z.shape, info)
    return z

  def _net_arrays(self, net: str, set_name: str) -> dict[str, np.ndarray]:
    """logits and pre_logits of `net` on a set, through the disk cache."""
    model = self.nets[net]
    x = self._array(BACKBONE, set_name, "features" if self.kinds[net] == "head" else "images")
    if any(k not in NET_ARRAYS for k in model.outputs):
      raise ValueError(f"net {net!r} outputs {model.outputs}; arrays a net may provide: "
                       f"{NET_ARRAYS}")
    keys = {k: cache_lib.net_key(net, self._weights[net], self.sources[set_name],
                                 cache_lib.images_digest(x), k)
            for k in model.outputs}
    hits = {k: self._net_cache.load_arrays(key) for k, key in keys.items()}
    if all(h is not None for h in hits.values()):
      return {k: h["array"] for k, h in hits.items()}
    self.computed[(net, set_name, "forward")] += 1
    out = forward(model, x, self._classifier_batch_size)
    if jax.process_index() == 0:
      for k, key in keys.items():
        self._net_cache.save_arrays(key, {"array": out[k]})
    return out


class StoreArrays(Mapping):
  """The arrays of one (net, data set) as lazy `SetArrays`: each is computed (or read from
  the caches) when a detector first reads it."""

  def __init__(self, store: ArrayStore, net: str, set_name: str, keys: tuple[str, ...]):
    self._store, self._net, self._set, self._keys = store, net, set_name, tuple(keys)

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._keys:
      raise KeyError(key)
    return self._store.get(self._net, self._set, [key])[key]

  def __iter__(self):
    return iter(self._keys)

  def __len__(self) -> int:
    return len(self._keys)


class SubsetArrays(Mapping):
  """Some rows of lazy `SetArrays` (a holdout split), still read lazily."""

  def __init__(self, arrays: Mapping, rows: np.ndarray):
    self._arrays, self._rows = arrays, rows

  def __getitem__(self, key: str) -> np.ndarray:
    return np.asarray(self._arrays[key])[self._rows]

  def __iter__(self):
    return iter(self._arrays)

  def __len__(self) -> int:
    return len(self._arrays)


def split_arrays(store: ArrayStore, net: str, set_name: str, keys: Sequence[str],
                 holdout: Optional[Callable[[int], tuple[np.ndarray, np.ndarray]]] = None
                 ) -> Mapping:
  """A net's lazy arrays of a set of the store. `holdout` (when the ID validation set is a
  holdout of "train"): n -> (train rows, validation rows) of the n rows of "train"; then
  "train" is without the held-out rows and `VAL` is them."""
  if holdout is not None and set_name in ("train", VAL):
    n = len(store.get(BACKBONE, "train", ["labels"])["labels"])
    return SubsetArrays(StoreArrays(store, net, "train", keys),
                        holdout(n)[int(set_name == VAL)])
  return StoreArrays(store, net, set_name, keys)


def fit_arrays(store: ArrayStore, net: str, fit_set: str, keys: Sequence[str], trains: bool,
               holdout: Optional[Callable[[int], tuple[np.ndarray, np.ndarray]]] = None
               ) -> Mapping:
  """The arrays a detector row is fitted on: the whole "train" set when its fit trains
  (DLSR's fit is its training run), else `split_arrays` of its fit set."""
  if trains:
    return StoreArrays(store, net, "train", keys)
  return split_arrays(store, net, fit_set, keys, holdout)


def accuracy(store: ArrayStore, net: str, set_name: str = "id") -> Optional[float]:
  """Top-1 accuracy of a classifier net on a labelled set (None without labels)."""
  labels = store.get(net, set_name, ["labels"])["labels"]
  if labels.size == 0 or np.any(labels < 0):
    return None
  logits = store.get(net, set_name, ["logits"])["logits"]
  return float(np.mean(np.argmax(logits, -1) == labels))
