"""The Python front door: `Net.head`, `models.wrap`, `evaluation.forward` and
`evaluation.evaluate` (issue 15, items 1 and 2)."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dlsr_jax import detectors, evaluation, models
from dlsr_jax.models.net import Net


class _Tiny(nn.Module):
  """conv - mean pool - Dense "head"; pre_logits are the pooled features."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    pre = h.mean(axis=(1, 2))
    return nn.Dense(3, name="head")(pre), {"pre_logits": pre}


def _tiny_variables(seed=0):
  return _Tiny().init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)))


def _images(n, seed, shift=0):
  rng = np.random.default_rng(seed)
  return np.clip(rng.integers(0, 200, size=(n, 8, 8, 3)) + shift, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18_32x32", "wrn40_2",
                                  "linear_head", "mlp_head"])
def test_net_head_is_the_final_dense_layer(name):
  heads = name.endswith("_head")
  net = models.load(name, num_classes=7, **({"num_features": 5} if heads else {}))
  x = (np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32) if heads
       else net.preprocess(_images(2, 0).repeat(4, 1).repeat(4, 2)))
  logits, out = jax.jit(net.apply)(net.params, x)
  w, b = net.head
  assert w.shape == (out["pre_logits"].shape[1], 7) and b.shape == (7,)
  np.testing.assert_allclose(np.asarray(out["pre_logits"]) @ np.asarray(w) + np.asarray(b),
                             logits, rtol=1e-4, atol=1e-4)


def test_confidence_net_keeps_the_inner_head():
  net = models.load("linear_head", num_classes=3, num_features=4)
  conf = models.with_confidence_head(net, jax.random.key(1))
  np.testing.assert_array_equal(conf.head[0], net.head[0])
  np.testing.assert_array_equal(conf.head[1], net.head[1])


def test_head_errors_name_the_problem():
  net = models.wrap(lambda p, x: _Tiny().apply(p, x), _tiny_variables(), resolution=8)
  with pytest.raises(ValueError, match="does not name its final dense layer"):
    net.head   # pylint: disable=pointless-statement
  bad = dataclasses.replace(net, head_path=("nothere",))
  with pytest.raises(ValueError, match="no 'nothere' under 'params'"):
    bad.head   # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match="is not a dense layer"):
    dataclasses.replace(net, head_path=("conv", "bias")).head  # pylint: disable=expression-not-assigned


def test_wrap_runs_like_a_loaded_net_and_odin_works_unchanged():
  variables = _tiny_variables()
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  native = Net(name="tiny", module=_Tiny(), params=variables, resolution=8, mean=mean,
               std=std, head_path=("head",))
  wrapped = models.wrap(lambda p, x: _Tiny().apply(p, x), variables, head="head",
                        preprocess=lambda x: (x / 255.0 - jnp.asarray(mean)) / jnp.asarray(std),
                        resolution=8)
  assert wrapped.outputs == ("logits", "pre_logits") and wrapped.module is None
  images = _images(5, 1)
  a, b = evaluation.forward(native, images), evaluation.forward(wrapped, images)
  for k in ("logits", "pre_logits"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(wrapped.head[0], variables["params"]["head"]["kernel"])
  odin = [detectors.make("odin", net=n, temperature=10.0, eps=0.01) for n in (native, wrapped)]
  key = jax.random.key(0)
  s = [d.score(d.fit({"images": images}, key), {"images": images}, key)["odin"] for d in odin]
  np.testing.assert_allclose(s[0], s[1], rtol=1e-5, atol=1e-6)


def test_wrap_refuses_bad_functions_and_heads():
  variables = _tiny_variables()
  with pytest.raises(TypeError, match="apply_fn must be callable"):
    models.wrap("not a function", variables)
  with pytest.raises(ValueError, match=r"must return \(logits, out\)"):
    models.wrap(lambda p, x: _Tiny().apply(p, x)[0], variables, resolution=8)
  with pytest.raises(ValueError, match=r"out\['pre_logits'\] \[B, D\]"):
    models.wrap(lambda p, x: (_Tiny().apply(p, x)[0], {}), variables, resolution=8)
  with pytest.raises(ValueError, match="fails on a"):
    models.wrap(lambda p, x: _Tiny().apply(p, x[..., :2]), variables, resolution=8)
  with pytest.raises(ValueError, match="no 'fc'"):
    models.wrap(lambda p, x: _Tiny().apply(p, x), variables, head="fc", resolution=8)
  with pytest.raises(ValueError, match="confidence head is trained"):
    models.with_confidence_head(models.wrap(lambda p, x: _Tiny().apply(p, x), variables,
                                            resolution=8), jax.random.key(0))


def test_forward_compiles_once_per_net_across_sets_and_weights():
  traces = []

  def apply_fn(p, x):
    traces.append(x.shape)          # runs only while tracing
    return _Tiny().apply(p, x)

  net = models.wrap(apply_fn, _tiny_variables(0), resolution=8)
  traces.clear()                    # wrap traced once with jax.eval_shape
  outs = [evaluation.forward(net, _images(n, n), batch_size=8) for n in (3, 8, 13, 20)]
  assert [o["logits"].shape for o in outs] == [(3, 3), (8, 3), (13, 3), (20, 3)]
  retrained = dataclasses.replace(net, params=_tiny_variables(1))
  evaluation.forward(retrained, _images(5, 0), batch_size=8)
  assert traces == [(8, 8, 8, 3)]   # one compilation for every set and both weights
  one = evaluation.forward(net, _images(13, 13)[:1], batch_size=8)
  np.testing.assert_allclose(one["logits"], outs[2]["logits"][:1], rtol=1e-6)   # no batch mix


def _logit_sets(seed=0):
  rng = np.random.default_rng(seed)
  def logits(n, scale):
    return (rng.normal(size=(n, 4)) * scale).astype(np.float32)
  feats = lambda n, shift: (rng.normal(size=(n, 6)) + shift).astype(np.float32)
  fit = {"logits": logits(40, 3.0), "pre_logits": feats(40, 0.0),
         "labels": rng.integers(0, 4, 40)}
  sets = {"id": {"logits": logits(30, 3.0), "pre_logits": feats(30, 0.0)},
          "near": {"logits": logits(25, 1.5), "pre_logits": feats(25, 0.5)},
          "far": {"logits": logits(20, 0.5), "pre_logits": feats(20, 2.0)}}
  return fit, sets


def test_evaluate_msp_auroc_equals_sklearn_and_records_are_complete(tmp_path):
  fit, sets = _logit_sets()
  dets = {"msp": detectors.make("msp"), "energy": detectors.make("energy"),
          "knn": detectors.make("knn", array="pre_logits", k=3)}
  res = evaluation.evaluate(dets, fit, sets, key=jax.random.key(0),
                            groups={"all": ["near", "far"]})
  for ood in ("near", "far"):
    s_id = dets["msp"].score(None, sets["id"], None)["msp"]
    s_ood = dets["msp"].score(None, sets[ood], None)["msp"]
    want = roc_auc_score(np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))], np.r_[s_id, s_ood])
    assert res.metrics["msp"]["-"][ood]["auroc"] == pytest.approx(want, abs=1e-12)
  records = res.to_records()
  assert len(records) == 3 * 4            # 3 rows x (near, far, group:all, average)
  fields = {"row", "score", "k", "set", "auroc", "aupr_in", "aupr_out", "fpr95_id_positive",
            "fpr95_ood_positive"}
  assert all(fields <= set(r) for r in records)
  assert {r["set"] for r in records} == {"near", "far", "group:all", "average"}
  assert all(r["k"] is None for r in records)
  avg = [r for r in records if r["row"] == "energy" and r["set"] == "average"][0]
  assert avg["auroc"] == pytest.approx((res.metrics["energy"]["-"]["near"]["auroc"]
                                        + res.metrics["energy"]["-"]["far"]["auroc"]) / 2)
  assert "## Every row" in res.markdown() and "`near`" in res.markdown()
  files = res.write(str(tmp_path))
  assert files == ["results.csv", "results.json", "results.md", "roc_hist_energy.png",
                   "roc_hist_knn.png", "roc_hist_msp.png", "scores.npz"]
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["metrics"]["knn"]["-"]["far"] == res.metrics["knn"]["-"]["far"]
  assert set(res.timing) == {"msp", "energy", "knn"}


def test_evaluate_scores_each_set_with_its_own_key_and_rows_independently():
  fit, sets = _logit_sets()
  seen = []

  def score(state, arrays, key):
    seen.append(np.asarray(jax.random.key_data(key)).tolist())
    return {"noise": np.asarray(jax.random.uniform(key, (len(arrays["logits"]),)))}

  noisy = detectors.base.Detector("noisy", ("logits",), lambda a, k: None, score)
  key = jax.random.key(3)
  one = evaluation.evaluate({"a": noisy}, fit, sets, key=key)
  both = evaluation.evaluate({"msp": detectors.make("msp"), "a": noisy}, fit, sets, key=key)
  assert one.metrics["a"] == both.metrics["a"]          # another row changes nothing
  keys = {tuple(np.asarray(jax.random.key_data(evaluation.set_key(key, s))).tolist())
          for s in sets}
  assert {tuple(k) for k in seen} == keys and len(keys) == 3


def test_evaluate_refuses_bad_calls_before_fitting():
  fit, sets = _logit_sets()
  fitted = []
  det = detectors.base.Detector("msp", ("logits",), lambda a, k: fitted.append(1),
                                lambda s, a, k: {"msp": a["logits"][:, 0]})
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="id_set 'test' is not among the sets"):
    evaluation.evaluate({"m": det}, fit, sets, key=key, id_set="test")
  with pytest.raises(ValueError, match="no OOD sets"):
    evaluation.evaluate({"m": det}, fit, {"id": sets["id"]}, key=key)
  with pytest.raises(ValueError, match="group 'g' names unknown sets"):
    evaluation.evaluate({"m": det}, fit, sets, key=key, groups={"g": ["svhn"]})
  with pytest.raises(TypeError, match="not Detectors"):
    evaluation.evaluate({"m": "msp"}, fit, sets, key=key)
  assert not fitted
  once = evaluation.evaluate({"m": det}, fit, sets, key=key)
  with pytest.raises(ValueError, match=r"same results keys \['m'\]"):
    evaluation.Results.combine([once, once])
  with pytest.raises(ValueError, match="reads the array"):
    evaluation.evaluate({"k": detectors.make("knn", array="features")}, fit, sets, key=key)
