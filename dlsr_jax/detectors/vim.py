"""ViM, virtual-logit matching (Wang, Li, Feng & Zhang, CVPR 2022), OpenOOD v1.5's form.

With the final layer (W [D, K], b [K]) of `Net.head` and l = z @ W + b:
origin u = -pinv(W) b; R = the residual basis of the fit features about u (the eigenvectors of
their uncentred covariance after the `dim` largest, `_residual`); r(z) = ||(z - u) @ R||;
alpha = mean max_c l_c / mean r(z) over the fit set (OpenOOD: ID train). The score is
alpha * r(z) - LSE(l) (OpenOOD's conf negated; higher = more OOD).

The logits are recomputed from "pre_logits" and the head, as OpenOOD does, so only "pre_logits"
is read. Fitting runs in float64 numpy, scoring in float32 in jitted chunks of rows.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _final_layer, _grid, _residual, base

__all__ = ["VimModel", "make", "vim_score"]


@flax.struct.dataclass
class VimModel:
  """ViM's fitted statistics (a frozen pytree).

  Attributes:
    origin: [D] float32 u.
    residual: [D, D - dim] float32 residual basis R.
    alpha: [] float32 scale of the virtual logit.
  """
  origin: jax.Array
  residual: jax.Array
  alpha: jax.Array


@jax.jit
def vim_score(w: jax.Array, b: jax.Array, origin: jax.Array, residual: jax.Array,
              alpha: jax.Array, z: jax.Array) -> jax.Array:
  """[B] float32 alpha * ||(z - u) @ R|| - LSE(z @ W + b) of features z [B, D]."""
  return (alpha * _residual.residual_norm(origin, residual, z)
          - _final_layer.energy(w, b, z))


def make(net: Any, dim: int | None = None) -> base.Detector:
  """ViM on the classifier's "pre_logits" and final layer.

  Args:
    net: the classifier; only `net.head` -> (W [D, K], b [K]) is read.
    dim: the principal-subspace dimension, 1 <= dim < D. None: D // 2, keeping OpenOOD's ratio
      (256 of 512; 32 for ResNet-20's D = 64). dim >= D leaves no residual space and is
      refused (not reduced to energy).

  Returns:
    A `Detector` reading ("pre_logits",) with score {"vim": [N] float32}.
  """
  w, b = _final_layer.read_head(net, "vim")
  d = w.shape[0]
  dim = _residual.check_dim("vim", dim, d)
  u = _residual.origin(w, b)
  what = f"net.head's W {w.shape}"

  def fit(arrays: base.SetArrays, key: jax.Array) -> VimModel:
    del key   # deterministic
    z = _final_layer.rows(arrays["pre_logits"], "fit pre_logits", "vim", d, what, np.float64)
    r = _residual.fit_residual_basis(z, u, dim, "vim")
    mean_residual = float(np.linalg.norm((z - u) @ r, axis=1).mean())
    mean_max_logit = float((z @ w.astype(np.float64) + b).max(axis=1).mean())
    alpha = mean_max_logit / mean_residual if mean_residual > 0.0 else np.inf
    if not 0.0 < alpha < np.inf:
      raise ValueError(f"vim: alpha = mean max logit / mean residual norm = {mean_max_logit:.6g}"
                       f" / {mean_residual:.6g} over the fit set must be a positive finite "
                       f"number (dim = {dim})")
    return VimModel(origin=jnp.asarray(u, jnp.float32), residual=jnp.asarray(r, jnp.float32),
                    alpha=jnp.asarray(alpha, jnp.float32))

  def score(state: VimModel, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "vim", d, what)
    args = (w, b, state.origin, state.residual, state.alpha)
    return {"vim": _final_layer.map_rows(vim_score, args, (z,))}

  return base.Detector(name="vim", reads=("pre_logits",), fit=fit, score=score)


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("dim",)


@jax.jit
def _grid_kernel(w: jax.Array, b: jax.Array, origin: jax.Array, residuals: jax.Array,
                 alphas: jax.Array, z: jax.Array) -> jax.Array:
  return jax.vmap(vim_score, in_axes=(None, None, None, 0, 0, None), out_axes=1)(
      w, b, origin, residuals, alphas, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] ViM scores: each dim fitted (its own `fit`), the residual bases zero-padded to
  one width (zero columns add nothing to the norm), every dim in one vmapped call."""
  states = [make(net, **c).fit(fit, None) for c in candidates]
  w, b = _final_layer.read_head(net, "vim")
  residuals = _residual.stack_padded([s.residual for s in states])
  alphas = np.asarray([s.alpha for s in states], np.float32)
  z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "vim", w.shape[0],
                        f"net.head's W {w.shape}")
  return _grid.over_rows(_grid_kernel, (w, b, states[0].origin, residuals, alphas), (z,))
