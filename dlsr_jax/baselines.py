"""Feature-level OOD baselines on the cached DLSR features (no labels needed).

Both detectors are fitted on ID training features z_train [N, C] (the same
per-layer z-scored, concatenated features DLSR reconstructs) and score any
feature array z [M, C]. Convention: a score is HIGHER for more OOD-looking
inputs.

* Mahalanobis: one Gaussian fitted on z_train (mean + covariance, optionally
  shrunk towards a scaled identity or by Ledoit-Wolf); the score is the squared
  Mahalanobis distance ``(z - mean)^T P (z - mean)`` with P the precision.
  Identical to ``sklearn.covariance.EmpiricalCovariance().fit(z_train)
  .mahalanobis(z)`` (``ShrunkCovariance(shrinkage=alpha)`` with shrinkage,
  ``LedoitWolf()`` with ``"ledoit_wolf"``).
* KNN (Sun et al., ICML 2022): features are L2-normalised; the score is minus
  the cosine similarity to the k-th nearest (most similar) training feature.

Fitting runs on the host in float64 numpy; scoring is jitted, in float32 with
full-precision matmuls, in fixed-size chunks of test rows (the last chunk is
padded, so one compile serves every chunk and memory stays bounded).
"""

from __future__ import annotations

import functools
from typing import Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["KNNModel", "MahalanobisModel", "fit_knn", "fit_mahalanobis", "knn_score",
           "mahalanobis_score"]

Shrinkage = Union[float, str]
LEDOIT_WOLF = "ledoit_wolf"
KNN_NORM_EPS = 1e-10      # x / (||x|| + eps), as in Sun et al.'s release
_HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------- validation --
def _as_features(z: ArrayLike, name: str, dim: int | None = None, min_rows: int = 1,
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


def _check_chunk_size(chunk_size: int) -> None:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _chunked(fn, args: tuple, z: np.ndarray, chunk_size: int) -> np.ndarray:
  """Applies jitted `fn(*args, z_chunk [B, C]) -> [B]` over rows of z (float32).

  Chunks have exactly min(chunk_size, M) rows (the last is padded by repeating
  its final row), so every call reuses one compile.
  """
  _check_chunk_size(chunk_size)
  m = z.shape[0]
  b = min(int(chunk_size), m)
  out = np.empty((m,), np.float32)
  for s in range(0, m, b):
    chunk = z[s:s + b]
    n = chunk.shape[0]
    if n < b:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
    out[s:s + n] = np.asarray(fn(*args, chunk))[:n]
  return out


# ------------------------------------------------------------ Mahalanobis --
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
  x = _as_features(z_train, "z_train", min_rows=2)
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
  sq = jnp.sum(jnp.matmul(d, precision, precision=_HIGHEST) * d, axis=-1)
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
  x = _as_features(z, "z", dim=model.num_features, dtype=np.float32)
  return _chunked(_mahalanobis_chunk, (model.mean, model.precision), x, chunk_size)


# -------------------------------------------------------------------- KNN --
@flax.struct.dataclass
class KNNModel:
  """L2-normalised ID training features for k-NN scoring (a frozen pytree).

  Attributes:
    train: [N, C] float32 unit-norm training features.
    k: which neighbour's similarity is used (static; 1 <= k <= N).
  """
  train: jax.Array
  k: int = flax.struct.field(pytree_node=False, default=50)

  @property
  def num_features(self) -> int:
    return int(self.train.shape[1])


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + KNN_NORM_EPS)


def fit_knn(z_train: ArrayLike, k: int = 50) -> KNNModel:
  """Stores L2-normalised ID training features.

  Args:
    z_train: [N, C] ID training features (finite).
    k: the neighbour rank used for scoring, 1 <= k <= N (Sun et al.: 50 for
      CIFAR-10 with the full training set).

  Returns:
    A `KNNModel`.
  """
  x = _as_features(z_train, "z_train")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}")
  if k > x.shape[0]:
    raise ValueError(f"k = {k} exceeds the number of training features N = {x.shape[0]}")
  return KNNModel(train=jnp.asarray(_normalise(x), jnp.float32), k=int(k))


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_chunk(train: jax.Array, z: jax.Array, *, k: int) -> jax.Array:
  zn = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + KNN_NORM_EPS)
  sims = jnp.matmul(zn, train.T, precision=_HIGHEST)       # [B, N]
  top, _ = jax.lax.top_k(sims, k)                            # [B, k]
  # The k-th largest is the smallest of the top k. (Slicing top[:, k - 1] instead
  # makes XLA:CPU replace top_k by a full sort, about 100x slower.)
  return -jnp.min(top, axis=-1)


def knn_score(model: KNNModel, z: ArrayLike, chunk_size: int = 512) -> np.ndarray:
  """Minus the cosine similarity to the k-th nearest training feature.

  Args:
    model: from `fit_knn`.
    z: [M, C] features to score.
    chunk_size: test rows per jitted call; peak memory is about
      chunk_size * N floats for the similarity block (512 x 50k = 100 MB).

  Returns:
    [M] float32 numpy scores in [-1, 1]; higher = more OOD.
  """
  if not isinstance(model, KNNModel):
    raise TypeError(f"model must be a KNNModel, got {type(model).__name__}")
  x = _as_features(z, "z", dim=model.num_features, dtype=np.float32)
  fn = functools.partial(_knn_chunk, k=model.k)
  return _chunked(fn, (model.train,), x, chunk_size)

