"""Mahalanobis detectors on ID training features (higher score = more OOD).

* One Gaussian (no labels): the squared Mahalanobis distance ``(z - mean)^T P (z - mean)``
  with P the precision of the (optionally shrunk) covariance. Identical to
  ``sklearn.covariance.EmpiricalCovariance().fit(z_train).mahalanobis(z)``
  (``ShrunkCovariance(shrinkage=alpha)`` with shrinkage, ``LedoitWolf()`` with
  ``"ledoit_wolf"``).
* Class-conditional (Lee et al., NeurIPS 2018): class means and one tied (pooled within-class)
  covariance; the score is the minimum over classes of the squared distance.

Fitting runs on the host in float64 numpy; scoring is jitted, in float32 with full-precision
matmuls, in fixed-size chunks of rows.
"""

from __future__ import annotations

import warnings
from typing import Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _features, base

__all__ = ["LEDOIT_WOLF", "ClassMahalanobisModel", "MahalanobisModel", "Shrinkage",
           "class_mahalanobis_score", "fit_class_conditional", "fit_mahalanobis", "make",
           "mahalanobis_score", "min_class_distance"]

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


def _check_shrinkage(shrinkage: Shrinkage) -> None:
  ok = shrinkage == LEDOIT_WOLF if isinstance(shrinkage, str) else (
      not isinstance(shrinkage, bool) and isinstance(shrinkage, (int, float, np.floating))
      and 0.0 <= float(shrinkage) <= 1.0)
  if not ok:
    raise ValueError(f"shrinkage must be a float in [0, 1] or {LEDOIT_WOLF!r}, "
                     f"got {shrinkage!r}")


def _shrunk(cov: np.ndarray, alpha: float) -> np.ndarray:
  """(1 - alpha) S + alpha tr(S)/C I (sklearn.covariance.shrunk_covariance)."""
  c = cov.shape[0]
  out = (1.0 - alpha) * cov
  out.flat[::c + 1] += alpha * np.trace(cov) / c
  return out


def _covariance(d: np.ndarray, shrinkage: Shrinkage) -> tuple[np.ndarray, float]:
  """(covariance [C, C], alpha) of centred float64 rows d [N, C], sklearn's biased MLE.

  With a float alpha: (1 - alpha) d^T d / N + alpha tr/C I; with "ledoit_wolf": sklearn's
  `LedoitWolf(assume_centered=True)` and its estimated alpha.
  """
  _check_shrinkage(shrinkage)
  if isinstance(shrinkage, str):
    from sklearn.covariance import LedoitWolf  # pylint: disable=g-import-not-at-top
    lw = LedoitWolf(assume_centered=True).fit(d)
    return np.asarray(lw.covariance_), float(lw.shrinkage_)
  alpha = float(shrinkage)
  cov = (d.T @ d) / d.shape[0]
  return (_shrunk(cov, alpha) if alpha > 0.0 else cov), alpha


def _eigh_checked(cov: np.ndarray, shrinkage: float, hint: str,
                  zero: str = "z_train has zero variance in every feature (all rows "
                              "identical): a Gaussian cannot be fitted"
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(w [C], v [C, C]) with cov = v diag(w) v^T; raises if cov is singular (`zero`: the
  message for a covariance that is zero)."""
  c = cov.shape[0]
  w, v = np.linalg.eigh((cov + cov.T) / 2.0)
  top = max(float(w[-1]), 0.0)
  if top == 0.0:
    raise ValueError(zero)
  tol = top * c * np.finfo(np.float64).eps   # numpy/scipy pinvh's rcond
  rank = int(np.sum(w > tol))
  if rank < c:
    raise ValueError(
        f"the covariance of z_train is singular: rank {rank} < C = {c}{hint}, shrinkage "
        f"{shrinkage}; pass shrinkage > 0 (e.g. 0.1) or shrinkage='ledoit_wolf'")
  return w, v


def _warn_few_rows(what: str, alpha: float) -> None:
  """A covariance estimated from fewer rows than features is mostly the shrinkage's: say so
  (the evaluation puts the warning into its results)."""
  warnings.warn(f"mahalanobis: {what}: the covariance is mostly the shrinkage ({alpha}), not "
                "the data; its scores are unreliable (use more training rows or fewer "
                "features)", stacklevel=3)


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
  _check_shrinkage(shrinkage)
  mean = x.mean(axis=0)
  cov, alpha = _covariance(x - mean, shrinkage)
  n, c = x.shape
  hint = f" (N = {n} <= C = {c} always gives a singular covariance)" if n <= c else ""
  w, v = _eigh_checked(cov, alpha, hint)
  if n <= c:
    _warn_few_rows(f"N = {n} training rows <= C = {c} features", alpha)
  precision = (v / w) @ v.T
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



# ----------------------------------------------------- class-conditional --
@flax.struct.dataclass
class ClassMahalanobisModel:
  """Class-conditional Gaussians with one tied covariance, in whitened form (a frozen pytree).

  With P the precision of the tied covariance and W W^T = P, the squared distance of z to class
  k is ||(z - center) W - means[k]||^2 = (z - mu_k)^T P (z - mu_k).

  Attributes:
    center: [C] float32 mean of the training rows (subtracted first, to keep float32 exact).
    whiten: [C, C] float32 W.
    means: [K, C] float32 whitened class means (mu_k - center) W.
    classes: the K class labels, in the order of `means` (static).
    shrinkage: the shrinkage alpha used (static).
  """
  center: jax.Array
  whiten: jax.Array
  means: jax.Array
  classes: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
  shrinkage: float = flax.struct.field(pytree_node=False, default=0.0)


def fit_class_conditional(z_train: ArrayLike, labels: ArrayLike,
                          shrinkage: Shrinkage = 0.0) -> ClassMahalanobisModel:
  """Fits class means and one tied covariance (Lee et al., NeurIPS 2018).

  The tied covariance is the pooled within-class one, sklearn-style biased:
  S = sum_k sum_{i in k} (z_i - mu_k)(z_i - mu_k)^T / N, optionally shrunk as in
  `fit_mahalanobis`. Inverted in float64 by a symmetric eigendecomposition.

  Args:
    z_train: [N, C] ID training features (finite).
    labels: [N] integer class labels (any values; each distinct value is one class).
    shrinkage: as in `fit_mahalanobis`.

  Returns:
    A `ClassMahalanobisModel`.
  """
  x = _features.as_features(z_train, "z_train", min_rows=2)
  y = np.asarray(labels)
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be integers [N] with N = {x.shape[0]} (the rows of "
                     f"z_train), got {y.dtype} {y.shape}")
  _check_shrinkage(shrinkage)
  classes, index = np.unique(y, return_inverse=True)
  counts = np.bincount(index, minlength=classes.size)
  mu = np.zeros((classes.size, x.shape[1]))
  np.add.at(mu, index, x)
  mu /= counts[:, None]
  cov, alpha = _covariance(x - mu[index], shrinkage)
  dof, c = x.shape[0] - classes.size, x.shape[1]
  hint = (f" (N - K = {dof} <= C = {c} always gives a singular covariance)" if dof <= c
          else "")
  single = int(np.sum(counts == 1))
  zero = (f"the pooled within-class covariance is zero: every one of the {classes.size} "
          f"classes has {'a single training row' if single == classes.size else 'identical rows'}"
          f" (N = {x.shape[0]} rows, K = {classes.size} classes; {single} with one row), so no "
          "row differs from its class mean; give each class at least 2 distinct rows, or use "
          "class_conditional=False")
  w, v = _eigh_checked(cov, alpha, hint, zero)
  if dof <= c:
    _warn_few_rows(f"N - K = {dof} training rows beyond the {classes.size} class means <= C = "
                   f"{c} features", alpha)
  whiten = v / np.sqrt(w)                   # W W^T = v diag(1/w) v^T = P
  center = x.mean(axis=0)
  return ClassMahalanobisModel(
      center=jnp.asarray(center, jnp.float32), whiten=jnp.asarray(whiten, jnp.float32),
      means=jnp.asarray((mu - center) @ whiten, jnp.float32),
      classes=tuple(int(k) for k in classes), shrinkage=alpha)


@jax.jit
def min_class_distance(center: jax.Array, whiten: jax.Array, means: jax.Array,
                       z: jax.Array) -> jax.Array:
  """min_k of the squared Mahalanobis distance, in whitened space.

  Args:
    center: [C]; whiten: [C, C]; means: [K, C] (see `ClassMahalanobisModel`).
    z: [B, C] features.

  Returns:
    [B] float32 min over classes of ||(z - center) W - means[k]||^2.
  """
  y = jnp.matmul(z - center, whiten, precision=_features.HIGHEST)   # [B, C]
  d2 = jnp.sum(jnp.square(y[:, None, :] - means[None]), axis=-1)    # [B, K]
  return jnp.min(d2, axis=-1)


def class_mahalanobis_score(model: ClassMahalanobisModel, z: ArrayLike,
                            chunk_size: int | None = None) -> np.ndarray:
  """Minimum over classes of the squared Mahalanobis distance (tied covariance).

  Args:
    model: from `fit_class_conditional`.
    z: [M, C] features to score.
    chunk_size: rows per jitted call; None keeps the [B, K, C] block near 2^24 floats.

  Returns:
    [M] float32 numpy scores >= 0; higher = more OOD.
  """
  if not isinstance(model, ClassMahalanobisModel):
    raise TypeError(f"model must be a ClassMahalanobisModel, got {type(model).__name__}")
  k, c = model.means.shape
  x = _features.as_features(z, "z", dim=c, dtype=np.float32)
  if chunk_size is None:
    chunk_size = int(np.clip(2 ** 24 // (k * c), 1, 4096))
  return _features.chunked(min_class_distance, (model.center, model.whiten, model.means), x,
                           chunk_size)


# ------------------------------------------------------------- detector --
def make(array: str = "features", class_conditional: bool = False,
         shrinkage: Shrinkage = 0.0, chunk_size: int | None = None) -> base.Detector:
  """The Mahalanobis detector on one array of the set.

  Args:
    array: "features" (the DLSR features) or "pre_logits" (a classifier's penultimate layer).
    class_conditional: False: one Gaussian (no labels); True: class means + tied covariance,
      min over classes (fit also reads "labels").
    shrinkage: covariance shrinkage alpha in [0, 1] or "ledoit_wolf".
    chunk_size: rows per jitted scoring call (None: 4096, or adaptive when class-conditional).

  Returns:
    A `Detector` with score {"mahalanobis": [N]}.
  """
  if array not in ("features", "pre_logits"):
    raise ValueError(f"mahalanobis: array must be 'features' or 'pre_logits', got {array!r}")
  if not isinstance(class_conditional, bool):
    raise ValueError(f"mahalanobis: class_conditional must be a bool, got {class_conditional!r}")
  _check_shrinkage(shrinkage)
  if chunk_size is not None:
    _features.check_chunk_size(chunk_size)

  def fit(arrays: base.SetArrays, key: jax.Array):
    del key   # deterministic
    if class_conditional:
      return fit_class_conditional(arrays[array], arrays["labels"], shrinkage)
    return fit_mahalanobis(arrays[array], shrinkage)

  def score(state, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    if class_conditional:
      return {"mahalanobis": class_mahalanobis_score(state, arrays[array], chunk_size)}
    return {"mahalanobis": mahalanobis_score(state, arrays[array], chunk_size or 4096)}

  fit_reads = (array, "labels") if class_conditional else (array,)
  return base.Detector(name="mahalanobis", reads=(array,), fit=fit, score=score,
                       fit_reads=fit_reads)
