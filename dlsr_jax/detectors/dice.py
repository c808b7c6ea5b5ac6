"""DICE (Sun & Li, ECCV 2022), as in OpenOOD v1.5 (SPEC-posthoc section 3.4).

Fit (OpenOOD: on the ID training split; here on whatever arrays `fit` is given): m = the mean
pre-logit vector; the contributions V = W * m[:, None] [D, K] (W [D, K] of `net.head`); the
threshold t = np.percentile over all D * K entries of V; the mask M = (V > t), strict (about
(100 - percentile) % of the weights are kept). Computed in float64 on the host.
Score: -LSE(z @ (W * M) + b), the bias unmasked. Higher = more OOD.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _grid, _head, base

__all__ = ["dice_score", "fit_mask", "make"]


def fit_mask(w: ArrayLike, z_fit: ArrayLike, percentile: float) -> np.ndarray:
  """DICE's weight mask M = (W * mean(z_fit)[:, None] > its percentile), in float64.

  Args:
    w: [D, K] final-layer weights.
    z_fit: [N, D] finite pre-logits of the fit set (N >= 1).
    percentile: in (0, 100).

  Returns:
    [D, K] bool mask with at least one True.

  Raises:
    ValueError: a bad percentile or features, or a mask that keeps no weight (every
      contribution equals the largest one, e.g. a zero mean feature).
  """
  p = _head.check_percentile(percentile, "dice")
  w = np.asarray(w, np.float64)
  z = _head.features(z_fit, w.shape[0], "dice")
  contrib = w * np.mean(z, axis=0, dtype=np.float64)[:, None]
  threshold = np.percentile(contrib, p)
  mask = contrib > threshold
  if not mask.any():
    raise ValueError(f"dice: the fit keeps no weight: no contribution W * mean(pre_logits) "
                     f"exceeds its {p:g}th percentile {threshold:g} (all the largest are "
                     f"equal, e.g. the fit set's mean pre-logit vector is zero)")
  return mask


@jax.jit
def dice_score(w: jax.Array, b: jax.Array, mask: jax.Array, z: jax.Array) -> jax.Array:
  """-LSE(z @ (W * M) + b) per row.

  Args:
    w: [D, K] final-layer weights.
    b: [K] biases (unmasked).
    mask: [D, K] bool, from `fit_mask`.
    z: [B, D] pre-logits.

  Returns:
    [B] float32 scores; higher = more OOD.
  """
  return _head.energy(jnp.where(mask, w, 0.0), b, z)


def make(net: Any, percentile: float = 90.0) -> base.Detector:
  """DICE on the classifier's pre-logits and final layer.

  Args:
    net: the classifier; only `net.head -> (W [D, K], b [K])` is read.
    percentile: the sparsity percentile of the contributions, in (0, 100) (OpenOOD: 90).

  Returns:
    A `Detector` reading ("pre_logits",) for fit and score, with score {"dice": [N] float32}.
  """
  p = _head.check_percentile(percentile, "dice")
  w, b = _head.read_head(net, "dice")
  dim, args = w.shape[0], (jnp.asarray(w), jnp.asarray(b))

  def fit(arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key   # deterministic
    return {"mask": fit_mask(w, arrays["pre_logits"], p)}

  def score(state: dict, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    mask = state.get("mask") if isinstance(state, dict) else None
    if mask is None or np.shape(mask) != w.shape:
      raise TypeError(f"dice: score needs the state returned by fit ({{'mask': [D, K] bool}} "
                      f"with [D, K] = {list(w.shape)}), got {type(state).__name__}")
    z = _head.features(arrays["pre_logits"], dim, "dice")
    return {"dice": _head.rowwise(dice_score, (*args, jnp.asarray(mask, bool)), z)}

  return base.Detector(name="dice", reads=("pre_logits",), fit=fit, score=score)


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("percentile",)


@jax.jit
def _grid_kernel(w: jax.Array, b: jax.Array, masks: jax.Array, z: jax.Array) -> jax.Array:
  return jax.vmap(dice_score, in_axes=(None, None, 0, None), out_axes=1)(w, b, masks, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] DICE scores: one mask fitted per percentile, every mask in one vmapped call."""
  w, b = _head.read_head(net, "dice")
  masks = np.stack([fit_mask(w, fit["pre_logits"], p)
                    for p in _grid.column(candidates, "percentile")])
  z = _head.features(arrays["pre_logits"], w.shape[0], "dice")
  return _grid.over_rows(_grid_kernel, (w, b, masks), (z,))
