"""experiments.evaluation: rows of different nets in one table; each array computed once."""

import collections
import json

import ml_collections
import numpy as np
import pytest

from dlsr_jax import features
from experiments import arrays, evaluation, runner
from experiments.configs import quickstart


@pytest.fixture(name="config")
def _config():
  """Tiny: random Lite0 at 32 px, 24 images a set, no DLSR row (nothing slow to train)."""
  c = quickstart.get_config("tiny")
  c.resolution, c.data.limit = 32, 24
  c.eval.rows = "knn,mahalanobis,head_msp,head_energy,head_knn,maxlogit"
  c.detectors.maxlogit = ml_collections.ConfigDict(dict(net="head"))
  c.nets.head.epochs, c.nets.head.batch_size = 1, 8
  c.data.groups.far = "letters,noise"
  del c.data.ood["photos"]
  return c


def _count(monkeypatch):
  calls = collections.Counter()
  extract, forward = features.extract, arrays.forward

  def counting_extract(backbone, images, *args, desc="features", **kwargs):
    calls[("features", desc)] += 1
    return extract(backbone, images, *args, desc=desc, **kwargs)

  def counting_forward(net, x, *args):
    calls[("forward", hash(np.asarray(x).tobytes()))] += 1
    return forward(net, x, *args)

  monkeypatch.setattr(features, "extract", counting_extract)
  monkeypatch.setattr(arrays, "forward", counting_forward)
  return calls


def test_one_table_rows_of_two_nets_each_array_computed_once(config, tmp_path, monkeypatch):
  calls = _count(monkeypatch)
  runner.run_train(config, str(tmp_path))
  assert (tmp_path / "head" / "checkpoints").is_dir()
  assert sum(v for (kind, _), v in calls.items() if kind == "features") == 1   # train only
  calls.clear()
  res = evaluation.run_evaluate(config, str(tmp_path))
  # Four sets (train, id, digits59, letters, noise): features once each (train: cached by
  # run_train), the head's forward pass once per set although three head rows read it.
  assert sorted(d for (kind, d), v in calls.items() if kind == "features" and v == 1) == [
      "offline:digits04:test", "offline:digits59:test", "offline:letters", "offline:noise"]
  assert sum(v for (kind, _), v in calls.items() if kind == "forward") == 5
  assert all(v == 1 for v in calls.values())
  assert {m["net"] for m in res["rows"].values()} == {"backbone", "head"}
  assert set(res["metrics"]) == {"knn", "mahalanobis", "head_msp", "head_energy", "head_knn",
                                 "maxlogit"}
  assert res["rows"]["maxlogit"]["detector"] == "maxlogit"
  assert set(res["metrics"]["head_knn"]["-"]) == {"digits59", "letters", "noise", "group:near",
                                                  "group:far", "average"}
  assert res["nets"]["head"]["model"] == "mlp_head" and "head" in res["accuracy"]
  table = (tmp_path / "results.md").read_text()
  assert "| head | maxlogit | maxlogit |" in table and "| backbone | knn | knn |" in table
  assert json.loads((tmp_path / "results.json").read_text())["rows"] == res["rows"]
  # A second evaluation reads every array from the caches: nothing is recomputed.
  calls.clear()
  again = evaluation.run_evaluate(config, str(tmp_path), str(tmp_path / "again"))
  assert not calls
  assert again["metrics"] == res["metrics"]


def test_forward_on_features_and_images():
  from dlsr_jax import models  # pylint: disable=g-import-not-at-top
  head = models.load("linear_head", num_features=6, num_classes=3)
  z = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
  out = arrays.forward(head, z, batch_size=2)
  assert out["logits"].shape == (5, 3) and out["pre_logits"].shape == (5, 6)
  np.testing.assert_allclose(out["logits"], np.asarray(head.apply(head.params, z)[0]), rtol=1e-6)
