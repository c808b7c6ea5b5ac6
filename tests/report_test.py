import json

import numpy as np
import pytest

from dlsr_jax.evaluation import plots, report, table


def _scores(seed=0):
  rng = np.random.default_rng(seed)
  id_s = {"mse": rng.normal(0, 1, (2, 50)), "mfsim": rng.normal(0, 1, (2, 50))}
  ood = {"far": {t: rng.normal(3, 1, (2, 40)) for t in id_s},
         "near": {t: rng.normal(0.5, 1, (2, 30)) for t in id_s}}
  return id_s, ood


def test_all_metrics_layout_and_average():
  id_s, ood = _scores()
  m = table.all_metrics(id_s, ood, [3, 5])
  assert set(m) == {"mse", "mfsim"} and set(m["mse"]) == {"3", "5"}
  rows = m["mfsim"]["5"]
  assert set(rows) == {"far", "near", "average"}
  assert rows["far"]["auroc"] > 0.95 > rows["near"]["auroc"] > 0.5
  assert rows["average"]["auroc"] == pytest.approx((rows["far"]["auroc"] + rows["near"]["auroc"]) / 2)


def test_write_results_json_and_markdown(tmp_path):
  id_s, ood = _scores()
  res = {"id_set": "npz:id.npz", "ood_sets": {"far": "a", "near": "b"}, "ks": [3, 5],
         "metrics": table.all_metrics(id_s, ood, [3, 5]), "settings": {"backbone": "x"}}
  paths = report.write_results(res, str(tmp_path))
  assert json.load(open(paths["json"]))["ks"] == [3, 5]
  md = open(paths["md"]).read()
  assert "## DLSR-MFsim, k = 5" in md and "| **Average** |" in md and "`near`" in md
  far = res["metrics"]["mse"]["3"]["far"]["auroc"]
  assert f"{100 * far:.2f}" in md
  png = plots.plot_roc_and_histograms(id_s["mse"][0], {n: s["mse"][0] for n, s in ood.items()},
                                       str(tmp_path / "roc.png"), title="t")
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_ood_sets_is_an_error():
  with pytest.raises(ValueError, match="no OOD sets"):
    table.metrics_table(np.zeros(3), {})


def test_k_free_scores_are_never_labelled_with_a_k(tmp_path):
  """With a single k a baseline has the shape of a k score: k-freeness is declared."""
  rng = np.random.default_rng(1)
  id_s = {"mse": rng.normal(0, 1, (1, 30)), "mahalanobis": rng.normal(0, 1, (1, 30))}
  ood = {"far": {t: rng.normal(2, 1, (1, 20)) for t in id_s}}
  m = table.all_metrics(id_s, ood, [3], k_free={"mahalanobis"})
  assert set(m["mse"]) == {"3"} and set(m["mahalanobis"]) == {table.NO_K}
  res = {"id_set": "x", "ood_sets": {"far": "a"}, "ks": [3], "metrics": m}
  md = report.markdown(res)
  assert "## Mahalanobis\n" in md and "Mahalanobis, k" not in md
  plots.plot_auroc_vs_k(res, str(tmp_path / "k.png"))   # draws MSE only
  with pytest.raises(ValueError, match="k-free score"):
    table.all_metrics({"knn": rng.normal(0, 1, (3, 30))}, {"far": {"knn": np.ones((3, 5))}},
                       [3], k_free={"knn"})
  with pytest.raises(ValueError, match="at 2 k values"):
    table.all_metrics({"mse": rng.normal(0, 1, (1, 30))}, {"far": {"mse": np.ones((1, 5))}},
                       [3, 5])
