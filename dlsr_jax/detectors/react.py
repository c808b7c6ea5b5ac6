"""ReAct (Sun, Guo & Li, NeurIPS 2021), as in OpenOOD v1.5 (SPEC-posthoc section 3.1).

Fit: the clip value c = np.percentile over ALL entries of the fit set's pre-logits (N x D
flattened, not per dimension); OpenOOD fits it on the ID validation split, here on whatever
arrays `fit` is given. Score: v = min(z, c) elementwise (an upper clip only) and
score = -LSE(v @ W + b), with (W, b) the classifier's final dense layer (`net.head`).
Higher = more OOD.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _grid, _head, base

__all__ = ["fit_clip", "make", "react_score"]


def fit_clip(z_fit: ArrayLike, percentile: float, dim: int | None = None) -> np.float32:
  """ReAct's clip value: the percentile of all entries of the fit pre-logits.

  Args:
    z_fit: [N, D] finite pre-logits of the fit set (N >= 1).
    percentile: in (0, 100) (numpy's default linear interpolation, computed in float64).
    dim: the head's D, checked when given.

  Returns:
    The clip value c (float32 scalar).
  """
  p = _head.check_percentile(percentile, "react")
  z = _head.features(z_fit, dim, "react")
  return np.float32(np.percentile(z.astype(np.float64), p))


@jax.jit
def react_score(w: jax.Array, b: jax.Array, clip: jax.Array, z: jax.Array) -> jax.Array:
  """-LSE(min(z, clip) @ W + b) per row (a traced clip: no recompile per value).

  Args:
    w: [D, K] final-layer weights.
    b: [K] biases.
    clip: the scalar clip value c.
    z: [B, D] pre-logits.

  Returns:
    [B] float32 scores; higher = more OOD.
  """
  return _head.energy(w, b, jnp.minimum(z, jnp.asarray(clip, z.dtype)))


def make(net: Any, percentile: float = 90.0) -> base.Detector:
  """ReAct on the classifier's pre-logits and final layer.

  Args:
    net: the classifier; only `net.head -> (W [D, K], b [K])` is read.
    percentile: the clip's percentile of the fit pre-logits, in (0, 100) (OpenOOD: 90;
      grid {85, 90, 95, 99}).

  Returns:
    A `Detector` reading ("pre_logits",) for fit and score, with score {"react": [N] float32}.
  """
  p = _head.check_percentile(percentile, "react")
  w, b = _head.read_head(net, "react")
  dim, args = w.shape[0], (jnp.asarray(w), jnp.asarray(b))

  def fit(arrays: base.SetArrays, key: jax.Array) -> dict[str, np.float32]:
    del key   # deterministic
    return {"clip": fit_clip(arrays["pre_logits"], p, dim)}

  def score(state: dict, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    if not isinstance(state, dict) or "clip" not in state:
      raise TypeError(f"react: score needs the state returned by fit ({{'clip': c}}), got "
                      f"{type(state).__name__}")
    z = _head.features(arrays["pre_logits"], dim, "react")
    return {"react": _head.rowwise(react_score, (*args, np.float32(state["clip"])), z)}

  return base.Detector(name="react", reads=("pre_logits",), fit=fit, score=score)


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("percentile",)


@jax.jit
def _grid_kernel(w: jax.Array, b: jax.Array, clips: jax.Array, z: jax.Array) -> jax.Array:
  return jax.vmap(react_score, in_axes=(None, None, 0, None), out_axes=1)(w, b, clips, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] ReAct scores: every percentile's clip from one np.percentile call (as
  `fit_clip`), every clip in one vmapped call."""
  w, b = _head.read_head(net, "react")
  dim = w.shape[0]
  ps = [_head.check_percentile(p, "react") for p in _grid.column(candidates, "percentile")]
  z_fit = _head.features(fit["pre_logits"], dim, "react").astype(np.float64)
  clips = np.percentile(z_fit, ps).astype(np.float32)
  z = _head.features(arrays["pre_logits"], dim, "react")
  return _grid.over_rows(_grid_kernel, (w, b, clips), (z,))
