"""KNN detector (Sun et al., ICML 2022) on L2-normalised ID training features.

The score is minus the cosine similarity to the k-th nearest (most similar) training feature;
higher = more OOD. Scoring is jitted, in float32 with full-precision matmuls, in fixed-size
chunks of rows (memory ~ chunk_size * N floats).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _features

__all__ = ["KNN_NORM_EPS", "KNNModel", "fit_knn", "knn_score"]

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

