"""KL-Matching (Hendrycks et al., ICML 2022): the KL divergence to the nearest class template.

Fit (no labels; OpenOOD fits on ID val): d_c = the mean softmax over the fit samples predicted
as class c. Score: min_c KL(p || d_c) with p = softmax(logits), KL(p || q) = sum_i p_i
log(p_i / q_i) and 0 log 0 = 0; higher = more OOD.

OpenOOD gives a class that no fit sample predicts the one-hot template e_c, whose KL is +inf for
every p with mass elsewhere (that template never wins the min); here such a fit is refused
instead, since it means the fit set does not cover the classes.

Everything runs in float64 on the host: near a one-hot p the score tends to the constant
-log d_{top,top}, and float32 rounds the remaining differences away (ties) long before float64.
"""

from __future__ import annotations

import flax.struct
import jax
import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from dlsr_jax.detectors import _features, base

__all__ = ["KLMModel", "fit_klm", "klm_score", "make"]

_BLOCK = 2 ** 22   # elements of a [B, K] float64 temporary (32 MB)


@flax.struct.dataclass
class KLMModel:
  """Class templates of KL-Matching.

  Attributes:
    templates: [K, K] float64 numpy; row c is the mean softmax of the fit samples predicted c.
  """
  templates: np.ndarray


def fit_klm(logits: ArrayLike) -> KLMModel:
  """The per-predicted-class mean softmax of the fit set.

  Args:
    logits: [N, K] fit-set logits (finite).

  Returns:
    A `KLMModel`.

  Raises:
    ValueError: bad logits, or a class that no fit sample predicts.
  """
  l = _features.as_features(logits, "klm: logits")
  k = l.shape[1]
  pred = np.argmax(l, axis=1)
  counts = np.bincount(pred, minlength=k)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(
        f"klm: no fit sample is predicted as class(es) {empty.tolist()[:20]} ({empty.size} of "
        f"{k} classes; {l.shape[0]} fit samples), so their templates are undefined (OpenOOD's "
        "one-hot stand-in gives KL = inf); fit on a set where every class is predicted")
  sums = np.zeros((k, k))
  np.add.at(sums, pred, special.softmax(l, axis=1))
  return KLMModel(templates=sums / counts[:, None])


def klm_score(model: KLMModel, logits: ArrayLike) -> np.ndarray:
  """min_c KL(softmax(l) || d_c), in float64.

  Args:
    model: from `fit_klm`.
    logits: [N, K] logits.

  Returns:
    [N] float64 scores >= 0 (+inf where every template has a zero that p does not); higher =
    more OOD.
  """
  if not isinstance(model, KLMModel):
    raise TypeError(f"model must be a KLMModel, got {type(model).__name__}")
  d = np.asarray(model.templates, np.float64)
  l = _features.as_features(logits, "logits", dim=d.shape[1])
  zero = d <= 0.0
  log_d = np.log(np.where(zero, 1.0, d))
  rows = max(1, _BLOCK // d.shape[0])   # row blocks bound the [B, K] temporaries
  return np.concatenate([_min_kl(l[i:i + rows], log_d, zero) for i in range(0, len(l), rows)])


def _min_kl(l: np.ndarray, log_d: np.ndarray, zero: np.ndarray) -> np.ndarray:
  log_p = special.log_softmax(l, axis=1)
  p = np.exp(log_p)
  neg_entropy = np.sum(special.xlogy(p, p), axis=1)            # sum p log p, 0 log 0 = 0
  kl = neg_entropy[:, None] - p @ log_d.T                       # [B, K]
  if zero.any():   # a template zero where p > 0: KL = inf
    kl = np.where((p > 0.0) @ zero.T.astype(np.float64) > 0.0, np.inf, kl)
  return np.maximum(np.min(kl, axis=1), 0.0)


def make() -> base.Detector:
  """KL-Matching on the classifier's logits; fit reads "logits" only (no labels).

  Returns:
    A `Detector` reading ("logits",) with score {"klm": [N] float64}; the fitted state is a
    `KLMModel`.
  """

  def fit(arrays: base.SetArrays, key: jax.Array) -> KLMModel:
    del key   # deterministic
    return fit_klm(arrays["logits"])

  def score(state: KLMModel, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del key
    return {"klm": klm_score(state, arrays["logits"])}

  return base.Detector(name="klm", reads=("logits",), fit=fit, score=score)
