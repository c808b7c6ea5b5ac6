"""Confidence (DeVries & Taylor 2018): score = -sigmoid(confidence logit).

For a net trained with the confidence-branch objective
(`objectives.confidence_branch`), whose "confidence" array is the pre-sigmoid
logit [N] of its confidence head. The sigmoid is taken in float64 on the host:
in float32 it rounds to exactly 1.0 for every logit above about 17, so the
most confident inputs would tie; in float64 ties start above about 37. The
scores are therefore float64 [N] (the evaluation's metrics read float64).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from dlsr_jax.detectors import _features, base

__all__ = ["confidence_score", "make"]


def confidence_score(confidence_logit: ArrayLike) -> np.ndarray:
  """Minus the sigmoid of the confidence logits, in float64.

  Args:
    confidence_logit: [N] finite pre-sigmoid confidence logits.

  Returns:
    [N] float64 scores in [-1, 0]; higher = less confident = more OOD.

  Raises:
    ValueError: not a finite 1-D numeric array.
  """
  z = np.asarray(confidence_logit)
  if z.ndim != 1:
    raise ValueError(f"confidence must be a 1-D array [N] of logits, got shape {z.shape}")
  return -special.expit(_features.as_features(z[:, None], "confidence")[:, 0])


def make() -> base.Detector:
  """Confidence on the net's "confidence" array (no settings, nothing to fit)."""

  def fit(arrays: base.SetArrays, key) -> None:
    del arrays, key   # nothing to fit
    return None

  def score(state: None, arrays: base.SetArrays, key) -> dict[str, np.ndarray]:
    del state, key
    return {"confidence": confidence_score(arrays["confidence"])}

  return base.Detector(name="confidence", reads=("confidence",), fit=fit, score=score)
