"""OOD detection metrics (host side, numpy).

Conventions:
  * A score is HIGHER for inputs that look more out-of-distribution (OOD).
  * Labels: in-distribution (ID) = 0, OOD = 1.
  * Every metric is a fraction in [0, 1] (not a percentage).

All metrics are computed from the exact step-wise ROC / precision-recall curves
over the distinct score values ("thresholds"), sorted from the most OOD-looking
to the least.  At a threshold ``t`` an input is *flagged OOD* iff
``score >= t`` (inputs tied with the threshold are flagged), which is the rule
``sklearn.metrics.roc_curve`` / ``precision_recall_curve`` use.

Definitions (n_id ID scores, n_ood OOD scores):

  auroc: area under the ROC curve with OOD as the positive class, i.e.
    ``P(s_ood > s_id) + 0.5 * P(s_ood == s_id)`` over all ID/OOD pairs.  Equals
    ``sklearn.metrics.roc_auc_score(labels, scores)`` with labels ID=0, OOD=1.
  aupr_out: area under the precision-recall curve with OOD as the positive
    class and ``score`` as the decision value.
  aupr_in: area under the precision-recall curve with ID as the positive class
    and ``-score`` as the decision value.
    By default AUPR means AVERAGE PRECISION, scikit-learn's step-wise
    (non-interpolated) definition ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the
    distinct thresholds, identical to ``sklearn.metrics.average_precision_score``.
    With ``trapezoid=True`` the trapezoidal area
    ``sklearn.metrics.auc(recall, precision)`` of the curve returned by
    ``sklearn.metrics.precision_recall_curve`` (which starts at recall 0,
    precision 1) is returned instead; it is slightly optimistic and is offered
    only to compare with papers that used it.
  fpr95_id_positive: fraction of OOD inputs ACCEPTED as ID when (at least) 95% of
    the ID inputs are accepted (the convention of ODIN, Hendrycks et al. and the
    DLSR release).  An input is accepted iff ``score <= tau`` where ``tau`` is
    the smallest ID score such that ``#{ID scores <= tau} / n_id >= 0.95``
    (the ``ceil(0.95 * n_id)``-th smallest ID score, the comparison being done
    in floating point as sklearn does).  OOD scores tied with ``tau`` count as
    accepted (conservative: ties hurt the detector).  Recipe read off sklearn:
    ``fpr, tpr, _ = roc_curve(labels_id_is_1, -scores, drop_intermediate=False)``
    and the value is ``fpr[argmax(tpr >= 0.95)]`` (first tpr >= 0.95).
  fpr95_ood_positive: fraction of ID inputs REJECTED (flagged OOD) when (at
    least) 95% of the OOD inputs are flagged (OpenOOD v1.5 convention).  An
    input is flagged iff ``score >= tau`` with ``tau`` the largest OOD score such
    that ``#{OOD scores >= tau} / n_ood >= 0.95``; ID scores tied with ``tau``
    count as rejected.  Recipe:
    ``fpr, tpr, _ = roc_curve(labels_ood_is_1, scores, drop_intermediate=False)``
    and ``fpr[argmax(tpr >= 0.95)]``.

  Note on the recipes: sklearn's default ``roc_curve(drop_intermediate=True)``
  drops collinear ROC points.  This never changes AUROC, and it never changes
  the FPR95 values when scores have no ID/OOD ties; with ties, a dropped point
  can be the first with tpr >= 0.95, in which case the default-recipe value is
  the (larger) FPR of the next kept point.  The definitions above (all
  thresholds kept) are the exact, threshold-based ones.
"""

from __future__ import annotations

import warnings
from typing import Dict, Tuple

import numpy as np
from numpy.typing import ArrayLike

METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95_id_positive",
                "fpr95_ood_positive")
# With `compute_all(..., trapezoid=True)`: the trapezoidal AUPRs beside the step-wise ones
# (OpenOOD's evaluator reports the trapezoid; the openood_* protocols show both, named).
TRAPEZOID_NAMES = ("aupr_in_trapezoid", "aupr_out_trapezoid")


def _as_scores(x: ArrayLike, name: str) -> np.ndarray:
  """Converts to a finite, non-empty 1-D float64 array or raises ValueError."""
  try:
    a = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be numeric scores, could not convert: {e}") from e
  if a.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array of scores, got shape {a.shape}")
  if a.size == 0:
    raise ValueError(f"{name} is empty: need at least one score in each set")
  bad = ~np.isfinite(a)
  if bad.any():
    n_nan = int(np.isnan(a).sum())
    n_inf = int(bad.sum()) - n_nan
    raise ValueError(
        f"{name} contains {int(bad.sum())} non-finite value(s) out of {a.size} "
        f"({n_nan} NaN, {n_inf} inf)")
  return a


def _validate(id_scores: ArrayLike, ood_scores: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
  """Validates both score sets; raises ValueError naming the problem."""
  s_id = _as_scores(id_scores, "id_scores")
  s_ood = _as_scores(ood_scores, "ood_scores")
  if min(s_id.size, s_ood.size) < 2:
    warnings.warn(f"OOD metrics of {s_id.size} ID and {s_ood.size} OOD score(s): with a set of "
                  "one input AUROC is 0, 0.5 or 1 by chance and the other metrics are "
                  "meaningless; use more inputs", RuntimeWarning, stacklevel=3)
  lo = min(s_id.min(), s_ood.min())
  hi = max(s_id.max(), s_ood.max())
  if lo == hi:
    raise ValueError(
        f"all {s_id.size + s_ood.size} ID and OOD scores are identical "
        f"(value {lo!r}); OOD metrics are meaningless for a constant score")
  return s_id, s_ood


def _curve_counts(pos: np.ndarray, neg: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """True/false positive counts at every distinct threshold, descending.

  A sample is predicted positive at threshold ``t`` iff its value is >= t.

  Args:
    pos: [P] decision values of the positive class (higher = more positive).
    neg: [N] decision values of the negative class.

  Returns:
    (tps, fps): [T] int64 each, for the T distinct values of ``pos`` and
    ``neg`` in decreasing order; the last entries are (P, N).
  """
  thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
  pos_sorted = np.sort(pos)
  neg_sorted = np.sort(neg)
  tps = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
  fps = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
  return tps.astype(np.int64), fps.astype(np.int64)


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
  tps, fps = _curve_counts(pos, neg)
  tps_prev = np.concatenate([[0], tps[:-1]])
  fps_prev = np.concatenate([[0], fps[:-1]])
  # Trapezoid rule in exact integer arithmetic (2x the area, in pair units);
  # equals 2 * (#pairs pos > neg) + #ties.
  twice_area = np.sum((fps - fps_prev) * (tps + tps_prev), dtype=np.int64)
  return float(twice_area) / (2.0 * pos.size * neg.size)


def _aupr(pos: np.ndarray, neg: np.ndarray, trapezoid: bool) -> float:
  tps, fps = _curve_counts(pos, neg)
  precision = tps / (tps + fps)  # tps + fps >= 1 at every observed threshold
  recall = tps / float(pos.size)
  if not trapezoid:
    d_recall = np.diff(np.concatenate([[0.0], recall]))
    return float(max(0.0, np.sum(d_recall * precision)))
  recall = np.concatenate([[0.0], recall])
  precision = np.concatenate([[1.0], precision])
  return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def _fpr_at_tpr(pos: np.ndarray, neg: np.ndarray, level: float) -> float:
  if not 0.0 < level <= 1.0:
    raise ValueError(f"TPR level must be in (0, 1], got {level}")
  tps, fps = _curve_counts(pos, neg)
  tpr = tps / float(pos.size)
  idx = int(np.argmax(tpr >= level))  # tpr[-1] == 1, so always found
  return float(fps[idx]) / float(neg.size)


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
  """Area under the ROC curve, OOD = positive class.

  Args:
    id_scores: [n_id] scores of in-distribution inputs.
    ood_scores: [n_ood] scores of OOD inputs.

  Returns:
    ``P(s_ood > s_id) + 0.5 P(s_ood == s_id)`` in [0, 1]; equals
    ``sklearn.metrics.roc_auc_score`` with labels ID=0, OOD=1.
  """
  s_id, s_ood = _validate(id_scores, ood_scores)
  return _auroc(s_ood, s_id)


def aupr_in(id_scores: ArrayLike, ood_scores: ArrayLike, *,
            trapezoid: bool = False) -> float:
  """Area under the precision-recall curve with ID as the positive class.

  The decision value is ``-score``.  AUPR = average precision (sklearn's
  step-wise definition) unless ``trapezoid=True``; see the module docstring.

  Args:
    id_scores: [n_id] scores of in-distribution inputs.
    ood_scores: [n_ood] scores of OOD inputs.
    trapezoid: use the trapezoidal area instead of average precision.

  Returns:
    A fraction in [0, 1]; equals ``sklearn.metrics.average_precision_score``
    with labels ID=1, OOD=0 and scores ``-score``.
  """
  s_id, s_ood = _validate(id_scores, ood_scores)
  return _aupr(-s_id, -s_ood, trapezoid)


def aupr_out(id_scores: ArrayLike, ood_scores: ArrayLike, *,
             trapezoid: bool = False) -> float:
  """Area under the precision-recall curve with OOD as the positive class.

  AUPR = average precision (sklearn's step-wise definition) unless
  ``trapezoid=True``; see the module docstring.

  Args:
    id_scores: [n_id] scores of in-distribution inputs.
    ood_scores: [n_ood] scores of OOD inputs.
    trapezoid: use the trapezoidal area instead of average precision.

  Returns:
    A fraction in [0, 1]; equals ``sklearn.metrics.average_precision_score``
    with labels ID=0, OOD=1 and scores ``score``.
  """
  s_id, s_ood = _validate(id_scores, ood_scores)
  return _aupr(s_ood, s_id, trapezoid)


def fpr95_id_positive(id_scores: ArrayLike, ood_scores: ArrayLike, *,
                      level: float = 0.95) -> float:
  """Fraction of OOD inputs accepted as ID when >= 95% of ID is accepted.

  Accept iff ``score <= tau``, ``tau`` = smallest ID score with
  ``#{ID <= tau} / n_id >= level``; OOD ties with ``tau`` count as accepted.
  Matches ``fpr[argmax(tpr >= level)]`` of
  ``roc_curve(ID=1 labels, -scores, drop_intermediate=False)``.

  Args:
    id_scores: [n_id] scores of in-distribution inputs.
    ood_scores: [n_ood] scores of OOD inputs.
    level: required fraction of ID inputs kept (the "95").

  Returns:
    A fraction in [0, 1] (lower is better).
  """
  s_id, s_ood = _validate(id_scores, ood_scores)
  return _fpr_at_tpr(-s_id, -s_ood, level)


def fpr95_ood_positive(id_scores: ArrayLike, ood_scores: ArrayLike, *,
                       level: float = 0.95) -> float:
  """Fraction of ID inputs flagged OOD when >= 95% of OOD is flagged.

  Flag iff ``score >= tau``, ``tau`` = largest OOD score with
  ``#{OOD >= tau} / n_ood >= level``; ID ties with ``tau`` count as flagged.
  Matches ``fpr[argmax(tpr >= level)]`` of
  ``roc_curve(OOD=1 labels, scores, drop_intermediate=False)`` (OpenOOD v1.5).

  Args:
    id_scores: [n_id] scores of in-distribution inputs.
    ood_scores: [n_ood] scores of OOD inputs.
    level: required fraction of OOD inputs caught.

  Returns:
    A fraction in [0, 1] (lower is better).
  """
  s_id, s_ood = _validate(id_scores, ood_scores)
  return _fpr_at_tpr(s_ood, s_id, level)


def compute_all(id_scores: ArrayLike, ood_scores: ArrayLike, *,
                trapezoid: bool = False) -> Dict[str, float]:
  """All standard metrics at once.

  Args:
    id_scores: [n_id] scores of in-distribution inputs.
    ood_scores: [n_ood] scores of OOD inputs.
    trapezoid: also the trapezoidal AUPRs, as ``TRAPEZOID_NAMES`` ("aupr_in_trapezoid",
      "aupr_out_trapezoid"; see ``aupr_in(..., trapezoid=True)``).

  Returns:
    Dict with keys ``METRIC_NAMES`` = ("auroc", "aupr_in", "aupr_out",
    "fpr95_id_positive", "fpr95_ood_positive"), python floats in [0, 1]
    (AUPRs are average precision).
  """
  s_id, s_ood = _validate(id_scores, ood_scores)
  out = {
      "auroc": _auroc(s_ood, s_id),
      "aupr_in": _aupr(-s_id, -s_ood, False),
      "aupr_out": _aupr(s_ood, s_id, False),
      "fpr95_id_positive": _fpr_at_tpr(-s_id, -s_ood, 0.95),
      "fpr95_ood_positive": _fpr_at_tpr(s_ood, s_id, 0.95),
  }
  if trapezoid:
    out["aupr_in_trapezoid"] = _aupr(-s_id, -s_ood, True)
    out["aupr_out_trapezoid"] = _aupr(s_ood, s_id, True)
  return out
