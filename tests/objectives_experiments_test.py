"""Training-time objectives through experiments.train / evaluate: nets, streams, arrays, rows."""

import json
import math
import os

import ml_collections
import pytest

from experiments import run
from experiments.configs import objectives_cifar10, quickstart
from tests.models_test import FILES, WEIGHTS, shared_file


@pytest.fixture(name="config")
def _config():
  """Quickstart data (24 images a set): an OE ResNet-20 and a confidence-branch head."""
  c = quickstart.get_config("tiny")
  c.resolution, c.data.limit = 32, 24
  del c.data.ood["photos"]
  c.data.groups.far = "letters,noise"
  c.nets.oe = ml_collections.ConfigDict(dict(
      kind="classifier", model="cifar_resnet20", num_classes=10, objective="outlier_exposure",
      outliers="offline:letters:train", outliers_batch_size=4, weight=0.5, epochs=1,
      batch_size=8, learning_rate=0.01))
  c.nets.conf = ml_collections.ConfigDict(dict(
      kind="head", model="mlp_head", hidden=16, objective="confidence_branch", lambda0=0.2,
      epochs=2, batch_size=8))
  c.detectors.oe_msp = ml_collections.ConfigDict(dict(type="msp", net="oe"))
  c.detectors.conf_msp = ml_collections.ConfigDict(dict(type="msp", net="conf"))
  c.detectors.conf_confidence = ml_collections.ConfigDict(dict(type="confidence", net="conf"))
  c.eval.rows = "oe_msp,conf_msp,conf_confidence"
  c.eval.plots = False
  return c


def test_objectives_train_resume_and_evaluate_in_one_table(config, tmp_path):
  run.train(config, str(tmp_path))
  runs = json.loads((tmp_path / "train_runs.json").read_text())
  assert runs[-1]["nets"]["oe"]["objective"] == "outlier_exposure"
  assert runs[-1]["nets"]["conf"]["objective"] == "confidence_branch"
  oe_metrics = (tmp_path / "oe" / "metrics.jsonl").read_text().splitlines()
  assert oe_metrics and (tmp_path / "oe" / "checkpoints" / "3").is_dir()   # 24 / 8
  res = run.evaluate(config, str(tmp_path))
  assert set(res["metrics"]) == {"oe_msp", "conf_msp", "conf_confidence"}
  assert res["rows"]["conf_confidence"] == {"row": "conf_confidence", "detector": "confidence",
                                            "net": "conf", "score": "confidence"}
  for key in res["metrics"]:
    assert math.isfinite(res["metrics"][key]["-"]["letters"]["auroc"])
  assert set(res["accuracy"]) == {"oe", "conf"}
  # A second train finds both runs finished: restored, not retrained.
  run.train(config, str(tmp_path))
  again = json.loads((tmp_path / "train_runs.json").read_text())
  assert len(again) == 2 and again[-1]["nets"]["oe"]["seconds"] < runs[-1]["nets"]["oe"][
      "seconds"]


def test_objectives_config_builds_every_net_and_row():
  weights = shared_file(os.path.join(WEIGHTS, FILES[20]))
  c = objectives_cifar10.get_config(f"weights={weights},outliers=npz:{weights}")
  from experiments import build  # pylint: disable=g-import-not-at-top
  plan = build.build(c)
  assert list(plan.nets)[:2] == ["backbone", "base"]
  order = list(plan.nets)
  assert order.index("um") < order.index("oe_um")
  assert plan.nets["oe"].recipe["outliers"] == f"npz:{weights}"
  assert plan.nets["umap"].recipe["prune"] and plan.nets["umap"].recipe["learning_rate"] == 0.1
  assert plan.nets["base"].recipe["epochs"] == 0
  assert {r.type for r in plan.rows.values()} == {"msp", "odin", "energy", "mahalanobis",
                                                  "confidence"}
  assert len(plan.rows) == 8 * 4 + 1
  with pytest.raises(ValueError, match="config arg outliers= needs a value"):
    objectives_cifar10.get_config("outliers=")
  scratch = objectives_cifar10.get_config("")
  assert scratch.methods.base_epochs == 200 and scratch.nets.oe.outliers == "folder:data/tin597"
