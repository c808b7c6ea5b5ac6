"""MSP (Hendrycks & Gimpel, ICLR 2017): score = -max softmax(logits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import _features, base

__all__ = ["make", "msp_score"]


@jax.jit
def msp_score(logits: jax.Array) -> jax.Array:
  """Minus the maximum softmax probability.

  Args:
    logits: [N, K] classifier logits.

  Returns:
    [N] float32 scores in [-1, -1/K]; higher = more OOD.
  """
  return -jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def _fit(arrays: base.SetArrays, key: jax.Array) -> None:
  del arrays, key   # nothing to fit
  return None


def _score(state: None, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
  del state, key
  logits = _features.as_features(arrays["logits"], "logits", dtype=np.float32)
  return {"msp": np.asarray(msp_score(logits))}


def make() -> base.Detector:
  """MSP on the classifier's logits (no settings)."""
  return base.Detector(name="msp", reads=("logits",), fit=_fit, score=_score, fit_reads=())
