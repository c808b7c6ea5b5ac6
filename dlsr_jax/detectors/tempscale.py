"""Temperature scaling (Guo et al., ICML 2017) as an OOD score.

Fit: T* = argmin_{T > 0} NLL(T), NLL(T) = mean_i [LSE(l_i / T) - l_{i, y_i} / T], the exact
minimiser (OpenOOD fits on ID val with one LBFGS step of lr 0.01 from T = 1.5, which can stop far
from it). With beta = 1/T the NLL is convex and its derivative
g(beta) = mean_i [E_{softmax(beta l_i)}[l_i] - l_{i, y_i}] increases from
g(0) = mean_i [mean_c l_ic - l_{i, y_i}] to g(inf) = mean_i [max_c l_ic - l_{i, y_i}]; the
minimiser exists iff g(0) < 0 < g(inf) (labels above the mean logit on average, and at least one
fit sample misclassified), and is the root of g, bracketed in log beta and found by Brent's
method in float64.

Score: conf = max_c softmax(l / T)_c, which rounds to exactly 1.0 for confident inputs; the
score is the equivalent non-saturating -log conf = log1p(sum_{c != top} exp((l_c - l_top) / T))
(a monotone function of -conf: same ranking), in float64, so inputs tie only where every
(l_top - l_c) / T exceeds ~745 (float32: ~87). Higher = more OOD.
"""

from __future__ import annotations

import flax.struct
import jax
import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

from dlsr_jax.detectors import _features, base

__all__ = ["TempScaleModel", "fit_temperature", "make", "nll_slope", "tempscale_score"]

_MAX_LOG_BETA = 700.0   # |log T| searched up to 700 (exp(700) is near the float64 maximum)


@flax.struct.dataclass
class TempScaleModel:
  """The fitted temperature.

  Attributes:
    temperature: T* > 0, the NLL minimiser on the fit set (a Python float; static).
  """
  temperature: float = flax.struct.field(pytree_node=False, default=1.0)


def nll_slope(logits: np.ndarray, labels: np.ndarray, beta: float) -> float:
  """d NLL / d beta at beta = 1/T: mean_i [E_{softmax(beta l_i)}[l_i] - l_{i, y_i}] (float64).

  Written as E[l - max l] + (max l - l_y) so that neither term cancels the other.
  """
  top = logits.max(axis=1)
  shifted = logits - top[:, None]                 # <= 0
  w = np.exp(beta * shifted)
  expected = np.sum(w * shifted, axis=1) / np.sum(w, axis=1)
  return float(np.mean(expected + (top - logits[np.arange(len(labels)), labels])))


def _check_labels(labels: ArrayLike, n: int, k: int) -> np.ndarray:
  y = np.asarray(labels)
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"tempscale: labels must be integers [N] with N = {n} (the rows of "
                     f"logits), got {y.dtype} {y.shape}")
  if n and (y.min() < 0 or y.max() >= k):
    raise ValueError(f"tempscale: labels must be class indices in [0, {k}) of the {k} logits, "
                     f"got values in [{y.min()}, {y.max()}]")
  return y


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> TempScaleModel:
  """The exact NLL-minimising temperature on (logits, labels).

  Args:
    logits: [N, K] fit-set logits (finite; K >= 2).
    labels: [N] integer class indices in [0, K).

  Returns:
    A `TempScaleModel`.

  Raises:
    ValueError: bad arrays, or a fit set whose NLL has no minimiser over T > 0: every label
      holds the top logit (the NLL falls towards T -> 0), or the labels' logits are not above
      the mean logit on average (the minimum is at T = inf).
  """
  l = _features.as_features(logits, "tempscale: logits", min_rows=1)
  n, k = l.shape
  if k < 2:
    raise ValueError(f"tempscale: logits need at least 2 classes, got shape {l.shape}")
  y = _check_labels(labels, n, k)
  label_logit = l[np.arange(n), y]
  at_zero = float(np.mean(l.mean(axis=1) - label_logit))
  at_inf = float(np.mean(l.max(axis=1) - label_logit))
  if not at_inf > 0.0:
    raise ValueError(
        f"tempscale: every one of the {n} fit samples has its label's logit as the top logit, "
        "so the NLL keeps falling as T -> 0 and has no minimiser; fit on a set with "
        "misclassified samples (OpenOOD fits on the ID validation split)")
  if not at_zero < 0.0:
    raise ValueError(
        "tempscale: the labels' logits are on average not above the mean logit (d NLL / d(1/T) "
        f"= {at_zero:.3g} >= 0 at 1/T = 0), so the NLL is smallest at T = inf; the logits do "
        "not predict these labels")
  slope = lambda u: nll_slope(l, y, float(np.exp(u)))   # u = log beta = -log T
  step, lo, hi = np.log(2.0), 0.0, 0.0
  while slope(hi) <= 0.0:          # g(beta) > 0 for large beta since g(inf) > 0
    if hi > _MAX_LOG_BETA:
      raise ValueError(f"tempscale: the NLL minimiser lies below T = {np.exp(-hi):.3g}")
    lo, hi = hi, hi + step
  while slope(lo) >= 0.0:          # g(beta) < 0 for small beta since g(0) < 0
    if lo < -_MAX_LOG_BETA:
      raise ValueError(f"tempscale: the NLL minimiser lies above T = {np.exp(-lo):.3g}")
    lo, hi = lo - step, lo
  u = optimize.brentq(slope, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
  return TempScaleModel(temperature=float(np.exp(-u)))


def tempscale_score(model: TempScaleModel, logits: ArrayLike) -> np.ndarray:
  """-log max_c softmax(l / T)_c = log1p(sum_{c != top} exp((l_c - l_top) / T)), in float64.

  Args:
    model: from `fit_temperature`.
    logits: [N, K] logits.

  Returns:
    [N] float64 scores in [0, log K]; higher = more OOD (ranks as -max softmax(l / T)).
  """
  if not isinstance(model, TempScaleModel):
    raise TypeError(f"model must be a TempScaleModel, got {type(model).__name__}")
  l = _features.as_features(logits, "logits")
  shifted = (l - l.max(axis=1, keepdims=True)) / model.temperature
  top = np.argmax(l, axis=1)
  e = np.exp(shifted)
  e[np.arange(len(l)), top] = 0.0
  return np.log1p(np.sum(e, axis=1))


def make() -> base.Detector:
  """TempScale on the classifier's logits; fit reads "logits" and "labels" (OpenOOD: ID val).

  Returns:
    A `Detector` reading ("logits",) with score {"tempscale": [N] float64}; the fitted state is
    a `TempScaleModel`.
  """

  def fit(arrays: base.SetArrays, key: jax.Array) -> TempScaleModel:
    del key   # deterministic
    return fit_temperature(arrays["logits"], arrays["labels"])

  def score(state: TempScaleModel, arrays: base.SetArrays,
            key: jax.Array) -> dict[str, np.ndarray]:
    del key
    return {"tempscale": tempscale_score(state, arrays["logits"])}

  return base.Detector(name="tempscale", reads=("logits",), fit=fit, score=score,
                       fit_reads=("logits", "labels"))
