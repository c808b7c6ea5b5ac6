"""An independent numpy implementation of the release's test-time arithmetic (SPEC 1.5).

Written from the spec's step list, sharing no code with `dlsr_jax`: the LFDN
forward pass is re-implemented here in numpy from the Flax parameter tree, and
the DDIM chain follows the spec line by line (float32 throughout). The noise is
an input, so a test can feed exactly the draws that `dlsr_jax` makes.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

F32 = np.float32


def _silu(x: np.ndarray) -> np.ndarray:
  return x / (F32(1.0) + np.exp(-x))


def _dense(p: Mapping, x: np.ndarray) -> np.ndarray:
  return x @ np.asarray(p["kernel"], F32) + np.asarray(p["bias"], F32)


def _group_norm(p: Mapping, x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
  """GroupNorm with one group over the features of each row (biased variance)."""
  mean = x.mean(axis=-1, keepdims=True)
  var = np.square(x - mean).mean(axis=-1, keepdims=True)
  y = (x - mean) / np.sqrt(var + F32(eps))
  return y * np.asarray(p["scale"], F32) + np.asarray(p["bias"], F32)


def _sinusoidal(t: np.ndarray, dim: int) -> np.ndarray:
  half = dim // 2
  freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=F32) / half).astype(F32)
  args = t.astype(F32)[:, None] * freqs[None, :]
  return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def lfdn_forward(params: Mapping, x: np.ndarray, t: np.ndarray) -> np.ndarray:
  """The LFDN (SPEC 1.3) in numpy: [B, C], [B] -> x0 prediction [B, C]."""
  x = np.asarray(x, F32)
  width = np.asarray(params["in_proj"]["kernel"]).shape[1]
  emb = None
  if "time_dense_0" in params:
    emb = _dense(params["time_dense_0"], _sinusoidal(np.asarray(t), width))
    emb = _dense(params["time_dense_1"], _silu(emb))
  h = _dense(params["in_proj"], _silu(x))
  i = 0
  while f"block_{i}" in params:
    b = params[f"block_{i}"]
    r = _dense(b["in_dense"], _silu(_group_norm(b["in_norm"], h)))
    if emb is not None:
      r = r + _dense(b["emb_dense"], _silu(emb))
    r = _dense(b["out_dense"], _silu(_group_norm(b["out_norm"], r)))
    h = h + r
    i += 1
  return _dense(params["out_proj"], _silu(_group_norm(params["out_norm"], h)))


def release_reconstruct(denoise: Callable[[np.ndarray, np.ndarray], np.ndarray],
                        z0: np.ndarray, k: int, eps: np.ndarray, abar: np.ndarray, eta: float,
                        step_noise: Optional[Mapping[int, np.ndarray]] = None) -> np.ndarray:
  """The release's reconstruction from level k, stride 1, as SPEC 1.5 lists it.

  Args:
    denoise: (z [B, C], t [B]) -> x0 prediction [B, C], e.g.
      `lambda z, t: lfdn_forward(params, z, t)`.
    z0: [B, C] features.
    k: start level.
    eps: [B, C] forward noise.
    abar: [T] alphas_cumprod.
    eta: DDIM eta.
    step_noise: {t: [B, C]} the noise added at step t (needed when eta > 0).
  """
  abar = np.asarray(abar, F32)
  z0 = np.asarray(z0, F32)
  z = np.sqrt(abar[k]) * z0 + np.sqrt(F32(1.0) - abar[k]) * np.asarray(eps, F32)
  for t in range(k, 0, -1):
    x0_hat = np.asarray(denoise(z, np.full((z.shape[0],), t)), F32)
    eps_hat = (z / np.sqrt(abar[t]) - x0_hat) / np.sqrt(F32(1.0) / abar[t] - F32(1.0))
    a = abar[t - 1]
    a_prev = abar[t - 2] if t >= 2 else abar[0]
    sigma = F32(eta) * np.sqrt((F32(1.0) - a_prev) / (F32(1.0) - a) * (F32(1.0) - a / a_prev))
    pred = (z - np.sqrt(F32(1.0) - a) * eps_hat) / np.sqrt(a)
    z = np.sqrt(a_prev) * pred + np.sqrt(F32(1.0) - a_prev - sigma * sigma) * eps_hat
    if eta > 0:
      z = z + sigma * np.asarray(step_noise[t], F32)
  return z


def mse(z0: np.ndarray, z_rec: np.ndarray) -> np.ndarray:
  return np.sum(np.square(z0 - z_rec), axis=-1)


def mfsim(z0: np.ndarray, z_rec: np.ndarray, boundaries: Sequence[int],
          skip_first: bool) -> np.ndarray:
  """Minus the mean cosine over layers; the release skips the first layer."""
  pairs = list(zip(boundaries[:-1], boundaries[1:]))[1 if skip_first else 0:]
  cos = [np.sum(z0[:, lo:hi] * z_rec[:, lo:hi], -1)
         / (np.linalg.norm(z0[:, lo:hi], axis=-1) * np.linalg.norm(z_rec[:, lo:hi], axis=-1))
         for lo, hi in pairs]
  return -np.mean(np.stack(cos), axis=0)
