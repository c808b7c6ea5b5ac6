"""SHE, simplified Hopfield energy (Zhang et al., ICLR 2023), OpenOOD's inner-product form.

Fit on the ID training set: s_c = the mean pooled feature over the fit samples with label c
that the classifier also predicts as c (correctly classified only). Score: -<z, s_top>, with
top = argmax of the logits; higher = more OOD. Scoring is jitted, float32 with full-precision
products, in fixed-size chunks of rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.data import batching
from dlsr_jax.detectors import _features, base

__all__ = ["fit_she", "make", "she_score"]


def fit_she(z_train: ArrayLike, logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """The per-class mean feature of the correctly classified fit samples.

  Args:
    z_train: [N, D] pooled features (finite).
    logits: [N, K] their logits.
    labels: [N] integer class indices in [0, K).

  Returns:
    [K, D] float32 class patterns s_c.

  Raises:
    ValueError: bad or misaligned arrays, or a class with no correctly classified fit sample.
  """
  z = _features.as_features(z_train, "she: pre_logits")
  l = _features.as_features(logits, "she: logits", dtype=np.float32)
  n, k = l.shape
  y = np.asarray(labels)
  if z.shape[0] != n or y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"she: labels must be integers [N] and pre_logits [N, D] with N = {n} (the "
                     f"rows of logits), got labels {y.dtype} {y.shape}, pre_logits {z.shape}")
  if y.min() < 0 or y.max() >= k:
    raise ValueError(f"she: labels must be class indices in [0, {k}) of the {k} logits, got "
                     f"values in [{y.min()}, {y.max()}]")
  right = np.argmax(l, axis=1) == y
  counts = np.bincount(y[right], minlength=k)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(f"she: class(es) {empty.tolist()[:20]} ({empty.size} of {k}) have no "
                     f"correctly classified fit sample ({int(right.sum())} of {n} are), so "
                     "their patterns are undefined")
  sums = np.zeros((k, z.shape[1]))
  np.add.at(sums, y[right], z[right])
  return jnp.asarray(sums / counts[:, None], jnp.float32)


@jax.jit
def _she_chunk(patterns: jax.Array, logits: jax.Array, z: jax.Array) -> jax.Array:
  s = patterns[jnp.argmax(logits, axis=-1)]                                   # [B, D]
  return -jnp.einsum("bd,bd->b", z, s, precision=_features.HIGHEST)


def she_score(patterns: jax.Array, logits: ArrayLike, z: ArrayLike,
              chunk_size: int = 4096) -> np.ndarray:
  """Minus the inner product of each feature with its predicted class's pattern.

  Args:
    patterns: [K, D] from `fit_she`.
    logits: [M, K] logits (their argmax picks the pattern).
    z: [M, D] pooled features.
    chunk_size: rows per jitted call.

  Returns:
    [M] float32 numpy scores; higher = more OOD.
  """
  k, d = np.shape(patterns)
  l = _features.as_features(logits, "logits", dim=k, dtype=np.float32)
  x = _features.as_features(z, "pre_logits", dim=d, dtype=np.float32)
  _features.check_chunk_size(chunk_size)
  out = batching.map_padded(lambda lb, zb: _she_chunk(patterns, lb, zb), (l, x), chunk_size)
  return np.asarray(out, np.float32)


def make(chunk_size: int = 4096) -> base.Detector:
  """SHE on the logits (for the predicted class) and the pooled features ("pre_logits").

  Args:
    chunk_size: rows per jitted scoring call.

  Returns:
    A `Detector` reading ("logits", "pre_logits") with score {"she": [N] float32}; fit also
    reads "labels" (OpenOOD: the ID training set).
  """
  _features.check_chunk_size(chunk_size)

  def fit(arrays: base.SetArrays, key: jax.Array) -> jax.Array:
    del key   # deterministic
    return fit_she(arrays["pre_logits"], arrays["logits"], arrays["labels"])

  def score(state: jax.Array, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    return {"she": she_score(state, arrays["logits"], arrays["pre_logits"], chunk_size)}

  return base.Detector(name="she", reads=("logits", "pre_logits"), fit=fit, score=score,
                       fit_reads=("logits", "pre_logits", "labels"))
