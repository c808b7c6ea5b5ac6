"""``npz:PATH`` sources: a ``.npz`` file with ``images`` and optional ``labels``."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from dlsr_jax.data.image_set import to_rgb_uint8


def load(path: str, limit: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz file not found: {path}")
  with np.load(path, allow_pickle=False) as z:
    if "images" not in z.files:
      raise ValueError(f"npz file {path} has no 'images' array (keys: {sorted(z.files)})")
    try:
      images = z["images"] if limit is None else z["images"][:limit]
      labels = None
      if "labels" in z.files:
        labels = z["labels"] if limit is None else z["labels"][:limit]
    except ValueError as e:   # object arrays (pickles) are never loaded
      raise ValueError(f"npz file {path}: {e} ('images' and 'labels' must be plain numeric "
                       "arrays, not object arrays)") from None
  images = to_rgb_uint8(images, f"npz file {path}")
  if labels is None:
    labels = np.full((images.shape[0],), -1, np.int64)
  else:
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (images.shape[0],):
      raise ValueError(
          f"npz file {path}: 'labels' must be an integer array of shape "
          f"[{images.shape[0]}], got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
  return images, labels


def count(path: str) -> int:
  """Rows of the 'images' array of an .npz file, from its header (no data read)."""
  import zipfile  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz file not found: {path}")
  with zipfile.ZipFile(path) as zf:
    if "images.npy" not in zf.namelist():
      raise ValueError(f"npz file {path} has no 'images' array")
    with zf.open("images.npy") as f:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape = read(f)[0]
  if not shape:
    raise ValueError(f"npz file {path}: 'images' is a scalar")
  return int(shape[0])
