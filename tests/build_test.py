"""experiments.build: every net and detector row is checked before any work; cache keys."""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dlsr_jax import cache as cache_lib
from dlsr_jax import features
from dlsr_jax.training import classifier
from experiments import build, run
from experiments.configs import quickstart


def _config(**rows):
  c = quickstart.get_config("tiny")
  for name, row in rows.items():
    c.detectors[name] = ml_collections.ConfigDict(row)
  return c


def test_quickstart_plan_rows_nets_and_reads():
  plan = build.build(_config())
  assert list(plan.nets) == ["backbone", "head"] and plan.nets["head"].trains
  assert plan.layout.names == ("level1", "level2", "level3", "level4", "level5")
  rows = plan.rows
  assert list(rows)[:3] == ["dlsr", "knn", "mahalanobis"]   # backbone rows first
  assert rows["dlsr"].trains and not rows["knn"].trains
  assert rows["head_mahalanobis"].fit_reads == ("pre_logits", "labels")
  assert rows["head_odin"].reads == ("features",) and rows["head_odin"].context == ("net",)
  assert rows["dlsr"].settings["ks"] == (2, 3)   # follows c.eval.ks


@pytest.mark.parametrize("row,match", [
    (dict(type="nope"), r"unknown detector type 'nope'; available .*energy.*msp.*odin"),
    (dict(type="msp", net="ce"), r"unknown net 'ce'; configured nets: \['backbone', 'head'\]"),
    (dict(type="msp"), r"reads \['logits'\], which net 'backbone' \(backbone\) does not provide"),
    (dict(type="odin"), "runs a classifier; set net="),
    (dict(type="knn", k=0), r"c.detectors.bad \(knn\): knn: k must be a positive int"),
    (dict(type="energy", net="head", temp=2.0), "accepted settings: temperature"),
    (dict(type="dlsr", levels=("level9",)), "levels .* among the features' levels"),
    (dict(type="dlsr", width2=3), "unknown settings \\['width2'\\]"),
    (dict(type="knn", workdir="x"), "set by the evaluation"),
])
def test_bad_rows_fail_with_clear_errors(row, match):
  with pytest.raises(ValueError, match=match):
    build.build(_config(bad=row))


@pytest.mark.parametrize("net,match", [
    (dict(kind="pretrained", model="mlp_head"), "kind must be 'classifier' or 'head'"),
    (dict(kind="classifier", model="vgg"), "unknown model 'vgg'"),
    (dict(kind="classifier", model="cifar_resnet20", lr=0.1), "unknown net config keys"),
    (dict(kind="classifier", model="cifar_resnet20", init_from="x"), "init_from 'x' is not a"),
    (dict(kind="classifier", model="cifar_resnet20", weights="/no/w.th"), "/no/w.th"),
    (dict(kind="classifier", model="cifar_resnet20", objective="nope"),
     r"unknown objective 'nope'; available .*outlier_exposure"),
    (dict(kind="classifier", model="cifar_resnet20", objective="outlier_exposure", epochs=1),
     r"objective 'outlier_exposure' needs \['outliers'\]: set outliers=<data source>"),
    (dict(kind="classifier", model="cifar_resnet20", objective="outlier_exposure", epochs=1,
          outliers="offline:letters:train", weigth=0.5), r"unknown net config keys \['weigth'\]"),
    (dict(kind="classifier", model="cifar_resnet20", objective="cross_entropy", weight=0.5),
     r"unknown net config keys \['weight'\] \(objective 'cross_entropy'\)"),
    (dict(kind="classifier", model="cifar_resnet20", objective="outlier_exposure", epochs=1,
          outliers="npz:/no/o.npz"), r"c.nets.bad.outliers: /no/o.npz not found"),
    (dict(kind="classifier", model="cifar_resnet20", objective="outlier_exposure", epochs=1,
          outliers="nope:x"), "c.nets.bad.outliers: unknown scheme 'nope'"),
    (dict(kind="classifier", model="cifar_resnet20", objective="outlier_exposure", epochs=1,
          outliers="offline:letters"),
     r"'offline:letters' is also the test set data.ood.letters: training data must be disjoint"),
    (dict(kind="classifier", model="cifar_resnet20", objective="unleashing_mask"),
     "objective 'unleashing_mask' with epochs=0 trains nothing"),
])
def test_bad_nets_fail_with_clear_errors(net, match):
  c = _config()
  c.nets.bad = ml_collections.ConfigDict(net)
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    build.build(c)


def test_init_from_order_and_cycles():
  c = _config()
  c.nets.b = ml_collections.ConfigDict(dict(kind="classifier", model="cifar_resnet20",
                                            init_from="a"))
  c.nets.a = ml_collections.ConfigDict(dict(kind="classifier", model="cifar_resnet20"))
  assert list(build.build(c).nets) == ["backbone", "a", "b", "head"]
  c.nets.a.init_from = "b"
  with pytest.raises(ValueError, match="init_from cycle"):
    build.build(c)


def test_eval_rows_selects_and_rejects_unknown_rows():
  c = _config()
  c.eval.rows = "knn,head_msp"
  assert list(build.build(c).rows) == ["knn", "head_msp"]
  c.eval.rows = "knn,nope"
  with pytest.raises(ValueError, match="unknown rows \\['nope'\\]"):
    build.build(c)


def test_evaluate_validates_before_any_extraction(tmp_path, monkeypatch):
  def no_work(*args, **kwargs):
    raise AssertionError("features extracted before the config was checked")
  monkeypatch.setattr(features, "extract", no_work)
  with pytest.raises(ValueError, match="unknown detector type"):
    run.evaluate(_config(bad=dict(type="nope")), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="run experiments.train"):
    run.evaluate(_config(), str(tmp_path))   # nothing trained yet: says so
  no_ood = _config()
  no_ood.data.ood = ml_collections.ConfigDict()
  with pytest.raises(ValueError, match="no OOD sets configured: set --config.data.extra_ood"):
    run.evaluate(no_ood, str(tmp_path))
  bad_group = _config()
  bad_group.data.groups.far = "letters,nois"
  with pytest.raises(ValueError, match=r"data.groups.far = 'letters,nois' names unknown OOD "
                                       r"sets \['nois'\]; configured sets: \["):
    run.evaluate(bad_group, str(tmp_path))
  assert not list(tmp_path.iterdir())         # nothing written


def test_array_cache_round_trip_and_keys(tmp_path):
  cache = cache_lib.ArrayCache(str(tmp_path))
  key = cache_lib.net_key("head", "params-x", "offline:digits:test", "abc", "logits")
  assert key == {"net": "head", "weights": "params-x", "dataset": "offline:digits:test",
                 "images": "abc", "array": "logits"}
  assert cache.load_arrays(key) is None
  path = cache.save_arrays(key, {"array": np.arange(3.0)})
  assert "head_offline_digits_test_logits" in path
  np.testing.assert_array_equal(cache.load_arrays(key)["array"], np.arange(3.0))
  assert cache.path({**key, "array": "pre_logits"}) != path


def test_params_digest_depends_on_values_and_structure():
  p = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}}
  d = cache_lib.params_digest(p)
  assert d == cache_lib.params_digest({"a": np.ones(3, np.float32),
                                      "b": {"c": np.zeros((2, 2), np.float32)}})
  assert d != cache_lib.params_digest({"a": jnp.ones(3) * 2, "b": {"c": jnp.zeros((2, 2))}})
  assert d != cache_lib.params_digest({"x": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}})


def test_confidence_row_needs_a_net_trained_with_the_confidence_branch():
  c = _config()
  c.detectors.conf = ml_collections.ConfigDict(dict(type="confidence", net="head"))
  with pytest.raises(ValueError, match=r"reads \['confidence'\], which net 'head' \(head\) "
                     "does not provide .* trained with an objective that provides them"):
    build.build(c)
  c.nets.head.objective = "confidence_branch"
  plan = build.build(c)
  assert plan.rows["conf"].reads == ("confidence",)
  assert "confidence" in classifier.provides(plan.nets["head"])


def test_extract_caches_every_set_from_a_config_or_its_plan(tmp_path):
  """`run.extract` (experiments.extract_features): the features of data.train, data.test and
  every OOD set, into <workdir>/feature_cache; given the Plan, it reads them back."""
  c = _config()
  c.resolution, c.data.limit = 32, 12
  first = run.extract(c, str(tmp_path))
  assert [s for s, _ in first] == [c.data.train, c.data.test,
                                   *[s for _, s in sorted(c.data.ood.items())]]
  dims = {info["shape"][1] for _, info in first}
  assert len(dims) == 1 and all(0 < info["shape"][0] == info["num_images"] <= 12
                                for _, info in first)
  assert not any(info["cached"] for _, info in first)
  assert os.listdir(tmp_path / "feature_cache")
  again = run.extract(build.validate_config(c), str(tmp_path))
  assert [(s, i["shape"]) for s, i in again] == [(s, i["shape"]) for s, i in first]
  assert all(info["cached"] for _, info in again)
