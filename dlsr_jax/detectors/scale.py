"""SCALE (Xu, Chen, Franchi & Yao, ICLR 2024), as in OpenOOD v1.5 (SPEC-posthoc section 3.3).

Per row of the pooled pre-logits z [D], with no fit: k = D - round(D * percentile / 100)
(round half to even; k >= 1 is required); s1 = sum z; s2 = the sum of the k largest entries;
v = z * exp(s1 / s2), the WHOLE unpruned vector scaled (pruning only defines s2);
score = -LSE(v @ W + b), with (W, b) the final dense layer (`net.head`; the bias is not
scaled). Higher = more OOD.

Where s2 = 0 (for ReLU features: z = 0, where any factor gives v = 0) the factor is taken as
1 (OpenOOD's 0 / 0 would be NaN). A factor or logits that overflow float32 (s1 / s2 > ~88,
possible only for features with negative entries or a percentile near 100) are refused in
`score` with the rows named, never returned as inf or NaN scores.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _grid, _head, base

__all__ = ["make", "scale_score"]


@jax.jit
def scale_score(w: jax.Array, b: jax.Array, k: jax.Array, z: jax.Array) -> jax.Array:
  """SCALE scores of a batch (a traced k: no recompile per percentile).

  Args:
    w: [D, K] final-layer weights.
    b: [K] biases.
    k: how many of the largest entries make s2, 1 <= k <= D (an int scalar).
    z: [B, D] pre-logits.

  Returns:
    [B] float32 scores -LSE((z * exp(s1 / s2)) @ W + b); higher = more OOD.
  """
  s1 = jnp.sum(z, axis=-1)
  top = -jnp.sort(-z, axis=-1)                     # descending
  s2 = jnp.sum(jnp.where(jnp.arange(z.shape[-1]) < k, top, 0.0), axis=-1)
  ratio = jnp.where(s2 == 0, 0.0, s1 / jnp.where(s2 == 0, 1.0, s2))
  return _head.energy(w, b, z * jnp.exp(ratio)[:, None])


def make(net: Any, percentile: float = 85.0) -> base.Detector:
  """SCALE on the classifier's pre-logits and final layer.

  Args:
    net: the classifier; only `net.head -> (W [D, K], b [K])` is read.
    percentile: in (0, 100), with k = D - round(D * percentile / 100) >= 1 entries in s2
      (OpenOOD: 85; grid {65, 70, ..., 95}).

  Returns:
    A `Detector` reading ("pre_logits",) with score {"scale": [N] float32}; nothing to fit.
  """
  p = _head.check_percentile(percentile, "scale")
  w, b = _head.read_head(net, "scale")
  dim = w.shape[0]
  args = (jnp.asarray(w), jnp.asarray(b), np.int32(_head.kept_count(dim, p, "scale")))

  def fit(arrays: base.SetArrays, key: jax.Array) -> None:
    del arrays, key   # nothing to fit
    return None

  def score(state: None, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del state, key
    z = _head.features(arrays["pre_logits"], dim, "scale")
    out = _head.rowwise(scale_score, args, z)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
      raise ValueError(f"scale: the factor exp(s1 / s2) overflows float32 for {bad.size} "
                       f"row(s) of pre_logits (first: row {int(bad[0])}); SCALE expects "
                       f"non-negative (post-ReLU) features, or use a lower percentile")
    return {"scale": out}

  return base.Detector(name="scale", reads=("pre_logits",), fit=fit, score=score,
                       fit_reads=())


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("percentile",)


@jax.jit
def _grid_kernel(w: jax.Array, b: jax.Array, ks: jax.Array, z: jax.Array) -> jax.Array:
  return jax.vmap(scale_score, in_axes=(None, None, 0, None), out_axes=1)(w, b, ks, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] SCALE scores of every percentile in one vmapped call (refuses overflow as
  `score` does)."""
  del fit
  w, b = _head.read_head(net, "scale")
  dim = w.shape[0]
  ps = _grid.column(candidates, "percentile")
  ks = np.asarray([_head.kept_count(dim, _head.check_percentile(p, "scale"), "scale")
                   for p in ps], np.int32)
  z = _head.features(arrays["pre_logits"], dim, "scale")
  out = _grid.over_rows(_grid_kernel, (w, b, ks), (z,))
  bad = np.argwhere(~np.isfinite(out))
  if bad.size:
    raise ValueError(f"scale: the factor exp(s1 / s2) overflows float32 at percentile "
                     f"{ps[bad[0][0]]!r} (row {int(bad[0][1])} of pre_logits); SCALE expects "
                     f"non-negative (post-ReLU) features, or use a lower percentile")
  return out
