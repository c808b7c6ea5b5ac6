"""NCI, neural-collapse inspired (Liu & Qin, arXiv:2311.01479), OpenOOD v1.5's form.

With the predicted class c = argmax_k l_k, its weight vector w_c = W[:, c] of `Net.head` and mu
the fit features' mean (OpenOOD: ID train): conf = w_c . (z - mu) / ||z - mu|| + alpha * ||z||_1.
As in OpenOOD the projection is not divided by ||w_c|| (not a cosine). The score is -conf; higher
= more OOD.

Edge cases: an argmax tie takes the first class; a row with z == mu exactly has no direction:
its projection term is 0 (||z - mu|| is floored at 1e-12), so the score stays finite.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _final_layer, _grid, base

__all__ = ["NciModel", "make", "nci_score"]


@flax.struct.dataclass
class NciModel:
  """The fit features' mean (a frozen pytree): center [D] float32."""
  center: jax.Array


@jax.jit
def nci_score(class_weights: jax.Array, center: jax.Array, alpha: jax.Array,
              logits: jax.Array, z: jax.Array) -> jax.Array:
  """[B] float32 NCI scores.

  Args:
    class_weights: [K, D] W transposed (row k = w_k).
    center: [D] mu.
    alpha: [] the L1 weight.
    logits: [B, K].
    z: [B, D] features.
  """
  w_c = class_weights[jnp.argmax(logits, axis=-1)]                    # [B, D]
  d = z - center
  norm = jnp.maximum(jnp.linalg.norm(d, axis=-1), _final_layer.NORM_FLOOR)
  return -(jnp.sum(w_c * d, axis=-1) / norm + alpha * jnp.sum(jnp.abs(z), axis=-1))


def make(net: Any, alpha: float = 1e-4) -> base.Detector:
  """NCI on the classifier's "logits" and "pre_logits".

  Args:
    net: the classifier; only `net.head` -> (W [D, K], b [K]) is read.
    alpha: the weight of the L1 norm term, >= 0 (OpenOOD grid: 1e-4, 1e-3, 1e-2, 1e-1).

  Returns:
    A `Detector` reading ("logits", "pre_logits") with score {"nci": [N] float32}.
  """
  w, _ = _final_layer.read_head(net, "nci")
  weight = _final_layer.number("nci", "alpha", alpha, 0.0)
  (d, k), what = w.shape, f"net.head's W {w.shape}"
  class_weights = np.ascontiguousarray(w.T)

  def fit(arrays: base.SetArrays, key: jax.Array) -> NciModel:
    del key   # deterministic
    z = _final_layer.rows(arrays["pre_logits"], "fit pre_logits", "nci", d, what, np.float64)
    return NciModel(center=jnp.asarray(z.mean(axis=0), jnp.float32))

  def score(state: NciModel, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    logits = _final_layer.rows(arrays["logits"], "logits", "nci", k, what)
    z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "nci", d, what)
    args = (class_weights, state.center, np.float32(weight))
    return {"nci": _final_layer.map_rows(nci_score, args, (logits, z))}

  return base.Detector(name="nci", reads=("logits", "pre_logits"), fit=fit, score=score,
                       fit_reads=("pre_logits",))


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("alpha",)


@jax.jit
def _grid_kernel(class_weights: jax.Array, center: jax.Array, alphas: jax.Array,
                 logits: jax.Array, z: jax.Array) -> jax.Array:
  return jax.vmap(nci_score, in_axes=(None, None, 0, None, None), out_axes=1)(
      class_weights, center, alphas, logits, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] NCI scores: the mean fitted once, every alpha in one vmapped call."""
  state = make(net, **candidates[0]).fit(fit, None)
  w, _ = _final_layer.read_head(net, "nci")
  (d, k), what = w.shape, f"net.head's W {w.shape}"
  alphas = np.asarray([_final_layer.number("nci", "alpha", a, 0.0)
                       for a in _grid.column(candidates, "alpha")], np.float32)
  logits = _final_layer.rows(arrays["logits"], "logits", "nci", k, what)
  z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "nci", d, what)
  return _grid.over_rows(_grid_kernel, (np.ascontiguousarray(w.T), state.center, alphas),
                         (logits, z))
