"""VRA (Xu, Lian, Liu & Tao, NeurIPS 2023) in OpenOOD v1.5's form: a two-sided feature clip.

Fit (OpenOOD: on ID val): lo = pct(Z, low), hi = pct(Z, high), numpy's default percentiles over
all entries of the fit feature matrix. Score: v = clip(z, lo, hi) (values below lo are raised to
lo), then -LSE(v @ W + b) with (W, b) = `Net.head`; higher = more OOD. The paper's
suppress/amplify rectifier is not what OpenOOD implements; this follows OpenOOD.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _final_layer, _grid, base

__all__ = ["VraModel", "make", "vra_score"]


@flax.struct.dataclass
class VraModel:
  """The clip bounds (a frozen pytree): lo, hi [] float32, lo <= hi."""
  lo: jax.Array
  hi: jax.Array


@jax.jit
def vra_score(w: jax.Array, b: jax.Array, lo: jax.Array, hi: jax.Array,
              z: jax.Array) -> jax.Array:
  """[B] float32 -LSE(clip(z, lo, hi) @ W + b) of features z [B, D]."""
  return -_final_layer.energy(w, b, jnp.clip(z, lo, hi))


def make(net: Any, low: float = 10, high: float = 90) -> base.Detector:
  """VRA on the classifier's "pre_logits" and final layer.

  Args:
    net: the classifier; only `net.head` -> (W [D, K], b [K]) is read.
    low: the lower clip percentile, 0 <= low < high (OpenOOD grid: 1, 5, 10, 15).
    high: the upper clip percentile, low < high <= 100 (OpenOOD grid: 85, 90, 95, 99).

  Returns:
    A `Detector` reading ("pre_logits",) with score {"vra": [N] float32}.
  """
  w, b = _final_layer.read_head(net, "vra")
  lo_pct = _final_layer.number("vra", "low", low, 0.0, 100.0)
  hi_pct = _final_layer.number("vra", "high", high, 0.0, 100.0)
  if not lo_pct < hi_pct:
    raise ValueError(f"vra: low = {low!r} must be below high = {high!r} (percentiles)")
  d = w.shape[0]
  what = f"net.head's W {w.shape}"

  def fit(arrays: base.SetArrays, key: jax.Array) -> VraModel:
    del key   # deterministic
    z = _final_layer.rows(arrays["pre_logits"], "fit pre_logits", "vra", d, what, np.float64)
    lo, hi = np.percentile(z, [lo_pct, hi_pct])
    return VraModel(lo=jnp.asarray(lo, jnp.float32), hi=jnp.asarray(hi, jnp.float32))

  def score(state: VraModel, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "vra", d, what)
    return {"vra": _final_layer.map_rows(vra_score, (w, b, state.lo, state.hi), (z,))}

  return base.Detector(name="vra", reads=("pre_logits",), fit=fit, score=score)


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("low", "high")


@jax.jit
def _grid_kernel(w: jax.Array, b: jax.Array, lo: jax.Array, hi: jax.Array,
                 z: jax.Array) -> jax.Array:
  return jax.vmap(vra_score, in_axes=(None, None, 0, 0, None), out_axes=1)(w, b, lo, hi, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] VRA scores: every candidate's (lo, hi) from one np.percentile call over the fit
  set (as `fit`), all of them in one vmapped call."""
  for c in candidates:
    make(net, **c)   # checks each (low, high)
  w, b = _final_layer.read_head(net, "vra")
  z_fit = _final_layer.rows(fit["pre_logits"], "fit pre_logits", "vra", w.shape[0],
                            f"net.head's W {w.shape}", np.float64)
  pcts = [float(c[k]) for c in candidates for k in ("low", "high")]
  bounds = np.percentile(z_fit, pcts).astype(np.float32).reshape(len(candidates), 2)
  lo, hi = bounds[:, 0], bounds[:, 1]
  z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "vra", w.shape[0],
                        f"net.head's W {w.shape}")
  return _grid.over_rows(_grid_kernel, (w, b, lo, hi), (z,))
