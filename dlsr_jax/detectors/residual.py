"""Residual (the baseline of the ViM paper, Wang et al., CVPR 2022), OpenOOD v1.5's form.

The norm of the feature's component in the residual space: score = ||(z - u) @ R||, with
u = -pinv(W) b from `Net.head` and R the eigenvectors of the fit features' covariance about u
after the `dim` largest (`_residual`; OpenOOD fits them on ID val). Higher = more OOD.

OpenOOD's residual.yml sets dim = 512, which on its 512-d CIFAR features leaves no residual space
(a constant score); here dim defaults to D // 2, as for ViM, and dim >= D is refused.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _final_layer, _grid, _residual, base

__all__ = ["ResidualModel", "make"]


@flax.struct.dataclass
class ResidualModel:
  """The residual space (a frozen pytree).

  Attributes:
    origin: [D] float32 u.
    residual: [D, D - dim] float32 residual basis R.
  """
  origin: jax.Array
  residual: jax.Array


def make(net: Any, dim: int | None = None) -> base.Detector:
  """Residual on the classifier's "pre_logits".

  Args:
    net: the classifier; only `net.head` -> (W [D, K], b [K]) is read (for the origin u).
    dim: the principal-subspace dimension, 1 <= dim < D; None: D // 2 (as ViM).

  Returns:
    A `Detector` reading ("pre_logits",) with score {"residual": [N] float32}.
  """
  w, b = _final_layer.read_head(net, "residual")
  d = w.shape[0]
  dim = _residual.check_dim("residual", dim, d)
  u = _residual.origin(w, b)
  what = f"net.head's W {w.shape}"

  def fit(arrays: base.SetArrays, key: jax.Array) -> ResidualModel:
    del key   # deterministic
    z = _final_layer.rows(arrays["pre_logits"], "fit pre_logits", "residual", d, what,
                          np.float64)
    r = _residual.fit_residual_basis(z, u, dim, "residual")
    return ResidualModel(origin=jnp.asarray(u, jnp.float32), residual=jnp.asarray(r, jnp.float32))

  def score(state: ResidualModel, arrays: base.SetArrays,
            key: jax.Array) -> dict[str, np.ndarray]:
    del key
    z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "residual", d, what)
    return {"residual": _final_layer.map_rows(_residual.residual_norm,
                                              (state.origin, state.residual), (z,))}

  return base.Detector(name="residual", reads=("pre_logits",), fit=fit, score=score)


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("dim",)


@jax.jit
def _grid_kernel(origin: jax.Array, residuals: jax.Array, z: jax.Array) -> jax.Array:
  return jax.vmap(_residual.residual_norm, in_axes=(None, 0, None), out_axes=1)(
      origin, residuals, z)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net: Any = None) -> np.ndarray:
  """[G, N] Residual scores: each dim fitted (its own `fit`), the bases zero-padded to one
  width, every dim in one vmapped call."""
  states = [make(net, **c).fit(fit, None) for c in candidates]
  w, _ = _final_layer.read_head(net, "residual")
  z = _final_layer.rows(arrays["pre_logits"], "pre_logits", "residual", w.shape[0],
                        f"net.head's W {w.shape}")
  residuals = _residual.stack_padded([s.residual for s in states])
  return _grid.over_rows(_grid_kernel, (states[0].origin, residuals), (z,))
