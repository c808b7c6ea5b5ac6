"""Tests for dlsr_jax.evaluation.metrics."""

import numpy as np
import pytest
from sklearn import metrics as skm

from dlsr_jax.evaluation import metrics

# Hand-worked 5-vs-5 case with ties (scores: higher = more OOD).
ID5 = [0.1, 0.2, 0.3, 0.3, 0.5]
OOD5 = [0.3, 0.4, 0.5, 0.6, 0.7]
# AUROC = [#(ood > id) + 0.5 #(ood == id)] / 25, per OOD score:
#   0.3: > {0.1, 0.2} = 2, ties {0.3, 0.3} = 2 * 0.5 -> 3
#   0.4: > 4 -> 4;  0.5: > 4, tie 1 -> 4.5;  0.6: 5;  0.7: 5
#   total 21.5 / 25 = 0.86
# AUPR-out (OOD positive, flag score >= t), thresholds 0.7 .. 0.1:
#   t=0.7 tp1 fp0 P=1; 0.6 tp2 fp0 P=1; 0.5 tp3 fp1 P=3/4; 0.4 tp4 fp1 P=4/5;
#   0.3 tp5 fp3 P=5/8; lower thresholds add no recall.
#   AP = (1 + 1 + 3/4 + 4/5 + 5/8) / 5 = 0.835
#   trapezoid, from (R, P) = (0, 1): 0.2 * [1 + 1 + 1.75/2 + 1.55/2 + 1.425/2]
#   = 0.2 + 0.2 + 0.175 + 0.155 + 0.1425 = 0.8725
# AUPR-in (ID positive, accept score <= t), thresholds 0.1 .. 0.7:
#   t=0.1 tp1 fp0 P=1; 0.2 tp2 fp0 P=1; 0.3 tp4 fp1 P=4/5 (recall +2/5);
#   0.4 no recall change; 0.5 tp5 fp3 P=5/8.
#   AP = (1 + 1 + 2 * 4/5 + 5/8) / 5 = 0.845
# FPR95 ID-positive: keeping >= 95% of 5 ID needs all 5: accept score <= 0.5;
#   OOD accepted {0.3, 0.4, 0.5} (tie at 0.5 counts) -> 3/5 = 0.6.
# FPR95 OOD-positive: catching all 5 OOD needs flag score >= 0.3; ID flagged
#   {0.3, 0.3, 0.5} (ties count) -> 3/5 = 0.6.
HAND5 = {"auroc": 0.86, "aupr_out": 0.835, "aupr_in": 0.845,
         "fpr95_id_positive": 0.6, "fpr95_ood_positive": 0.6}


def _sk_fpr_at(labels, scores, level=0.95, drop=False):
  fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=drop)
  return fpr[np.argmax(tpr >= level)]


def _sk_all(s_id, s_ood):
  s = np.concatenate([s_id, s_ood])
  y_ood = np.concatenate([np.zeros(len(s_id)), np.ones(len(s_ood))])
  return {
      "auroc": skm.roc_auc_score(y_ood, s),
      "aupr_in": skm.average_precision_score(1 - y_ood, -s),
      "aupr_out": skm.average_precision_score(y_ood, s),
      "fpr95_id_positive": _sk_fpr_at(1 - y_ood, -s),
      "fpr95_ood_positive": _sk_fpr_at(y_ood, s),
  }


def test_hand_worked_5_vs_5_with_ties():
  got = metrics.compute_all(ID5, OOD5)
  assert set(got) == set(metrics.METRIC_NAMES)
  for k, v in HAND5.items():
    assert got[k] == pytest.approx(v, abs=1e-12), k
  assert metrics.aupr_out(ID5, OOD5, trapezoid=True) == pytest.approx(0.8725, abs=1e-12)
  # sklearn agrees with the hand computation.
  for k, v in _sk_all(np.array(ID5), np.array(OOD5)).items():
    assert v == pytest.approx(HAND5[k], abs=1e-12), k


def test_fpr95_threshold_is_inclusive_at_exactly_95_percent():
  # 20 ID scores 0..19: 19/20 = 0.95 of ID is kept by accepting score <= 18.
  s_id = np.arange(20.0)
  s_ood = np.concatenate([[10.0, 18.0, 18.5, 19.0], np.arange(20.0, 36.0)])
  # Accepted OOD: 10 and 18 (tied with the threshold) -> 2 / 20.
  assert metrics.fpr95_id_positive(s_id, s_ood) == pytest.approx(0.1)
  # OOD positive: 19/20 of OOD caught by flagging score >= 18 (the 2nd smallest
  # OOD score); ID flagged: 18, 19 -> 2 / 20.
  assert metrics.fpr95_ood_positive(s_id, s_ood) == pytest.approx(0.1)
  ref = _sk_all(s_id, s_ood)
  assert metrics.fpr95_id_positive(s_id, s_ood) == ref["fpr95_id_positive"]
  assert metrics.fpr95_ood_positive(s_id, s_ood) == ref["fpr95_ood_positive"]


def test_perfect_and_reversed_separation():
  s_id = np.array([0.0, 0.1, 0.2, 0.3])
  s_ood = np.array([1.0, 1.5, 2.0])
  good = metrics.compute_all(s_id, s_ood)
  assert good == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0,
                  "fpr95_id_positive": 0.0, "fpr95_ood_positive": 0.0}
  bad = metrics.compute_all(s_ood, s_id)  # roles swapped: everything reversed
  assert bad["auroc"] == 0.0
  assert bad["fpr95_id_positive"] == 1.0
  assert bad["fpr95_ood_positive"] == 1.0
  # Worst-case AP: the 4 positives (OOD) are ranked 4th..7th of 7, so
  # AP = mean over positives of (rank among positives / overall rank).
  assert bad["aupr_out"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6 + 4 / 7) / 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_levels", [5, 40, None])
def test_agrees_with_sklearn_on_random_data_with_ties(seed, n_levels):
  rng = np.random.default_rng(seed)
  n_id, n_ood = rng.integers(20, 300, size=2)
  s_id = rng.normal(0.0, 1.0, n_id)
  s_ood = rng.normal(0.7, 1.3, n_ood)
  if n_levels is not None:  # quantise -> many ties within and across sets
    s_id = np.round(s_id * n_levels / 4)
    s_ood = np.round(s_ood * n_levels / 4)
  got = metrics.compute_all(s_id, s_ood)
  ref = _sk_all(s_id, s_ood)
  for k in metrics.METRIC_NAMES:
    assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
  s = np.concatenate([s_id, s_ood])
  y = np.concatenate([np.zeros(n_id), np.ones(n_ood)])
  p, r, _ = skm.precision_recall_curve(y, s)
  assert metrics.aupr_out(s_id, s_ood, trapezoid=True) == pytest.approx(skm.auc(r, p), abs=1e-12)
  p, r, _ = skm.precision_recall_curve(1 - y, -s)
  assert metrics.aupr_in(s_id, s_ood, trapezoid=True) == pytest.approx(skm.auc(r, p), abs=1e-12)


def test_fpr95_matches_default_roc_curve_recipe_without_ties():
  rng = np.random.default_rng(3)
  s_id, s_ood = rng.normal(size=500), rng.normal(1.0, 1.0, size=400)
  s = np.concatenate([s_id, s_ood])
  y = np.concatenate([np.zeros(500), np.ones(400)])
  assert metrics.fpr95_id_positive(s_id, s_ood) == _sk_fpr_at(1 - y, -s, drop=True)
  assert metrics.fpr95_ood_positive(s_id, s_ood) == _sk_fpr_at(y, s, drop=True)


def test_symmetry_relations():
  rng = np.random.default_rng(4)
  a = np.round(rng.normal(size=120), 1)
  b = np.round(rng.normal(0.5, 1.0, size=90), 1)
  assert metrics.auroc(a, b) == pytest.approx(1.0 - metrics.auroc(b, a), abs=1e-12)
  # ID-positive on (a, b) == OOD-positive with roles swapped and scores negated.
  assert metrics.aupr_in(a, b) == pytest.approx(metrics.aupr_out(-b, -a), abs=1e-12)
  assert metrics.fpr95_id_positive(a, b) == metrics.fpr95_ood_positive(-b, -a)
  # Negating scores and swapping roles leaves AUROC unchanged.
  assert metrics.auroc(a, b) == pytest.approx(metrics.auroc(-b, -a), abs=1e-12)


def test_identical_distributions_give_chance_auroc():
  rng = np.random.default_rng(5)
  s_id, s_ood = rng.normal(size=4000), rng.normal(size=4000)
  assert metrics.auroc(s_id, s_ood) == pytest.approx(0.5, abs=0.02)
  same = rng.normal(size=100)
  assert metrics.auroc(same, same) == pytest.approx(0.5, abs=1e-12)
  # AP of a random ranking ~ the positive prevalence (here 0.5).
  assert metrics.aupr_out(s_id, s_ood) == pytest.approx(0.5, abs=0.03)


def test_fpr_level_argument():
  s_id = np.arange(10.0)
  s_ood = np.arange(5.0, 15.0)
  # Keep 50% of ID: accept score <= 4 -> no OOD accepted.
  assert metrics.fpr95_id_positive(s_id, s_ood, level=0.5) == 0.0
  with pytest.raises(ValueError, match="level"):
    metrics.fpr95_id_positive(s_id, s_ood, level=1.5)


@pytest.mark.parametrize("fn", [metrics.auroc, metrics.aupr_in, metrics.aupr_out,
                                metrics.fpr95_id_positive, metrics.fpr95_ood_positive,
                                metrics.compute_all])
def test_errors(fn):
  with pytest.raises(ValueError, match="id_scores is empty"):
    fn([], [1.0])
  with pytest.raises(ValueError, match="ood_scores is empty"):
    fn([1.0], np.zeros((0,)))
  with pytest.raises(ValueError, match=r"ood_scores contains 3 non-finite.*2 NaN, 1 inf"):
    fn([1.0, 2.0], [np.nan, 1.0, np.inf, np.nan])
  with pytest.raises(ValueError, match=r"id_scores contains 1 non-finite.*0 NaN, 1 inf"):
    fn([-np.inf, 2.0], [1.0])
  with pytest.raises(ValueError, match=r"id_scores must be a 1-D.*\(2, 2\)"):
    fn(np.zeros((2, 2)), [1.0])
  with pytest.raises(ValueError, match=r"ood_scores must be a 1-D"):
    fn([1.0], 3.0)
  with pytest.raises(ValueError, match="identical"):
    fn([2.0, 2.0], [2.0])
  with pytest.raises(ValueError, match="numeric"):
    fn(["a"], [1.0])
