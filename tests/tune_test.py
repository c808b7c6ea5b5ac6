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


def test_a_refused_candidate_is_recorded_not_chosen(arrays):
  net, fit, id_val, ood_val = arrays
  best, rows = tune_lib.tune("knn", {"k": [3, 500, 7]}, fit, id_val, ood_val,   # 60 fit rows
                             key=jax.random.key(0), settings={"array": "pre_logits"})
  assert rows[1]["auroc"] is None and "exceeds the number of training" in rows[1]["error"]
  assert best["k"] in (3, 7) and [r["best"] for r in rows].count(True) == 1
  assert all("error" not in rows[i] for i in (0, 2))
  with pytest.raises(ValueError, match="every react candidate was refused"):
    tune_lib.tune("react", {"percentile": [50.0]}, {"pre_logits": fit["pre_logits"][:, :3]},
                  id_val, ood_val, key=jax.random.key(0), net=net)


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
  t = tune_lib.time_grid("knn", {"k": [3, 500]}, fit, id_val, ood_val, key=jax.random.key(0),
                         settings={"array": "pre_logits"}, repeats=1)   # 500 > 60 fit rows
  assert t["n_candidates"] == 1 and t["grid_s"] > 0
  t = tune_lib.time_grid("msp", None, fit, id_val, ood_val, key=jax.random.key(0), repeats=1)
  assert t["grid_s"] is None and t["one_by_one_s"] > 0


# ------------------------------------------------------------- the experiments --
def _write_sets(root, n=24):
  """Tiny 32x32 npz sets: ID train / test (labels 0..9), two OOD test sets, an OOD-val."""
  rng = np.random.default_rng(0)
  paths = {}
  for name, shift in (("train", 0), ("test", 0), ("ood_a", 90), ("ood_b", -60), ("oodval", 60)):
    images = np.clip(rng.integers(40, 200, size=(n, 32, 32, 3)) + shift, 0, 255)
    paths[name] = str(root / f"{name}.npz")
    np.savez(paths[name], images=images.astype(np.uint8), labels=np.arange(n) % 10)
  return paths


def _tiny_config(root):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from experiments.configs import common  # pylint: disable=g-import-not-at-top
  paths = _write_sets(root)
  c = common.get_config()
  c.data.train, c.data.test = f"npz:{paths['train']}", f"npz:{paths['test']}"
  c.data.ood.a, c.data.ood.b = f"npz:{paths['ood_a']}", f"npz:{paths['ood_b']}"
  c.data.groups.near, c.data.groups.far = "a", "b"
  c.data.val = "holdout:0.25"
  c.data.ood_val = f"npz:{paths['oodval']}"
  c.eval.plots = False
  c.nets = ml_collections.ConfigDict({"clf": {"kind": "classifier", "model": "cifar_resnet20"}})
  c.detectors = ml_collections.ConfigDict({
      "react": {"type": "react", "net": "clf"},
      "msp": {"type": "msp", "net": "clf"},
      "energy_t": {"type": "energy", "net": "clf", "grid": {"temperature": [1.0, 5.0]}},
  })
  return c, paths


def test_ood_val_that_is_a_test_set_is_refused(tmp_path):
  from experiments import build  # pylint: disable=g-import-not-at-top
  c, paths = _tiny_config(tmp_path)
  build.build(c)                                            # fine as configured
  for spelling in (f"npz:{paths['ood_a']}",                 # the same string
                   f"npz:{tmp_path}/./ood_a.npz",           # another spelling of its path
                   f"npz:{tmp_path}/sub/../test.npz"):      # the ID test set
    c.data.ood_val = spelling
    with pytest.raises(ValueError, match=r"data.ood_val = .* is the test set data\.(ood\.a|test)"):
      build.build(c)
  c.data.ood_val = ""
  with pytest.raises(ValueError, match="set both data.val .* and data.ood_val"):
    build.build(c)                                          # energy_t is tuned (grid=)
  c.data.ood_val, c.data.val = f"npz:{paths['oodval']}", f"npz:{tmp_path}/./test.npz"
  with pytest.raises(ValueError, match=r"data.val = .* is the test set data.test"):
    build.build(c)
  c.data.val = "holdout:1.5"
  with pytest.raises(ValueError, match="FRACTION in \\(0, 1\\)"):
    build.build(c)


def test_plan_of_a_tuned_config(tmp_path):
  from experiments import build  # pylint: disable=g-import-not-at-top
  c, _ = _tiny_config(tmp_path)
  c.eval.tune = True
  rows = build.build(c).rows
  # react gets a tuned twin and fits on ID val (OpenOOD); msp has no grid; energy_t is tuned
  # in place (its own grid).
  names = list(rows)
  assert sorted(names) == ["energy_t", "msp", "react", "react@tuned"]
  assert names.index("react@tuned") == names.index("react") + 1   # beside its default row
  assert rows["react@tuned"].tune and not rows["react"].tune and rows["energy_t"].tune
  assert rows["react"].fit_set == rows["react@tuned"].fit_set == "val"
  assert rows["msp"].fit_set == "train"
  # Validation sets and grids are evaluation settings: a workdir's record does not pin them.
  from experiments import workdir  # pylint: disable=g-import-not-at-top
  assert all(workdir.changeable(k) for k in ("data.val", "data.ood_val", "eval.tune",
                                             "detectors.energy_t.grid.temperature",
                                             "detectors.react.tune"))
  assert not workdir.changeable("detectors.energy_t.net")
  c.detectors.energy_t.grid = {"temp": [1.0]}
  with pytest.raises(ValueError, match=r"energy_t.grid .*no tunable setting"):
    build.build(c)


def test_tune_true_writes_search_json_and_the_chosen_values(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from experiments import run  # pylint: disable=g-import-not-at-top
  c, _ = _tiny_config(tmp_path)
  c.eval.tune = True
  c.eval.trapezoid_aupr = True
  out = tmp_path / "out"
  results = run.evaluate(c, str(tmp_path / "wd"), str(out))
  search = json.loads((out / "search.json").read_text())["rows"]
  assert set(search) == {"react@tuned", "energy_t"}
  react = search["react@tuned"]
  assert [cand["settings"]["percentile"] for cand in react["candidates"]] == [85, 90, 95, 99]
  assert sum(cand["best"] for cand in react["candidates"]) == 1
  assert react["ood_val"].endswith("oodval.npz") and react["id_val"] == "holdout:0.25"
  assert react["fit_set"] == "val"
  best = max(react["candidates"], key=lambda cand: cand["auroc"])
  saved = json.loads((out / "results.json").read_text())
  meta = saved["rows"]["react@tuned"]
  assert meta["tuned"] == {"percentile": best["settings"]["percentile"]}
  assert "tuned" not in saved["rows"]["react"] and "search" not in meta   # in search.json
  assert saved["rows"]["energy_t"]["tuned"]["temperature"] in (1.0, 5.0)
  assert "search.json" in saved["files"] and "results_openood.csv" in saved["files"]
  assert "aupr_in_trapezoid" in saved["metrics"]["react@tuned"]["-"]["a"]
  # Tuned and default rows in one table.
  md = (out / "results.md").read_text()
  assert "| react |" in md and "| react@tuned |" in md
  assert set(results["rows"]) == {"react", "react@tuned", "msp", "energy_t"}


def test_readme_lists_every_detector_type():
  import os  # pylint: disable=g-import-not-at-top
  with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")) as f:
    readme = f.read()
  table = readme.split("### Detectors", 1)[1].split("###", 1)[0]
  listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
  assert listed == set(detectors.available())
  assert "--config.eval.tune=True" in readme and "--config.data.ood_val" in readme


def test_openood_protocols_name_their_validation_sets():
  from experiments import build  # pylint: disable=g-import-not-at-top
  from experiments.configs import datasets, openood_cifar10, openood_cifar100  # pylint: disable=g-import-not-at-top
  for module, id_set in ((openood_cifar10, "cifar10"), (openood_cifar100, "cifar100")):
    c = module.get_config("root=/d")
    assert c.data.val == "holdout:0.1" and c.eval.trapezoid_aupr
    assert c.data.ood_val == f"folder:/d/openood/{id_set}/tin_val"
    c.data.root = "/elsewhere"                     # follows data.root like the test sets
    assert c.data.ood_val == f"folder:/elsewhere/openood/{id_set}/tin_val"
    build.check_validation_sets(c, {})             # none of its test sets
  train, val = datasets.holdout_rows(50, 0.1)
  assert len(val) == 5 and len(train) == 45 and not set(train) & set(val)
  np.testing.assert_array_equal(datasets.holdout_rows(50, 0.1)[1], val)   # deterministic
  assert list(val) != list(range(45, 50))          # not the last rows (class-ordered sources)
