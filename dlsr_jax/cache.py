"""On-disk cache of arrays computed from a data set: `<dir>/<slug>-<hash of the key>.npz`.

A key is a JSON-able dict of everything the arrays depend on. For a network's outputs:
`net_key(net name, weights id, data set name, images digest, array name)`, where the weights
id is a file hash or, for weights trained in this workdir, `params_digest(params)`. Backbone
features use `features.FeatureCache`, the same format with its own key.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Mapping, Optional

import jax
import numpy as np
from absl import logging

__all__ = ["ArrayCache", "images_digest", "net_key", "params_digest"]


def images_digest(images: np.ndarray) -> str:
  """Short content hash of an array (the data set part of a key)."""
  h = hashlib.sha256()
  h.update(str(images.shape).encode())
  h.update(np.ascontiguousarray(images).tobytes())
  return h.hexdigest()[:16]


def params_digest(params: Any) -> str:
  """Short content hash of a pytree of arrays (paths, shapes, dtypes and values)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.shape}:{a.dtype}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return "params-" + h.hexdigest()[:16]


def net_key(net: str, weights: str, dataset: str, digest: str, array: str) -> dict:
  """The key of one array ("logits", "pre_logits", ...) of network `net` on a data set."""
  return {"net": net, "weights": weights, "dataset": dataset, "images": digest, "array": array}


class ArrayCache:
  """Named numpy arrays per key, one `.npz` file each (written atomically)."""

  def __init__(self, directory: str, read_also: tuple[str, ...] = ()):
    """`read_also`: further folders read on a miss (never written), e.g. a training
    workdir's cache that an evaluation with its own output folder must not write into."""
    self.directory = directory
    self.read_also = tuple(read_also)

  def path(self, key: Mapping[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True).encode()
    digest = hashlib.sha256(blob).hexdigest()[:20]
    label = "_".join(str(key[k]) for k in ("net", "dataset", "array") if k in key) or "data"
    slug = "".join(c if c.isalnum() else "_" for c in label)[:60]
    return os.path.join(self.directory, f"{slug}-{digest}.npz")

  def load_arrays(self, key: Mapping[str, Any]) -> Optional[dict[str, np.ndarray]]:
    """The arrays stored under `key`; None if absent, damaged or holding NaN/inf.

    A damaged file (truncated, not an npz) or one with non-finite floating-point
    arrays is reported with its path in a warning and treated as a miss, so the
    arrays are computed again and the file is replaced. A file holding another
    key is an error.
    """
    p = self.path(key)
    for other in self.read_also:
      if not os.path.exists(p):
        p = os.path.join(other, os.path.basename(p))
    if not os.path.exists(p):
      return None
    try:
      with np.load(p) as f:
        stored = json.loads(str(f["key"]))
        arrays = {name: f[name] for name in f.files if name != "key"}
    except Exception as e:  # pylint: disable=broad-except  # zip, npy, json, key errors
      logging.warning("cache file %s is damaged (%s: %s): computing it again", p,
                      type(e).__name__, e)
      return None
    if stored != json.loads(json.dumps(key)):
      raise ValueError(f"cache file {p} holds a different key: {stored}")
    bad = sum(int(np.sum(~np.isfinite(a))) for a in arrays.values()
              if np.issubdtype(a.dtype, np.floating))
    if bad:
      logging.warning("cache file %s holds %d NaN/inf values: computing it again", p, bad)
      return None
    return arrays

  def save_arrays(self, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """Stores `arrays` under `key`; returns the file's path."""
    if "key" in arrays:
      raise ValueError("'key' is reserved in cache files")
    os.makedirs(self.directory, exist_ok=True)
    p = self.path(key)
    fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
      np.savez(fh, **arrays, key=json.dumps(key, sort_keys=True))
    os.replace(tmp, p)
    return p
