"""Shared helpers of the feature detectors: input validation and chunked jitted scoring."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.data import batching

HIGHEST = jax.lax.Precision.HIGHEST   # full-precision float32 matmuls


def as_features(z: ArrayLike, name: str, dim: int | None = None, min_rows: int = 1,
                 dtype=np.float64) -> np.ndarray:
  """Converts to a finite 2-D array [N, C] of `dtype` or raises ValueError."""
  try:
    a = np.asarray(z, dtype=dtype)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a numeric feature array [N, C]: {e}") from e
  if a.ndim != 2:
    raise ValueError(f"{name} must be a 2-D feature array [N, C], got shape {a.shape}")
  if a.shape[0] < min_rows:
    raise ValueError(f"{name} needs at least {min_rows} row(s), got shape {a.shape}")
  if a.shape[1] == 0:
    raise ValueError(f"{name} has no feature columns (shape {a.shape})")
  if dim is not None and a.shape[1] != dim:
    raise ValueError(f"{name} has {a.shape[1]} features but the model was fitted on {dim}")
  bad = ~np.isfinite(a)
  if bad.any():
    rows = np.unique(np.nonzero(bad)[0])
    raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) in "
                     f"{rows.size} row(s) (first: row {int(rows[0])})")
  return a


def check_chunk_size(chunk_size: int) -> None:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def chunked(fn: Callable[..., jax.Array], args: tuple, z: np.ndarray,
            chunk_size: int) -> np.ndarray:
  """Applies jitted `fn(*args, z_chunk [B, C]) -> [B]` over rows of z (float32).

  Chunks have exactly min(chunk_size, M) rows (the last is padded by repeating
  its final row, `batching.map_padded`), so every call reuses one compile.
  """
  check_chunk_size(chunk_size)
  out = batching.map_padded(lambda chunk: fn(*args, chunk), z, chunk_size)
  return np.asarray(out, np.float32)
