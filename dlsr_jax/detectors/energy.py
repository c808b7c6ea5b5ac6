"""Energy score (Liu et al., NeurIPS 2020): score = -T * logsumexp(logits / T)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _features, _grid, base

__all__ = ["energy_score", "make"]


@jax.jit
def energy_score(logits: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
  """The free energy of the logits (a traced temperature: no recompile per T).

  Args:
    logits: [N, K] classifier logits.
    temperature: T > 0.

  Returns:
    [N] float32 scores -T logsumexp(logits / T); higher = more OOD.
  """
  t = jnp.asarray(temperature, jnp.float32)
  return -t * jax.nn.logsumexp(logits.astype(jnp.float32) / t, axis=-1)


def make(temperature: float = 1.0) -> base.Detector:
  """Energy on the classifier's logits.

  Args:
    temperature: T > 0 (the paper uses T = 1).

  Returns:
    A `Detector` reading ("logits",) with score {"energy": [N]}.
  """
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
      or not temperature > 0:
    raise ValueError(f"energy: temperature must be a positive number, got {temperature!r}")
  t = float(temperature)

  def fit(arrays: base.SetArrays, key: jax.Array) -> None:
    del arrays, key   # nothing to fit
    return None

  def score(state: None, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del state, key
    logits = _features.as_features(arrays["logits"], "logits", dtype=np.float32)
    return {"energy": np.asarray(energy_score(logits, t))}

  return base.Detector(name="energy", reads=("logits",), fit=fit, score=score, fit_reads=())


# ---------------------------------------------------------------- tuning grid --
GRID_SETTINGS = ("temperature",)


@jax.jit
def _grid_kernel(temperatures: jax.Array, logits: jax.Array) -> jax.Array:
  return jax.vmap(energy_score, in_axes=(None, 0), out_axes=1)(logits, temperatures)


def score_grid(candidates, fit: base.SetArrays, arrays: base.SetArrays, *,
               net=None) -> np.ndarray:
  """[G, N] energy scores of every candidate temperature in one vmapped call (no fit)."""
  del fit, net
  logits = _features.as_features(arrays["logits"], "logits", dtype=np.float32)
  t = np.asarray(_grid.column(candidates, "temperature"), np.float32)
  return _grid.over_rows(_grid_kernel, (t,), (logits,))
