"""KNN detector (Sun et al., ICML 2022) on L2-normalised ID training features.

Rows are L2-normalised; the detector's score is the Euclidean distance to the k-th nearest
training row (`knn_distance`, the paper's form). `knn_score` keeps the earlier cosine form,
minus the cosine similarity to the k-th most similar row; for unit rows the distance is
sqrt(2 - 2 cos), so both rank the same (same AUROC). Higher = more OOD. Scoring is jitted, in
float32 with full-precision matmuls, in fixed-size chunks of query rows (memory ~ chunk_size * N
floats; `batching.map_padded` pads the last chunk).
"""
from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _features, _grid, base

__all__ = ["KNN_NORM_EPS", "KNNModel", "fit_knn", "kth_distance", "knn_distance", "knn_score",
           "make"]

KNN_NORM_EPS = 1e-10      # x / (||x|| + eps), as in Sun et al.'s release


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
  x = _features.as_features(z_train, "z_train")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}")
  if k > x.shape[0]:
    raise ValueError(f"k = {k} exceeds the number of training features N = {x.shape[0]}")
  return KNNModel(train=jnp.asarray(_normalise(x), jnp.float32), k=int(k))


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_chunk(train: jax.Array, z: jax.Array, *, k: int) -> jax.Array:
  zn = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + KNN_NORM_EPS)
  sims = jnp.matmul(zn, train.T, precision=_features.HIGHEST)   # [B, N]
  top, _ = jax.lax.top_k(sims, k)                               # [B, k]
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
  x = _features.as_features(z, "z", dim=model.num_features, dtype=np.float32)
  fn = functools.partial(_knn_chunk, k=model.k)
  return _features.chunked(fn, (model.train,), x, chunk_size)



@functools.partial(jax.jit, static_argnames=("k",))
def kth_distance(train: jax.Array, z: jax.Array, *, k: int) -> jax.Array:
  """Euclidean distance of each normalised query row to its k-th nearest training row.

  Uses ||q - t||^2 = ||q||^2 + ||t||^2 - 2 q.t (one matmul); for unit rows this loses about
  sqrt(float32 eps) ~ 3e-4 in absolute distance for near-duplicates, nothing at typical ones.

  Args:
    train: [N, C] L2-normalised training rows (`KNNModel.train`).
    z: [B, C] query rows (normalised here).
    k: the neighbour rank, 1 <= k <= N (static).

  Returns:
    [B] float32 distances in [0, 2].
  """
  q = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + KNN_NORM_EPS)
  d2 = (jnp.sum(q * q, axis=-1, keepdims=True) + jnp.sum(train * train, axis=-1)[None]
        - 2.0 * jnp.matmul(q, train.T, precision=_features.HIGHEST))   # [B, N]
  top, _ = jax.lax.top_k(-d2, k)                                       # the k smallest
  return jnp.sqrt(jnp.maximum(-jnp.min(top, axis=-1), 0.0))


def knn_distance(model: KNNModel, z: ArrayLike, chunk_size: int = 512) -> np.ndarray:
  """Distance of each L2-normalised row to its k-th nearest normalised training row.

  Args:
    model: from `fit_knn`.
    z: [M, C] features to score.
    chunk_size: query rows per jitted call; peak memory about chunk_size * N floats.

  Returns:
    [M] float32 numpy scores in [0, 2]; higher = more OOD.
  """
  if not isinstance(model, KNNModel):
    raise TypeError(f"model must be a KNNModel, got {type(model).__name__}")
  x = _features.as_features(z, "z", dim=model.num_features, dtype=np.float32)
  fn = functools.partial(kth_distance, k=model.k)
  return _features.chunked(fn, (model.train,), x, chunk_size)


def make(k: int = 50, array: str = "features", chunk_size: int = 512) -> base.Detector:
  """The KNN detector on one array of the set.

  Args:
    k: the neighbour rank (paper: 50 on CIFAR-10 with the full training set).
    array: "features" (the DLSR features) or "pre_logits" (a classifier's penultimate layer).
    chunk_size: query rows per jitted call.

  Returns:
    A `Detector` reading (array,) with score {"knn": [N]} (Euclidean distance).
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"knn: k must be a positive int, got {k!r}")
  if array not in ("features", "pre_logits"):
    raise ValueError(f"knn: array must be 'features' or 'pre_logits', got {array!r}")
  _features.check_chunk_size(chunk_size)

  def fit(arrays: base.SetArrays, key: jax.Array) -> KNNModel:
    del key   # deterministic
    return fit_knn(arrays[array], k)

  def score(state: KNNModel, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    return {"knn": knn_distance(state, arrays[array], chunk_size)}

  return base.Detector(name="knn", reads=(array,), fit=fit, score=score)


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("k",)


@functools.partial(jax.jit, static_argnames=("k_max",))
def _grid_kernel(train: jax.Array, ranks: jax.Array, z: jax.Array, *, k_max: int) -> jax.Array:
  """[B, G] distances to the ranks[g]-th nearest training row (one top_k of k_max), computed
  as `kth_distance` does."""
  q = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + KNN_NORM_EPS)
  d2 = (jnp.sum(q * q, axis=-1, keepdims=True) + jnp.sum(train * train, axis=-1)[None]
        - 2.0 * jnp.matmul(q, train.T, precision=_features.HIGHEST))   # [B, N]
  top, _ = jax.lax.top_k(-d2, k_max)                                   # [B, k_max]
  # The r-th largest is the smallest of the first r (no slicing: see `_knn_chunk`).
  first = jnp.arange(k_max)[None, None, :] < ranks[None, :, None]      # [1, G, k_max]
  kth = jnp.min(jnp.where(first, top[:, None, :], jnp.inf), axis=-1)   # [B, G]
  return jnp.sqrt(jnp.maximum(-kth, 0.0))


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net=None) -> np.ndarray:
  """[G, N] KNN distances of every k from ONE top-k search (of the largest k)."""
  del net
  for c in candidates:
    make(**c)   # validates each k
  array, chunk = candidates[0]["array"], candidates[0]["chunk_size"]
  ks = np.asarray(_grid.column(candidates, "k"), np.int32)
  model = fit_knn(fit[array], int(ks.max()))
  x = _features.as_features(arrays[array], "z", dim=model.num_features, dtype=np.float32)
  kernel = functools.partial(_grid_kernel, k_max=int(ks.max()))
  return _grid.over_rows(kernel, (model.train, ks), (x,), chunk)
