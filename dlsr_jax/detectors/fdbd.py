"""fDBD, fast decision-boundary distance (Liu & Qin, ICML 2024), OpenOOD v1.5's form.

With the predicted class c = argmax_k l_k and the class weight vectors w_k = W[:, k] of
`Net.head` (logits = z @ W + b): conf = [sum_{j != c} |l_j - l_c| / ||w_j - w_c||] / N(z), the
summed feature-space distances from z to the c-vs-j decision hyperplanes (bias included through
the logits), divided by N(z) = ||z - mu|| (`distance_as_normalizer`, mu = the fit features'
mean; OpenOOD fits it on ID train) or ||z||. The score is -conf; higher = more OOD.

Edge cases: an argmax tie takes the first class; an N(z) of exactly 0 is taken as 1e-12, so
such a row gets a finite, very low score (the formula's limit) instead of -inf.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _final_layer, base

__all__ = ["FdbdModel", "boundary_norms", "fdbd_score", "make"]


@flax.struct.dataclass
class FdbdModel:
  """The normaliser's centre (a frozen pytree): mu [D] float32 (zeros for ||z||)."""
  center: jax.Array


def boundary_norms(w: np.ndarray) -> np.ndarray:
  """[K, K] float64 ||w_j - w_c|| of the columns of W [D, K], 1 on the diagonal (as OpenOOD).

  Raises:
    ValueError: fewer than 2 classes, or two classes with identical weight vectors (no
      decision boundary between them).
  """
  k = w.shape[1]
  if k < 2:
    raise ValueError(f"fdbd: net.head has K = {k} class; decision boundaries need K >= 2")
  wt = w.T.astype(np.float64)
  norms = np.linalg.norm(wt[:, None, :] - wt[None, :, :], axis=-1)
  np.fill_diagonal(norms, 1.0)
  if np.any(norms == 0.0):
    i, j = np.argwhere(norms == 0.0)[0]
    raise ValueError(f"fdbd: classes {i} and {j} of net.head have identical weight vectors "
                     f"W[:, {i}] == W[:, {j}]: there is no decision boundary between them")
  return norms


@jax.jit
def fdbd_score(boundary: jax.Array, center: jax.Array, logits: jax.Array,
               z: jax.Array) -> jax.Array:
  """[B] float32 fDBD scores.

  Args:
    boundary: [K, K] ||w_j - w_c|| (1 on the diagonal).
    center: [D] the normaliser's centre (mu, or zeros for ||z||).
    logits: [B, K].
    z: [B, D] features.
  """
  c = jnp.argmax(logits, axis=-1)
  top = jnp.take_along_axis(logits, c[:, None], axis=-1)
  distance = jnp.sum(jnp.abs(logits - top) / boundary[c], axis=-1)
  norm = jnp.maximum(jnp.linalg.norm(z - center, axis=-1), _final_layer.NORM_FLOOR)
  return -distance / norm


def make(net: Any, distance_as_normalizer: bool = True) -> base.Detector:
  """fDBD on the classifier's "logits" and "pre_logits".

  Args:
    net: the classifier; only `net.head` -> (W [D, K], b [K]) is read.
    distance_as_normalizer: True (default): N(z) = ||z - mu|| with mu fitted on the fit
      set's "pre_logits"; False: N(z) = ||z|| and nothing is fitted.

  Returns:
    A `Detector` reading ("logits", "pre_logits") with score {"fdbd": [N] float32}.
  """
  w, _ = _final_layer.read_head(net, "fdbd")
  if not isinstance(distance_as_normalizer, bool):
    raise ValueError(f"fdbd: distance_as_normalizer must be a bool, got "
                     f"{distance_as_normalizer!r}")
  boundary = boundary_norms(w).astype(np.float32)
  (d, k), what = w.shape, f"net.head's W {w.shape}"

  def fit(arrays: base.SetArrays, key: jax.Array) -> FdbdModel:
    del key   # deterministic
    if not distance_as_normalizer:
      return FdbdModel(center=jnp.zeros((d,), jnp.float32))
    z = _final_layer.rows(arrays["pre_logits"], "fit pre_logits", "fdbd", d, what, np.float64)
    return FdbdModel(center=jnp.asarray(z.mean(axis=0), jnp.float32))

  def score(state: FdbdModel, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    logits = _final_layer.rows(arrays["logits"], "logits", "fdbd", k, what)
    z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "fdbd", d, what)
    return {"fdbd": _final_layer.map_rows(fdbd_score, (boundary, state.center), (logits, z))}

  fit_reads = ("pre_logits",) if distance_as_normalizer else ()
  return base.Detector(name="fdbd", reads=("logits", "pre_logits"), fit=fit, score=score,
                       fit_reads=fit_reads)
