"""Tuning on validation sets (`dlsr_jax.evaluation.tune`): every `score_grid` hook equals
scoring its candidates one by one, the best candidate is the known one, the timing helper."""

import importlib

import jax
import numpy as np
import pytest

from dlsr_jax import detectors, models
from dlsr_jax.evaluation import tune as tune_lib
from dlsr_jax.evaluation import forward

# Small grids on D = 8 pre-logits, K = 4 classes (several values each, so the vmap is real).
GRIDS = {
    "energy": {"temperature": [0.5, 1.0, 3.0]},
    "gen": {"gamma": [0.1, 1.0, 5.0], "m": [2, 100]},
    "react": {"percentile": [50.0, 85.0, 99.0]},
    "ash": {"percentile": [50.0, 65.0, 80.0]},
    "scale": {"percentile": [50.0, 65.0, 85.0]},
    "dice": {"percentile": [50.0, 75.0, 90.0]},
    "vra": {"high": [80.0, 95.0], "low": [1.0, 20.0]},
    "knn": {"k": [1, 5, 17]},
    "nci": {"alpha": [1e-4, 1e-1, 1.0]},
    "vim": {"dim": [2, 4, 6]},
    "residual": {"dim": [2, 4, 6]},
}
FIXED = {"knn": {"array": "pre_logits"}}


@pytest.fixture(scope="module", name="arrays")
def _arrays():
  net = models.load("linear_head", num_features=8, num_classes=4, seed=3)
  rng = np.random.default_rng(0)
  relu = lambda x: np.maximum(x, 0.0).astype(np.float32)   # post-ReLU like a CNN's pre-logits
  fit = forward(net, relu(rng.normal(size=(60, 8)) + 0.5))
  id_val = forward(net, relu(rng.normal(size=(21, 8)) + 0.5))
  ood_val = forward(net, relu(rng.normal(size=(13, 8)) * 2.0))
  return net, fit, id_val, ood_val


def test_every_hook_has_a_grid_here():
  hooks = {t for t in detectors.available()
           if hasattr(importlib.import_module(f"dlsr_jax.detectors.{t}"), "score_grid")}
  assert hooks == set(GRIDS)


@pytest.mark.parametrize("kind", sorted(GRIDS))
def test_grid_equals_one_by_one(kind, arrays):
  net, fit, id_val, ood_val = arrays
  cands = tune_lib.candidates(kind, GRIDS[kind], FIXED.get(kind), net=net)
  assert len(cands) >= 3
  key = jax.random.key(0)
  grid = tune_lib.score_candidates(kind, cands, fit, id_val, ood_val, key=key, net=net)
  single = tune_lib.score_candidates(kind, cands, fit, id_val, ood_val, key=key, net=net,
                                     use_grid=False)
  for c, (g_id, g_ood), (s_id, s_ood) in zip(cands, grid, single):
    assert g_id.shape == (21,) and g_ood.shape == (13,)
    np.testing.assert_allclose(g_id, s_id, rtol=1e-5, atol=1e-6, err_msg=f"{kind} {c}")
    np.testing.assert_allclose(g_ood, s_ood, rtol=1e-5, atol=1e-6, err_msg=f"{kind} {c}")
  # The candidates really differ (the hyperparameter reaches the kernel).
  assert not all(np.allclose(grid[0][0], g[0]) for g in grid[1:]), kind


def test_the_known_best_candidate_is_chosen():
  # Energy -T LSE(l / T). ID rows have one large logit, OOD rows three equal ones.
  # T -> 0: score -> -max l: ID -6, -7.5 below OOD -3, -2.2: AUROC 1 (also at T = 1:
  # ID -6.0, -7.5; OOD -(3 + log 3), -(2.2 + log 3)). T = 1000: score ~ -(T log 3 + mean l):
  # ID means 2, 2.5; OOD means 3, 2.2: only 1 of the 4 pairs ranks OOD higher: AUROC 0.25.
  id_val = {"logits": np.asarray([[6.0, 0.0, 0.0], [7.5, 0.0, 0.0]], np.float32)}
  ood_val = {"logits": np.asarray([[3.0, 3.0, 3.0], [2.2, 2.2, 2.2]], np.float32)}
  best, rows = tune_lib.tune("energy", {"temperature": [1000.0, 0.01, 1.0]}, {}, id_val,
                             ood_val, key=jax.random.key(0))
  aurocs = [r["auroc"] for r in rows]
  assert aurocs[1] == 1.0 and aurocs[0] == pytest.approx(0.25)
  # 0.01 and 1.0 both reach AUROC 1: the FIRST best is kept (OpenOOD's APS).
  assert aurocs[2] == 1.0 and best["temperature"] == 0.01
  assert [r["best"] for r in rows] == [False, True, False]
  assert rows[0]["settings"] == {"temperature": 1000.0}


def test_known_best_knn_k():
  # ID-val rows sit in a tight cluster of 3 fit rows, far from the other fit rows; OOD-val
  # rows sit between two pairs. k = 1..3 separates them, k = 4 (into the far rows) cannot.
  ang = lambda deg: np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], 1)
  fit = {"pre_logits": ang([0, 1, 2, 90, 91, 180, 181]).astype(np.float32)}
  id_val = {"pre_logits": ang([1.0, 1.5]).astype(np.float32)}
  ood_val = {"pre_logits": ang([45.0, 135.0]).astype(np.float32)}
  best, rows = tune_lib.tune("knn", {"k": [5, 2]}, fit, id_val, ood_val,
                             key=jax.random.key(0), settings={"array": "pre_logits"})
  assert best["k"] == 2 and best["array"] == "pre_logits"
  assert rows[1]["auroc"] == 1.0 and rows[0]["auroc"] < 1.0


def test_default_grids_and_refusals(arrays):
  net = arrays[0]
  assert tune_lib.default_grid("vim", net) == {"dim": [2, 4, 6]}          # D = 8
  assert tune_lib.default_grid("react")["percentile"] == [85.0, 90.0, 95.0, 99.0]
  assert tune_lib.default_grid("msp") == {}
  assert tune_lib.candidates("msp") == [{}]
  assert len(tune_lib.candidates("gen")) == 42
  with pytest.raises(ValueError, match="no tunable setting.*'percentile'"):
    tune_lib.candidates("energy", {"percentile": [1]})
  with pytest.raises(ValueError, match="unknown detector type"):
    tune_lib.candidates("nope", {})
  with pytest.raises(ValueError, match="pass net="):
    tune_lib.default_grid("residual")


def test_time_grid_reports_both_ways(arrays):
  net, fit, id_val, ood_val = arrays
  t = tune_lib.time_grid("react", GRIDS["react"], fit, id_val, ood_val,
                         key=jax.random.key(0), net=net, repeats=1)
  assert t["n_candidates"] == 3 and t["grid_s"] > 0 and t["one_by_one_s"] > 0
  assert t["speedup"] == pytest.approx(t["one_by_one_s"] / t["grid_s"], rel=0.02)
  t = tune_lib.time_grid("msp", None, fit, id_val, ood_val, key=jax.random.key(0), repeats=1)
  assert t["grid_s"] is None and t["one_by_one_s"] > 0
