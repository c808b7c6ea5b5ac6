"""ASH (Djurisic et al., ICLR 2023) in OpenOOD v1.5's form: ASH-B on the pooled pre-logits.

SPEC-posthoc section 3.2. Unlike the paper, which shapes the feature map before pooling,
OpenOOD binarises the pooled vector z [D], so the paper's n is D. Per row, with no fit:
k = D - round(D * percentile / 100) entries are kept (round half to even; k >= 1 is required);
s1 = sum_d z_d (before pruning); v_d = s1 / k for the k largest entries of z, else 0;
score = -LSE(v @ W + b), with (W, b) the final dense layer (`net.head`). Higher = more OOD.
Ties at the k-th value go to the lower index (as the spec's reference does).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _grid, _head, base

__all__ = ["ash_score", "make", "top_k_mask"]


def top_k_mask(z: jax.Array, k: jax.Array) -> jax.Array:
  """[B, D] bool: the k largest entries of each row, ties to the lower index (k traced)."""
  order = jnp.argsort(-z, axis=-1, stable=True)   # descending, equal values in index order
  rank = jnp.argsort(order, axis=-1)               # each entry's position in that order
  return rank < k


@jax.jit
def ash_score(w: jax.Array, b: jax.Array, k: jax.Array, z: jax.Array) -> jax.Array:
  """ASH-B scores of a batch (a traced k: no recompile per percentile).

  Args:
    w: [D, K] final-layer weights.
    b: [K] biases.
    k: how many entries are kept, 1 <= k <= D (an int scalar).
    z: [B, D] pre-logits.

  Returns:
    [B] float32 scores -LSE(v @ W + b); higher = more OOD.
  """
  s1 = jnp.sum(z, axis=-1, keepdims=True)
  fill = s1 / jnp.asarray(k, z.dtype)
  return _head.energy(w, b, jnp.where(top_k_mask(z, k), fill, 0.0))


def make(net: Any, percentile: float = 90.0) -> base.Detector:
  """ASH-B (OpenOOD's variant) on the classifier's pre-logits and final layer.

  Args:
    net: the classifier; only `net.head -> (W [D, K], b [K])` is read.
    percentile: in (0, 100), keeping k = D - round(D * percentile / 100) >= 1 entries
      (OpenOOD: 90; grid {65, 70, ..., 95}).

  Returns:
    A `Detector` reading ("pre_logits",) with score {"ash": [N] float32}; nothing to fit.
  """
  p = _head.check_percentile(percentile, "ash")
  w, b = _head.read_head(net, "ash")
  dim = w.shape[0]
  args = (jnp.asarray(w), jnp.asarray(b), np.int32(_head.kept_count(dim, p, "ash")))

  def fit(arrays: base.SetArrays, key: jax.Array) -> None:
    del arrays, key   # nothing to fit
    return None

  def score(state: None, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del state, key
    z = _head.features(arrays["pre_logits"], dim, "ash")
    return {"ash": _head.rowwise(ash_score, args, z)}

  return base.Detector(name="ash", reads=("pre_logits",), fit=fit, score=score, fit_reads=())


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("percentile",)


@jax.jit
def _grid_kernel(w: jax.Array, b: jax.Array, ks: jax.Array, z: jax.Array) -> jax.Array:
  return jax.vmap(ash_score, in_axes=(None, None, 0, None), out_axes=1)(w, b, ks, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] ASH-B scores of every percentile (its kept count k) in one vmapped call."""
  del fit
  w, b = _head.read_head(net, "ash")
  dim = w.shape[0]
  ks = np.asarray([_head.kept_count(dim, _head.check_percentile(p, "ash"), "ash")
                   for p in _grid.column(candidates, "percentile")], np.int32)
  z = _head.features(arrays["pre_logits"], dim, "ash")
  return _grid.over_rows(_grid_kernel, (w, b, ks), (z,))
