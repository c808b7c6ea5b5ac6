"""OpenOOD's leaderboard format (results_openood.csv) and the trapezoidal AUPR beside the
step-wise one, on a tiny protocol with near / far groups."""

import csv

import jax
import numpy as np
import pytest

from dlsr_jax import detectors
from dlsr_jax.evaluation import evaluate, metrics, report, table

GROUPS = {"near": ["n1", "n2"], "far": ["f1"]}


def _sets(seed=0):
  rng = np.random.default_rng(seed)
  logits = lambda n, scale: (rng.normal(size=(n, 3)) * scale).astype(np.float32)
  return {"id": {"logits": logits(30, 4.0)}, "n1": {"logits": logits(20, 2.0)},
          "n2": {"logits": logits(25, 1.5)}, "f1": {"logits": logits(15, 0.5)}}


def _results(seed=0, trapezoid=True):
  sets = _sets(seed)
  dets = {"msp": detectors.make("msp"), "energy": detectors.make("energy")}
  return sets, evaluate(dets, {}, sets, key=jax.random.key(0), groups=GROUPS,
                        trapezoid_aupr=trapezoid)


def _read(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_openood_csv_columns_and_group_means(tmp_path):
  sets, res = _results()
  files = res.write(str(tmp_path), plots=False, accuracy={}, nets={})
  assert "results_openood.csv" in files
  rows = _read(tmp_path / "results_openood.csv")
  assert list(rows[0]) == list(report.OPENOOD_COLUMNS)
  assert [r["Postprocessor"] for r in rows] == ["msp", "energy"]
  s = {n: np.asarray(-jax.nn.logsumexp(v["logits"], axis=-1)) for n, v in sets.items()}
  near = np.mean([metrics.auroc(s["id"], s["n1"]), metrics.auroc(s["id"], s["n2"])])
  far_fpr = metrics.fpr95_ood_positive(s["id"], s["f1"])
  assert rows[1]["Near-OOD AUROC"] == f"{100 * near:.2f} ± 0.00"
  assert rows[1]["Far-OOD FPR@95"] == f"{100 * far_fpr:.2f} ± 0.00"
  assert rows[1]["Seeds"] == "1" and rows[1]["Training"] == "frozen backbone"


def test_mean_and_std_over_seeds_in_cells(tmp_path):
  runs = [_results(seed)[1].to_dict() for seed in (0, 1)]
  results = dict(runs[0], seeds=[0, 1], accuracy={"clf": 0.9},
                 nets={"clf": {"model": "cifar_resnet20", "objective": "cross_entropy"},
                       "oe": {"model": "cifar_resnet20", "objective": "outlier_exposure"},
                       "loaded": {"model": "cifar_resnet20", "objective": ""}})
  nets = {"msp": "clf", "energy": "oe"}
  results["rows"] = {k: {**m, "net": nets[k]} for k, m in results["rows"].items()}
  results["metrics"], results["metrics_std"] = table.mean_and_std([r["metrics"] for r in runs])
  report.write_results(results, str(tmp_path))
  rows = _read(tmp_path / "results_openood.csv")
  a = [r["metrics"]["msp"]["-"]["group:near"]["auroc"] for r in runs]
  assert rows[0]["Near-OOD AUROC"] == f"{100 * np.mean(a):.2f} ± {100 * np.std(a):.2f}"
  assert np.std(a) > 0
  assert rows[0]["ID Accuracy"] == "90.00 ± 0.00" and rows[0]["Training"] == "CrossEntropy"
  assert rows[0]["Model Arch."] == "cifar_resnet20" and rows[0]["Seeds"] == "2"
  assert rows[1]["Training"] == "OE" and rows[1]["ID Accuracy"] == ""   # no accuracy: blank
  results["rows"]["energy"]["net"] = "loaded"
  assert report.openood_rows(results)[1]["Training"] == "pretrained"


def test_trapezoid_aupr_beside_the_step_wise_one(tmp_path):
  _, res = _results()
  m = res.metrics["msp"]["-"]["n1"]
  assert set(metrics.TRAPEZOID_NAMES) <= set(m)
  assert m["aupr_in_trapezoid"] != m["aupr_in"]   # two different areas, both kept
  res.write(str(tmp_path), plots=False)
  md = (tmp_path / "results.md").read_text()
  assert "AUPR-In (step)" in md and "AUPR-In (trapezoid)" in md
  header = (tmp_path / "results.csv").read_text().splitlines()[0]
  assert "aupr_out_trapezoid" in header and ",aupr_out," in header
  # Without the flag (protocols other than openood_*): neither the columns nor the CSV.
  _, plain = _results(trapezoid=False)
  assert "aupr_in_trapezoid" not in plain.metrics["msp"]["-"]["n1"]
  plain.groups = {}
  plain_dir = tmp_path / "plain"
  files = plain.write(str(plain_dir), plots=False)
  assert "results_openood.csv" not in files and not (plain_dir / "results_openood.csv").exists()
  with pytest.raises(ValueError, match="needs 'near' and 'far'"):
    report.openood_rows(plain.to_dict())
