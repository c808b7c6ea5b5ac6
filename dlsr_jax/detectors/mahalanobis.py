"""Mahalanobis detector: one Gaussian fitted on ID training features.

The score is the squared Mahalanobis distance ``(z - mean)^T P (z - mean)`` with P the
precision of the (optionally shrunk) covariance; higher = more OOD. Identical to
``sklearn.covariance.EmpiricalCovariance().fit(z_train).mahalanobis(z)``
(``ShrunkCovariance(shrinkage=alpha)`` with shrinkage, ``LedoitWolf()`` with
``"ledoit_wolf"``). Fitting runs on the host in float64 numpy; scoring is jitted, in float32
with full-precision matmuls, in fixed-size chunks of rows.
"""

from __future__ import annotations

from typing import Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _features

__all__ = ["LEDOIT_WOLF", "MahalanobisModel", "Shrinkage", "fit_mahalanobis",
           "mahalanobis_score"]

Shrinkage = Union[float, str]
LEDOIT_WOLF = "ledoit_wolf"


@flax.struct.dataclass
class MahalanobisModel:
  """A Gaussian fitted on ID features (a frozen pytree).

  Attributes:
    mean: [C] float32 feature mean.
    precision: [C, C] float32 inverse of the (shrunk) covariance.
    shrinkage: the shrinkage alpha used (static; Ledoit-Wolf's estimate when
      fitted with "ledoit_wolf").
  """
  mean: jax.Array
  precision: jax.Array
  shrinkage: float = flax.struct.field(pytree_node=False, default=0.0)

  @property
  def num_features(self) -> int:
    return int(self.mean.shape[0])


def _empirical_covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [C], biased covariance [C, C]) in float64, sklearn's MLE."""
  mean = x.mean(axis=0)
  d = x - mean
  return mean, (d.T @ d) / x.shape[0]


def _shrunk(cov: np.ndarray, alpha: float) -> np.ndarray:
  """(1 - alpha) S + alpha tr(S)/C I (sklearn.covariance.shrunk_covariance)."""
  c = cov.shape[0]
  out = (1.0 - alpha) * cov
  out.flat[::c + 1] += alpha * np.trace(cov) / c
  return out


def _symmetric_inverse(cov: np.ndarray, n: int, shrinkage: float) -> np.ndarray:
  """Inverse of a symmetric PSD matrix via eigh; raises if it is singular."""
  c = cov.shape[0]
  w, v = np.linalg.eigh((cov + cov.T) / 2.0)
  top = max(float(w[-1]), 0.0)
  if top == 0.0:
    raise ValueError("z_train has zero variance in every feature (all rows identical): "
                     "a Gaussian cannot be fitted")
  tol = top * c * np.finfo(np.float64).eps   # numpy/scipy pinvh's rcond
  rank = int(np.sum(w > tol))
  if rank < c:
    hint = (f" (N = {n} <= C = {c} always gives a singular covariance)" if n <= c else "")
    raise ValueError(
        f"the covariance of z_train is singular: rank {rank} < C = {c}{hint}, shrinkage "
        f"{shrinkage}; pass shrinkage > 0 (e.g. 0.1) or shrinkage='ledoit_wolf'")
  return (v / w) @ v.T


def fit_mahalanobis(z_train: ArrayLike, shrinkage: Shrinkage = 0.0) -> MahalanobisModel:
  """Fits a single Gaussian to ID training features.

  Args:
    z_train: [N, C] ID training features (finite; N >= 2).
    shrinkage: alpha in [0, 1] for the covariance (1 - alpha) S + alpha
      tr(S)/C I, with S the biased empirical covariance (sklearn's
      `ShrunkCovariance(shrinkage=alpha)`), or "ledoit_wolf" for sklearn's
      Ledoit-Wolf estimate of alpha.

  Returns:
    A `MahalanobisModel` (mean [C], precision [C, C], float32).

  Raises:
    ValueError: bad shapes / non-finite values / bad shrinkage, or a singular
      covariance without shrinkage (the message suggests shrinkage).
  """
  x = _features.as_features(z_train, "z_train", min_rows=2)
  if isinstance(shrinkage, str):
    if shrinkage != LEDOIT_WOLF:
      raise ValueError(f"shrinkage must be a float in [0, 1] or {LEDOIT_WOLF!r}, "
                       f"got {shrinkage!r}")
    from sklearn.covariance import LedoitWolf  # pylint: disable=g-import-not-at-top
    lw = LedoitWolf(assume_centered=False).fit(x)
    mean, cov, alpha = np.asarray(lw.location_), np.asarray(lw.covariance_), float(lw.shrinkage_)
  else:
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float, np.floating)) \
        or not 0.0 <= float(shrinkage) <= 1.0:
      raise ValueError(f"shrinkage must be a float in [0, 1] or {LEDOIT_WOLF!r}, "
                       f"got {shrinkage!r}")
    alpha = float(shrinkage)
    mean, cov = _empirical_covariance(x)
    if alpha > 0.0:
      cov = _shrunk(cov, alpha)
  precision = _symmetric_inverse(cov, x.shape[0], alpha)
  precision = (precision + precision.T) / 2.0
  return MahalanobisModel(mean=jnp.asarray(mean, jnp.float32),
                          precision=jnp.asarray(precision, jnp.float32), shrinkage=alpha)


@jax.jit
def _mahalanobis_chunk(mean: jax.Array, precision: jax.Array, z: jax.Array) -> jax.Array:
  d = z - mean
  sq = jnp.sum(jnp.matmul(d, precision, precision=_features.HIGHEST) * d, axis=-1)
  return jnp.maximum(sq, 0.0)   # P is PSD; clip float rounding below zero


def mahalanobis_score(model: MahalanobisModel, z: ArrayLike,
                      chunk_size: int = 4096) -> np.ndarray:
  """Squared Mahalanobis distance of each row to the fitted Gaussian.

  Args:
    model: from `fit_mahalanobis`.
    z: [M, C] features to score.
    chunk_size: rows per jitted call (memory ~ chunk_size * C floats).

  Returns:
    [M] float32 numpy scores, (z - mean)^T precision (z - mean) >= 0; higher
    = more OOD.
  """
  if not isinstance(model, MahalanobisModel):
    raise TypeError(f"model must be a MahalanobisModel, got {type(model).__name__}")
  x = _features.as_features(z, "z", dim=model.num_features, dtype=np.float32)
  return _features.chunked(_mahalanobis_chunk, (model.mean, model.precision), x, chunk_size)

