"""GEN (Liu, Lochman & Zach, CVPR 2023): generalized entropy of the softmax.

score = G = sum over the M largest p_c of p_c^gamma (1 - p_c)^gamma, with p = softmax(logits)
(M >= K keeps every class, as OpenOOD's slicing does); higher = more OOD.

Computed in log space so that it never saturates: in float32 the top probability rounds to 1.0
once its margin passes about 17, which would zero its term, yet (1 - p)^gamma is still e^-1.7
there for gamma = 0.1. Here log(1 - p_top) = LSE_{c != top}(l_c) - LSE(l) and, for the other
classes (p_c <= 1/2), log1p(-p_c); log G = LSE_c gamma (log p_c + log(1 - p_c)) is jitted in
float32, and G = exp(log G) is returned in float64: G itself is about e^(-gamma margin), which
float32 flushes to 0 (ties) past gamma * margin ~ 100 (margins above ~10 for gamma = 10, in
OpenOOD's grid), float64 only past 745.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.detectors import _features, _grid, base

__all__ = ["gen_log_score", "gen_score", "make"]


@functools.partial(jax.jit, static_argnames=("m",))
def gen_log_score(logits: jax.Array, gamma: float | jax.Array = 0.1, *,
                  m: int = 100) -> jax.Array:
  """log G, the log of the generalized entropy of softmax(logits) over its M largest entries.

  Args:
    logits: [N, K] classifier logits.
    gamma: gamma > 0 (traced: no recompile per value).
    m: how many of the largest probabilities are summed (static); m >= K sums all.

  Returns:
    [N] float32 log G (-inf for K = 1, where G = 0).
  """
  l = logits.astype(jnp.float32)
  k = l.shape[-1]
  lse = jax.nn.logsumexp(l, axis=-1, keepdims=True)
  log_p = l - lse
  top = jax.nn.one_hot(jnp.argmax(l, axis=-1), k, dtype=bool)
  rest = jax.nn.logsumexp(jnp.where(top, -jnp.inf, l), axis=-1, keepdims=True) - lse
  log_q = jnp.where(top, rest, jnp.log1p(-jnp.exp(jnp.where(top, -jnp.inf, log_p))))
  log_terms = jnp.asarray(gamma, jnp.float32) * (log_p + log_q)        # [N, K]
  if m < k:
    _, idx = jax.lax.top_k(l, m)
    log_terms = jnp.take_along_axis(log_terms, idx, axis=-1)
  return jax.nn.logsumexp(log_terms, axis=-1)


def gen_score(logits: ArrayLike, gamma: float = 0.1, m: int = 100) -> np.ndarray:
  """G, the generalized entropy of softmax(logits) over its M largest entries.

  Args:
    logits: [N, K] finite classifier logits.
    gamma: gamma > 0.
    m: how many of the largest probabilities are summed; m >= K sums all.

  Returns:
    [N] float64 scores in [0, K 2^(-2 gamma)]; higher = more OOD.
  """
  l = _features.as_features(logits, "logits", dtype=np.float32)
  log_g = gen_log_score(l, float(gamma), m=min(int(m), l.shape[1]))
  return np.exp(np.asarray(log_g, np.float64))


def make(gamma: float = 0.1, m: int = 100) -> base.Detector:
  """GEN on the classifier's logits (nothing to fit).

  Args:
    gamma: the entropy exponent, a positive number (OpenOOD: 0.1; grid 0.01 ... 10).
    m: how many of the largest probabilities are summed, a positive int (OpenOOD: 100, so
      every class of CIFAR-10; grid 10 ... 1000).

  Returns:
    A `Detector` reading ("logits",) with score {"gen": [N] float64}.
  """
  if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)) \
      or not 0.0 < gamma < np.inf:
    raise ValueError(f"gen: gamma must be a positive finite number, got {gamma!r}")
  if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
    raise ValueError(f"gen: m must be a positive int (the number of top probabilities "
                     f"summed), got {m!r}")
  g, m = float(gamma), int(m)

  def fit(arrays: base.SetArrays, key: jax.Array) -> None:
    del arrays, key   # nothing to fit
    return None

  def score(state: None, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del state, key
    return {"gen": gen_score(arrays["logits"], g, m)}

  return base.Detector(name="gen", reads=("logits",), fit=fit, score=score)


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("gamma", "m")


@functools.partial(jax.jit, static_argnames=("m",))
def _grid_kernel(gammas: jax.Array, logits: jax.Array, *, m: int) -> jax.Array:
  return jax.vmap(lambda g: gen_log_score(logits, g, m=m), out_axes=1)(gammas)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net=None) -> np.ndarray:
  """[G, N] GEN scores: every gamma in one vmapped call per effective M = min(m, K)."""
  del fit, net
  l = _features.as_features(arrays["logits"], "logits", dtype=np.float32)
  ms = [min(int(m), l.shape[1]) for m in _grid.column(candidates, "m")]
  gammas = np.asarray(_grid.column(candidates, "gamma"), np.float32)
  out = np.empty((len(candidates), l.shape[0]), np.float64)
  for m in dict.fromkeys(ms):
    rows = [i for i, mi in enumerate(ms) if mi == m]
    kernel = functools.partial(_grid_kernel, m=m)
    out[rows] = np.exp(_grid.over_rows(kernel, (gammas[rows],), (l,)).astype(np.float64))
  return out
