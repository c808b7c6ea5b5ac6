"""experiments.evaluation: rows of different nets in one table; each array computed once."""

import collections
import json
import os

import ml_collections
import numpy as np
import pytest

from dlsr_jax import features
from dlsr_jax.evaluation import Results, arrays
from experiments import build, evaluation, run, runner
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
  """Counts feature extractions, classifier forward passes and plans built (`build.build`)."""
  calls = collections.Counter()
  extract, forward, build_plan = features.extract, arrays.forward, build.build

  def counting_build(c):
    calls[("build", "plan")] += 1
    return build_plan(c)

  def counting_extract(backbone, images, *args, desc="features", **kwargs):
    calls[("features", desc)] += 1
    return extract(backbone, images, *args, desc=desc, **kwargs)

  def counting_forward(net, x, *args):
    calls[("forward", hash(np.asarray(x).tobytes()))] += 1
    return forward(net, x, *args)

  monkeypatch.setattr(features, "extract", counting_extract)
  monkeypatch.setattr(arrays, "forward", counting_forward)
  monkeypatch.setattr(build, "build", counting_build)
  return calls


def test_one_table_rows_of_two_nets_each_array_computed_once(config, tmp_path, monkeypatch):
  calls = _count(monkeypatch)
  run.train(config, str(tmp_path))
  assert (tmp_path / "head" / "checkpoints").is_dir()
  assert sum(v for (kind, _), v in calls.items() if kind == "features") == 1   # train only
  assert calls[("build", "plan")] == 1                  # the config is read once a command
  calls.clear()
  res = run.evaluate(config, str(tmp_path))
  # Four sets (train, id, digits59, letters, noise): features once each (train: cached by
  # run.train), the head's forward pass once per set although three head rows read it.
  assert sorted(d for (kind, d), v in calls.items() if kind == "features" and v == 1) == [
      "offline:digits04:test", "offline:digits59:test", "offline:letters", "offline:noise"]
  assert sum(v for (kind, _), v in calls.items() if kind == "forward") == 5
  assert calls[("build", "plan")] == 1
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
  again = run.evaluate(config, str(tmp_path), str(tmp_path / "again"))
  assert dict(calls) == {("build", "plan"): 1}
  assert again["metrics"] == res["metrics"]
  # The plan itself goes in as well: nothing builds it again.
  plan = build.validate_config(config)
  calls.clear()
  assert run.evaluate(plan, str(tmp_path), str(tmp_path / "plan"))["metrics"] == res["metrics"]
  assert not calls


def test_forward_on_features_and_images():
  from dlsr_jax import models  # pylint: disable=g-import-not-at-top
  head = models.load("linear_head", num_features=6, num_classes=3)
  z = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
  out = arrays.forward(head, z, batch_size=2)
  assert out["logits"].shape == (5, 3) and out["pre_logits"].shape == (5, 6)
  np.testing.assert_allclose(out["logits"], np.asarray(head.apply(head.params, z)[0]), rtol=1e-6)


def _fake_scores(plan, store, workdir, seed, fixed, notes=None):
  """Synthetic scores of every configured row: k-free rows and, for "dlsr", mse at eval.ks."""
  del store, workdir, fixed, notes
  rng = np.random.default_rng(seed or 0)
  sets = ["id", *plan.data.ood]
  draw = lambda: {s: rng.normal(size=6) + (s != "id") for s in sets}
  scores, meta = {}, {}
  for row in plan.rows.values():
    ks = plan.record["eval"]["ks"]
    by_k = {str(k): draw() for k in ks} if row.type == "dlsr" else {"-": draw()}
    key = "mse" if row.type == "dlsr" else row.name
    scores[key] = by_k
    meta[key] = {"row": row.name, "detector": row.type, "net": row.net, "score": key}
  groups = {g: list(m) for g, m in plan.data.groups.items()}
  return Results("id", tuple(sets[1:]), groups, scores, meta, {r: {} for r in plan.rows})


def test_a_second_evaluation_moves_the_first_ones_outputs_aside(config, tmp_path, monkeypatch,
                                                                caplog):
  """Issue 10, seen 4: a rerun left the previous run's plots beside the new results."""
  monkeypatch.setattr(runner, "require_trained", lambda *a: None)
  monkeypatch.setattr(arrays, "ArrayStore", lambda *a, **k: collections.namedtuple(
      "Store", "timing backbone")({}, None))
  monkeypatch.setattr(runner, "prepare_nets", lambda *a, **k: {})
  monkeypatch.setattr(evaluation.inputs_lib, "settings_summary", lambda *a: {})
  monkeypatch.setattr(evaluation, "_score_all", _fake_scores)
  out = tmp_path / "eval"
  (out / "dlsr").mkdir(parents=True)
  (out / "config.json").write_text("{}")          # not an evaluation output: stays
  first = config.copy_and_resolve_references()
  first.eval.rows, first.eval.ks, first.seeds = "dlsr,knn,mahalanobis", (2, 3), (0, 1)
  res1 = run.evaluate(first, str(tmp_path), str(out))
  files1 = set(res1["files"])
  assert {"results.json", "seed_0/scores.npz", "seed_1/roc_hist_knn.png",
          "seed_0/auroc_vs_k.png"} <= files1
  second = config.copy_and_resolve_references()
  second.eval.rows = "knn"
  caplog.set_level("INFO")
  res2 = run.evaluate(second, str(tmp_path), str(out))
  files2 = set(res2["files"])
  assert files2 == {"results.json", "results.md", "results.csv", "scores.npz",
                    "roc_hist_knn.png", "results_openood.csv"}   # near / far groups
  on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
  moved = {f for f in on_disk if f.startswith("previous/")}
  assert on_disk - moved == files2 | {"config.json"}   # nothing of the first run beside it
  assert json.loads((out / "results.json").read_text())["files"] == sorted(files2)
  (stamp,) = os.listdir(out / "previous")
  assert (f"moved the {len(files1)} files of the previous evaluation in {out} to "
          f"{out}/previous/{stamp}") in caplog.text
  assert f"this evaluation's 6 files are in {out}" in caplog.text
  assert moved == {f"previous/{stamp}/{f}" for f in files1}   # every file kept, not deleted
  assert json.loads((out / "previous" / stamp / "results.json").read_text())["seeds"] == [0, 1]
  assert (out / "dlsr").is_dir() and not (out / "seed_0").exists()
  run.evaluate(second, str(tmp_path), str(out))        # a third: its own folder
  assert len(os.listdir(out / "previous")) == 2
