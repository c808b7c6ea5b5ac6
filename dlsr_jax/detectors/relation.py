"""Relation, the neural relation graph (Kim, Yun & Song, NeurIPS 2023), OpenOOD's form.

Fit: the bank is the whole fit set, unit features f_j = z_j / sqrt(||z_j||^2 + 1e-10) and
softmax vectors p_j. Score of (z, l): rel_j = max(<f, f_j>, 0) * <p, p_j> with f, p the query's
own; conf = sum over j with |rel_j| > threshold of sign(rel_j) |rel_j|^pow (rel_j >= 0, so the
sum of the kept rel_j^pow); score = -conf, higher = more OOD.

O(N_fit) per query: jitted, float32 with full-precision matmuls, in fixed-size chunks of query
rows (memory ~ 2 * chunk_size * N_fit floats); pow and threshold are traced (a grid of them
reuses one compile).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from dlsr_jax.data import batching
from dlsr_jax.detectors import _features, base

__all__ = ["RELATION_EPS", "RelationModel", "fit_relation", "make", "relation_score"]

RELATION_EPS = 1e-10   # f = z / sqrt(||z||^2 + eps)


@flax.struct.dataclass
class RelationModel:
  """The relation bank (a frozen pytree).

  Attributes:
    features: [N, D] float32 unit features f_j.
    probs: [N, K] float32 softmax vectors p_j.
  """
  features: jax.Array
  probs: jax.Array


def _unit(z: np.ndarray) -> np.ndarray:
  return z / np.sqrt(np.sum(z * z, axis=-1, keepdims=True) + RELATION_EPS)


def fit_relation(z_train: ArrayLike, logits: ArrayLike) -> RelationModel:
  """Stores the fit set's unit features and softmax vectors.

  Args:
    z_train: [N, D] pooled fit features (finite).
    logits: [N, K] their logits.

  Returns:
    A `RelationModel`.
  """
  z = _features.as_features(z_train, "relation: pre_logits")
  l = _features.as_features(logits, "relation: logits")
  if l.shape[0] != z.shape[0]:
    raise ValueError(f"relation: pre_logits has {z.shape[0]} rows but logits {l.shape[0]}")
  return RelationModel(features=jnp.asarray(_unit(z), jnp.float32),
                       probs=jnp.asarray(special.softmax(l, axis=1), jnp.float32))


@jax.jit
def _relation_chunk(features: jax.Array, probs: jax.Array, power: jax.Array,
                    threshold: jax.Array, logits: jax.Array, z: jax.Array) -> jax.Array:
  f = z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + RELATION_EPS)
  p = jax.nn.softmax(logits, axis=-1)
  sim = jnp.maximum(jnp.matmul(f, features.T, precision=_features.HIGHEST), 0.0)   # [B, N]
  rel = sim * jnp.matmul(p, probs.T, precision=_features.HIGHEST)
  kept = jnp.abs(rel) > threshold
  return -jnp.sum(jnp.where(kept, jnp.sign(rel) * jnp.abs(jnp.where(kept, rel, 1.0)) ** power,
                            0.0), axis=-1)


def relation_score(model: RelationModel, logits: ArrayLike, z: ArrayLike, power: float = 1.0,
                   threshold: float = 0.03, chunk_size: int = 256) -> np.ndarray:
  """Minus the summed kept relations of each query to the bank.

  Args:
    model: from `fit_relation`.
    logits: [M, K] logits.
    z: [M, D] pooled features.
    power: the exponent of |rel| (OpenOOD's `pow`), > 0.
    threshold: relations with |rel| <= threshold are dropped, >= 0.
    chunk_size: query rows per jitted call.

  Returns:
    [M] float32 numpy scores <= 0; higher = more OOD.
  """
  if not isinstance(model, RelationModel):
    raise TypeError(f"model must be a RelationModel, got {type(model).__name__}")
  l = _features.as_features(logits, "logits", dim=model.probs.shape[1], dtype=np.float32)
  x = _features.as_features(z, "pre_logits", dim=model.features.shape[1], dtype=np.float32)
  _features.check_chunk_size(chunk_size)
  args = (model.features, model.probs, jnp.float32(power), jnp.float32(threshold))
  out = batching.map_padded(lambda lb, zb: _relation_chunk(*args, lb, zb), (l, x), chunk_size)
  return np.asarray(out, np.float32)


def _check_number(name: str, value, positive: bool) -> float:
  ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
      and np.isfinite(value) and (value > 0 if positive else value >= 0)
  if not ok:
    what = "a positive" if positive else "a non-negative"
    raise ValueError(f"relation: {name} must be {what} finite number, got {value!r}")
  return float(value)


def make(pow: float = 1.0, threshold: float = 0.03,  # pylint: disable=redefined-builtin
         chunk_size: int = 256) -> base.Detector:
  """Relation on the logits and the pooled features ("pre_logits"); the bank is the fit set.

  Args:
    pow: the exponent of the kept relations, > 0 (OpenOOD: 1; grid 1, 2, 4, 6, 8).
    threshold: relations at or below it are dropped, >= 0 (OpenOOD: 0.03).
    chunk_size: query rows per jitted call (memory ~ 2 * chunk_size * N_fit floats).

  Returns:
    A `Detector` reading ("logits", "pre_logits") with score {"relation": [N] float32}.
  """
  power = _check_number("pow", pow, positive=True)
  cut = _check_number("threshold", threshold, positive=False)
  _features.check_chunk_size(chunk_size)

  def fit(arrays: base.SetArrays, key: jax.Array) -> RelationModel:
    del key   # deterministic
    return fit_relation(arrays["pre_logits"], arrays["logits"])

  def score(state: RelationModel, arrays: base.SetArrays,
            key: jax.Array) -> dict[str, np.ndarray]:
    del key
    return {"relation": relation_score(state, arrays["logits"], arrays["pre_logits"], power, cut,
                                       chunk_size)}

  return base.Detector(name="relation", reads=("logits", "pre_logits"), fit=fit, score=score)
