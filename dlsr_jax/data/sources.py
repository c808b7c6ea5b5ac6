"""The data-source grammar: `load_images` and `count_images` dispatch on it.

Data sources are named by strings:

  * ``npz:PATH`` -- a ``.npz`` file with ``images`` (uint8, [N, H, W, 3];
    grayscale [N, H, W] or [N, H, W, 1] is repeated to 3 channels) and optional
    ``labels`` (integer [N]; default -1).
  * ``folder:PATH`` -- image files (png/jpg/jpeg/bmp/gif/webp, any case), either
    flat in PATH (labels -1) or in class sub-folders (labels = index of the
    class folder in sorted order; files inside a class folder are found
    recursively).  Files are read in sorted path order and decoded with PIL to
    RGB (alpha dropped, first frame of animations).
  * ``tfds:NAME:SPLIT`` -- a TensorFlow Datasets dataset that is ALREADY
    prepared in the data dir, e.g. ``tfds:cifar10:test``,
    ``tfds:svhn_cropped:test``, ``tfds:mnist:test[:50%]``,
    ``tfds:cifar10:3.0.2:test`` (with a version).  Never downloads.
  * ``offline:NAME[:SPLIT]`` -- the small offline sets of
    `dlsr_jax.data.offline` (``digits``, ``letters``, ``photos``, ``noise``).

Resizing (all schemes): with ``image_size=None`` images keep their native size,
which must then be the same for all images of a source (else a ValueError asks
for ``image_size``).  With ``image_size=S`` every image whose size is not
``S x S`` is resized to ``S x S`` with PIL bicubic resampling (a straight,
aspect-changing resize; no crop); images already ``S x S`` are untouched.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from dlsr_jax.data import folder, npz, offline, tfds
from dlsr_jax.data._checks import check_pos_int, check_rows
from dlsr_jax.data.image_set import ImageSet, stack_images

SCHEMES = ("npz", "folder", "tfds", "offline")


def _take_rows(images: np.ndarray, labels: np.ndarray, rows: Optional[Tuple[int, int]],
               source: str) -> Tuple[np.ndarray, np.ndarray]:
  if rows is None:
    return images, labels
  check_rows(rows, images.shape[0], source)
  return images[rows[0]:rows[1]], labels[rows[0]:rows[1]]


def count_images(source: str, *, tfds_data_dir: Optional[str] = None,
                 limit: Optional[int] = None, image_key: str = "image") -> int:
  """How many images `load_images(source, limit=limit)` returns, without decoding them.

  Lets each process of a multi-host job load only its `rows` of a set.
  """
  if not isinstance(source, str) or ":" not in source:
    raise ValueError(f"data source must be 'SCHEME:...' with SCHEME one of {SCHEMES}, "
                     f"got {source!r}")
  if limit is not None:
    check_pos_int(limit, "limit")
  scheme, rest = source.split(":", 1)
  if scheme == "npz":
    n = npz.count(rest)
  elif scheme == "folder":
    n = len(folder.list_folder(rest)[0])
  elif scheme == "tfds":
    n = tfds.count(rest, tfds_data_dir, image_key)
  elif scheme == "offline":
    n = len(load_images(source))
  else:
    raise ValueError(f"unknown data source scheme {scheme!r} in {source!r}; "
                     f"valid schemes: {', '.join(s + ':' for s in SCHEMES)}")
  return n if limit is None else min(n, limit)


def _check_not_empty(images: np.ndarray, source: str) -> None:
  if images.shape[0] == 0:
    raise ValueError(f"data source {source!r} contains no images")


def load_images(source: str, *, image_size: Optional[int] = None,
                tfds_data_dir: Optional[str] = None, limit: Optional[int] = None,
                image_key: str = "image", rows: Optional[Tuple[int, int]] = None) -> ImageSet:
  """Loads an image source into host memory.

  Args:
    source: ``npz:PATH``, ``folder:PATH``, ``tfds:NAME:SPLIT`` or
      ``offline:NAME[:SPLIT]`` (see the module docstring).
    image_size: None to keep native sizes (which must agree), or S to resize
      every image to S x S (PIL bicubic).
    tfds_data_dir: TFDS data dir for ``tfds:`` sources (None: TFDS default).
    limit: keep only the first `limit` examples (deterministic order).
    image_key: image feature name for ``tfds:`` sources.
    rows: (start, stop): keep only rows [start, stop) of the set (after
      `limit`); folder and TFDS sources then read (and resize) only those.
      Used by multi-host jobs, each process loading its own shard.

  Returns:
    An `ImageSet` with images [N, H, W, 3] uint8, labels [N] int64 (-1 if
    unknown) and name = `source`.
  """
  if not isinstance(source, str) or ":" not in source:
    raise ValueError(f"data source must be 'SCHEME:...' with SCHEME one of {SCHEMES}, "
                     f"got {source!r}")
  for value, arg in ((image_size, "image_size"), (limit, "limit")):
    if value is not None:
      check_pos_int(value, arg)
  if rows is not None:
    rows = tuple(int(r) for r in rows)
    if len(rows) != 2 or not 0 <= rows[0] < rows[1]:
      raise ValueError(f"rows must be (start, stop) with 0 <= start < stop, got {rows}")
  scheme, rest = source.split(":", 1)
  if scheme == "npz":
    images, labels = npz.load(rest, limit)
    images, labels = _take_rows(images, labels, rows, source)
    _check_not_empty(images, source)
    if image_size is not None:
      images = stack_images(list(images), image_size, source)
  elif scheme == "folder":
    images, labels = folder.load(rest, image_size, limit, rows)
  elif scheme == "tfds":
    images, labels = tfds.load(rest, image_size, tfds_data_dir, limit, image_key, rows)
  elif scheme == "offline":
    name, _, split = rest.partition(":")
    s = offline.load(name, split or None)
    images, labels = s.images, s.labels
    if limit is not None:
      images, labels = images[:limit], labels[:limit]
    images, labels = _take_rows(images, labels, rows, source)
    _check_not_empty(images, source)
    if image_size is not None:
      images = stack_images(list(images), image_size, source)
  else:
    raise ValueError(f"unknown data source scheme {scheme!r} in {source!r}; "
                     f"valid schemes: {', '.join(s + ':' for s in SCHEMES)}")
  _check_not_empty(images, source)
  return ImageSet(images=np.ascontiguousarray(images), labels=labels, name=source)


def same_source(a: str, b: str) -> bool:
  """Whether two data sources name the same data: equal strings, or npz / folder paths that
  resolve to the same file (`./`, `..`, symlinks). (Copies under other names are found by
  their images' digest when the arrays are loaded: `experiments/runner.py`.)"""
  if a == b:
    return True
  (sa, _, pa), (sb, _, pb) = a.partition(":"), b.partition(":")
  if sa != sb or sa not in ("npz", "folder"):
    return False
  return os.path.realpath(os.path.expanduser(pa)) == os.path.realpath(os.path.expanduser(pb))
