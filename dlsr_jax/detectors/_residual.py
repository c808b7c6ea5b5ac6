"""The residual subspace shared by ViM and Residual (Wang et al., CVPR 2022; SPEC-posthoc 3.9-3.10).

Origin u = -pinv(W) b (with logits = z @ W + b: the least-squares solution of u @ W + b = 0);
S = (1/N) sum_i (z_i - u)(z_i - u)^T, uncentred about u; R = the eigenvectors of S after the
`dim` largest eigenvalues, a [D, D - dim] basis of the residual space. Fitted on the host in
float64; the residual norm ||(z - u) @ R|| is a jitted float32 kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _features


def check_dim(detector: str, dim: int | None, d: int) -> int:
  """The principal-subspace dimension: None -> D // 2; else an int with 1 <= dim < D.

  dim >= D leaves no residual space (OpenOOD's residual.yml dim = 512 on 512-d features gives a
  constant score): it is refused, not reduced to energy.
  """
  given = "" if dim is not None else " (None: D // 2)"
  if dim is None:
    dim = d // 2
  elif isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
    raise ValueError(f"{detector}: dim must be an int (or None for D // 2), got {dim!r}")
  if not 1 <= dim < d:
    why = "" if dim < d else (
        ": dim >= D leaves no residual space (the score would be "
        f"{'energy' if detector == 'vim' else 'constant'})")
    raise ValueError(f"{detector}: dim = {dim}{given} must satisfy 1 <= dim < D = {d} (D: the "
                     f"rows of net.head's W){why}")
  return int(dim)


def origin(w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[D] float64 u = -pinv(W) b for logits = z @ W + b, W [D, K] (numpy's pinv, rcond 1e-15)."""
  return -(b.astype(np.float64) @ np.linalg.pinv(w.astype(np.float64)))


def fit_residual_basis(z: np.ndarray, u: np.ndarray, dim: int, detector: str) -> np.ndarray:
  """R [D, D - dim] float64: the eigenvectors of S = (z - u)^T (z - u) / N after the top `dim`.

  Args:
    z: [N, D] float64 fit features.
    u: [D] the origin.
    dim: 1 <= dim < D.
    detector: the detector's name (for the message).

  Raises:
    ValueError: the dim-th and (dim+1)-th largest eigenvalues are equal (to rounding), so the
      fit set does not determine the principal subspace (always so when N <= dim).
  """
  d = z - u
  s = d.T @ d / d.shape[0]
  lam, vec = np.linalg.eigh((s + s.T) / 2.0)   # ascending
  k = s.shape[0] - dim                          # residual dimensions: the k smallest
  tol = max(float(lam[-1]), 0.0) * s.shape[0] * np.finfo(np.float64).eps
  if lam[k] - lam[k - 1] <= tol:
    hint = f" (N = {z.shape[0]} <= dim always does)" if z.shape[0] <= dim else ""
    raise ValueError(
        f"{detector}: the fit set does not determine a principal subspace of dim = {dim}: "
        f"eigenvalues {dim} and {dim + 1} (largest first) of its covariance about u are equal "
        f"({lam[k]:.6g}, {lam[k - 1]:.6g}){hint}; use more fit rows or another dim")
  return vec[:, :k]


@jax.jit
def residual_norm(u: jax.Array, r: jax.Array, z: jax.Array) -> jax.Array:
  """[B] float32 ||(z - u) @ R|| of features z [B, D] (full-precision matmul)."""
  return jnp.linalg.norm(jnp.matmul(z - u, r, precision=_features.HIGHEST), axis=-1)


def stack_padded(bases) -> np.ndarray:
  """[G, D, max width] float32: residual bases R [D, D - dim] zero-padded to one width (for a
  vmapped grid over dims; zero columns leave ||(z - u) @ R|| unchanged)."""
  width = max(int(np.shape(r)[1]) for r in bases)
  out = np.zeros((len(bases), int(np.shape(bases[0])[0]), width), np.float32)
  for i, r in enumerate(bases):
    out[i, :, :np.shape(r)[1]] = np.asarray(r, np.float32)
  return out
