"""Relative Mahalanobis distance, RMDS (Ren et al., arXiv:2106.09022, 2021).

Fit on the ID training features with labels (OpenOOD v1.5 form): class means mu_c and the tied
covariance S of the class-centred features (maximum likelihood, divide by N; as sklearn's
`EmpiricalCovariance`, the mean of the centred rows is subtracted too), P = pinvh(S); and a
background Gaussian, mu_0 = the mean of all rows, S_0 their covariance, P_0 = pinvh(S_0).

Score: min_c (z - mu_c)^T P (z - mu_c) - (z - mu_0)^T P_0 (z - mu_0); higher = more OOD.

The pseudo-inverse (eigenvalues above C * eps * the largest one, as scipy's `pinvh`) keeps
rank-deficient covariances usable (dead ReLU units), measuring distances in their span. Fitting
runs in float64; scoring is jitted, float32 with full-precision matmuls, in whitened form (W W^T
= pinvh(S)), in fixed-size chunks of rows.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _features, base, mahalanobis

__all__ = ["RMDSModel", "fit_rmds", "make", "rmds_score"]


@flax.struct.dataclass
class RMDSModel:
  """Class Gaussians (tied covariance) and one background Gaussian, whitened (a frozen pytree).

  Attributes:
    center: [C] float32 mean of the fit rows (mu_0).
    whiten: [C, R] float32 W with W W^T = pinvh(S) (R = the rank of S).
    means: [K, R] float32 whitened class means (mu_c - mu_0) W.
    whiten0: [C, R0] float32 W_0 with W_0 W_0^T = pinvh(S_0).
    classes: the K class labels, in the order of `means` (static).
  """
  center: jax.Array
  whiten: jax.Array
  means: jax.Array
  whiten0: jax.Array
  classes: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())


def _pinv_root(cov: np.ndarray, what: str, hint: str) -> np.ndarray:
  """W [C, R] with W W^T = pinvh(cov), scipy's default cutoff C * eps * max eigenvalue."""
  w, v = np.linalg.eigh((cov + cov.T) / 2.0)
  top = float(w[-1])
  if not top > 0.0:
    raise ValueError(f"rmds: the {what} covariance is zero (no variance in any feature"
                     f"{hint}), so no Mahalanobis distance can be fitted")
  keep = w > top * cov.shape[0] * np.finfo(np.float64).eps
  return v[:, keep] / np.sqrt(w[keep])


def fit_rmds(z_train: ArrayLike, labels: ArrayLike) -> RMDSModel:
  """Fits RMDS's class and background Gaussians.

  Args:
    z_train: [N, C] ID training features (finite).
    labels: [N] integer class labels (any values; each distinct value is one class; >= 2).

  Returns:
    An `RMDSModel`.

  Raises:
    ValueError: bad arrays, fewer than 2 classes, no more rows than classes, or zero variance.
  """
  x = _features.as_features(z_train, "rmds: z_train", min_rows=2)
  n = x.shape[0]
  y = np.asarray(labels)
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"rmds: labels must be integers [N] with N = {n} (the rows of z_train), "
                     f"got {y.dtype} {y.shape}")
  classes, index = np.unique(y, return_inverse=True)
  k = classes.size
  if k < 2:
    raise ValueError(f"rmds: the fit labels hold {k} class; RMDS needs at least 2 (with one, "
                     "the class and background Gaussians coincide and every score is 0)")
  if n <= k:
    raise ValueError(f"rmds: {n} fit rows for {k} classes leave no within-class variance; "
                     "the tied covariance needs more rows than classes")
  counts = np.bincount(index, minlength=k)
  mu = np.zeros((k, x.shape[1]))
  np.add.at(mu, index, x)
  mu /= counts[:, None]
  within = x - mu[index]
  within -= within.mean(axis=0)          # ~0: sklearn centres the centred rows again
  center = x.mean(axis=0)
  total = x - center
  whiten = _pinv_root(within.T @ within / n, "within-class", " within any class")
  whiten0 = _pinv_root(total.T @ total / n, "background", "")
  return RMDSModel(center=jnp.asarray(center, jnp.float32),
                   whiten=jnp.asarray(whiten, jnp.float32),
                   means=jnp.asarray((mu - center) @ whiten, jnp.float32),
                   whiten0=jnp.asarray(whiten0, jnp.float32),
                   classes=tuple(int(c) for c in classes))


@jax.jit
def _rmds_chunk(center: jax.Array, whiten: jax.Array, means: jax.Array, whiten0: jax.Array,
                z: jax.Array) -> jax.Array:
  d_class = mahalanobis.min_class_distance(center, whiten, means, z)            # [B]
  y0 = jnp.matmul(z - center, whiten0, precision=_features.HIGHEST)            # [B, R0]
  return d_class - jnp.sum(jnp.square(y0), axis=-1)


def rmds_score(model: RMDSModel, z: ArrayLike, chunk_size: int | None = None) -> np.ndarray:
  """min_c d_c(z) - d_0(z), the relative Mahalanobis distance.

  Args:
    model: from `fit_rmds`.
    z: [M, C] features to score.
    chunk_size: rows per jitted call; None keeps the [B, K, R] block near 2^24 floats.

  Returns:
    [M] float32 numpy scores; higher = more OOD.
  """
  if not isinstance(model, RMDSModel):
    raise TypeError(f"model must be an RMDSModel, got {type(model).__name__}")
  k, r = model.means.shape
  x = _features.as_features(z, "z", dim=model.center.shape[0], dtype=np.float32)
  if chunk_size is None:
    chunk_size = int(np.clip(2 ** 24 // (k * r), 1, 4096))
  return _features.chunked(_rmds_chunk, (model.center, model.whiten, model.means,
                                         model.whiten0), x, chunk_size)


def make(chunk_size: int | None = None) -> base.Detector:
  """RMDS on the classifier's pooled penultimate features ("pre_logits").

  Args:
    chunk_size: rows per jitted scoring call (None: adaptive to the number of classes).

  Returns:
    A `Detector` reading ("pre_logits",) with score {"rmds": [N] float32}; fit also reads
    "labels" (OpenOOD: the ID training set).
  """
  if chunk_size is not None:
    _features.check_chunk_size(chunk_size)

  def fit(arrays: base.SetArrays, key: jax.Array) -> RMDSModel:
    del key   # deterministic
    return fit_rmds(arrays["pre_logits"], arrays["labels"])

  def score(state: RMDSModel, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    return {"rmds": rmds_score(state, arrays["pre_logits"], chunk_size)}

  return base.Detector(name="rmds", reads=("pre_logits",), fit=fit, score=score,
                       fit_reads=("pre_logits", "labels"))
