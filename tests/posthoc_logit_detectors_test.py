"""OpenOOD v1.5 post-hoc detectors against their formulas (SPEC-posthoc), written here in numpy.

GEN, KL-Matching, TempScale, RMDS, SHE, NNGuide and Relation: a hand-made case each, the
settings and fits each refuses, and that `detectors.make` builds each type.
"""

import jax
import numpy as np
import pytest
from scipy import optimize, special, stats

from dlsr_jax import detectors
from dlsr_jax.detectors import base, nnguide, tempscale

KEY = jax.random.key(0)
TYPES = ("gen", "klm", "tempscale", "rmds", "she", "nnguide", "relation")


def _set(n=40, d=6, k=3, seed=0):
  """ReLU-like features, logits from a random linear layer and noisy labels."""
  rng = np.random.default_rng(seed)
  z = np.abs(rng.normal(size=(n, d))).astype(np.float32)
  logits = (z @ rng.normal(size=(d, k)) + rng.normal(size=(n, k))).astype(np.float32)
  labels = np.argmax(logits + 1.5 * rng.normal(size=(n, k)), axis=1)
  return {"pre_logits": z, "logits": logits, "labels": labels}


def _softmax64(l):
  return special.softmax(np.asarray(l, np.float64), axis=1)


# ------------------------------------------------------------------ make --
def test_every_type_is_listed_and_built_by_make():
  kinds = base.available()
  reads = {"gen": ("logits",), "klm": ("logits",), "tempscale": ("logits",),
           "rmds": ("pre_logits",), "she": ("logits", "pre_logits"),
           "nnguide": ("logits", "pre_logits"), "relation": ("logits", "pre_logits")}
  fit_reads = {"tempscale": ("logits", "labels"), "rmds": ("pre_logits", "labels"),
               "she": ("logits", "pre_logits", "labels")}
  for kind in TYPES:
    assert kind in kinds
    det = detectors.make(kind)
    assert det.name == kind and det.reads == reads[kind]
    assert det.fit_reads == fit_reads.get(kind, reads[kind])


def test_batch_independent():
  """Each row's score is the same scored alone, in a batch of 5, or within the whole set."""
  train, test = _set(60, seed=1), _set(13, seed=2)
  settings = {"nnguide": dict(k=5, bank=30), "relation": dict(chunk_size=4),
              "she": dict(chunk_size=3), "rmds": dict(chunk_size=5)}
  for kind in TYPES:
    det = detectors.make(kind, **settings.get(kind, {}))
    state = det.fit(train, KEY)
    whole = det.score(state, test, KEY)[kind]
    assert whole.shape == (13,) and np.all(np.isfinite(whole))
    parts = [det.score(state, {a: v[i:i + 5] for a, v in test.items()}, KEY)[kind]
             for i in range(0, 13, 5)]
    one = det.score(state, {a: v[7:8] for a, v in test.items()}, KEY)[kind]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-6, err_msg=kind)
    np.testing.assert_allclose(one, whole[7:8], rtol=1e-6, err_msg=kind)


# ------------------------------------------------------------------- GEN --
def _gen64(logits, gamma, m):
  p = np.sort(_softmax64(logits), axis=1)[:, -m:]
  return np.sum(p ** gamma * (1.0 - p) ** gamma, axis=1)


@pytest.mark.parametrize("gamma,m", [(0.1, 100), (0.5, 3), (2.0, 1), (10.0, 4)])
def test_gen_matches_formula(gamma, m):
  logits = _set(25, k=5)["logits"] * 3.0
  det = detectors.make("gen", gamma=gamma, m=m)
  assert det.fit({"logits": logits}, KEY) is None
  got = det.score(None, {"logits": logits}, KEY)["gen"]
  assert got.shape == (25,) and got.dtype == np.float64
  np.testing.assert_allclose(got, _gen64(logits, gamma, m), rtol=2e-5, atol=0)


def test_gen_hand_case_and_no_saturation():
  det = detectors.make("gen", gamma=0.5)
  # p = (1/2, 1/2): 2 * (1/4)^(1/2) = 1.
  np.testing.assert_allclose(det.score(None, {"logits": np.zeros((1, 2))}, KEY)["gen"], [1.0],
                             rtol=1e-6)
  # Margins 20 and 25: float32's softmax is exactly one-hot for both (ties at G = 0 when
  # computed naively) while float64 still resolves 1 - p; GEN's log form matches float64.
  logits = np.array([[20.0, 0.0, 0.0], [25.0, 0.0, 0.0]], np.float32)
  assert np.all(np.max(jax.nn.softmax(logits), axis=1) == 1.0)
  got = detectors.make("gen").score(None, {"logits": logits}, KEY)["gen"]
  np.testing.assert_allclose(got, _gen64(logits, 0.1, 3), rtol=1e-5)
  assert got[0] > got[1] > 0.0
  # gamma = 10: G ~ e^(-10 margin) is below float32's range at margins 12 and 15 (0 for both).
  logits = np.array([[12.0, 0.0, 0.0], [15.0, 0.0, 0.0]], np.float32)
  want = _gen64(logits, 10.0, 3)
  assert np.all(want.astype(np.float32) == 0.0)
  got = detectors.make("gen", gamma=10.0).score(None, {"logits": logits}, KEY)["gen"]
  np.testing.assert_allclose(got, want, rtol=1e-4)
  assert got[0] > got[1] > 0.0


def test_gen_refuses_bad_settings():
  for gamma in (0.0, -1.0, np.inf, True, "0.1"):
    with pytest.raises(ValueError, match="gen: gamma must be a positive finite number"):
      detectors.make("gen", gamma=gamma)
  for m in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match="gen: m must be a positive int"):
      detectors.make("gen", m=m)


# ------------------------------------------------------------------- KLM --
def test_klm_matches_formula():
  rng = np.random.default_rng(3)
  fit, test = rng.normal(size=(60, 4)) * 2.0, rng.normal(size=(17, 4)) * 3.0
  p_fit, pred = _softmax64(fit), np.argmax(fit, axis=1)
  assert np.all(np.bincount(pred) > 5)
  templates = np.stack([p_fit[pred == c].mean(axis=0) for c in range(4)])
  p = _softmax64(test)
  want = np.array([min(stats.entropy(q, t) for t in templates) for q in p])
  det = detectors.make("klm")
  state = det.fit({"logits": fit}, KEY)
  np.testing.assert_allclose(state.templates, templates, rtol=1e-12)
  got = det.score(state, {"logits": test}, KEY)["klm"]
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


def test_klm_hand_case():
  # Fit: two samples with p = (3/4, 1/4) (predicted 0) and one with p = (1/4, 3/4): templates
  # (3/4, 1/4) and (1/4, 3/4). A query p = (1/2, 1/2) is at
  # KL = 1/2 log(1/2 / 3/4) + 1/2 log(1/2 / 1/4) = 1/2 log(4/3) from both; (3/4, 1/4) at 0.
  l3 = np.log(3.0)
  fit = np.array([[l3, 0.0], [l3, 0.0], [0.0, l3]])
  det = detectors.make("klm")
  state = det.fit({"logits": fit}, KEY)
  got = det.score(state, {"logits": np.array([[0.0, 0.0], [l3, 0.0]])}, KEY)["klm"]
  np.testing.assert_allclose(got, [0.5 * np.log(4.0 / 3.0), 0.0], atol=1e-15)
  # A template with an exact zero (float64's softmax of a margin of 1000 is one-hot): KL to it
  # is +inf for any p with mass there and 0 log 0 = 0 for a p without.
  state = det.fit({"logits": np.array([[1000.0, 0.0], [0.0, 1.0]])}, KEY)
  assert state.templates[0, 1] == 0.0
  got = det.score(state, {"logits": np.array([[0.0, 0.0], [1000.0, 0.0]])}, KEY)["klm"]
  d1 = special.softmax([0.0, 1.0])
  np.testing.assert_allclose(got, [stats.entropy([0.5, 0.5], d1), 0.0], rtol=1e-12, atol=0)


def test_klm_refuses_a_class_no_fit_sample_predicts():
  fit = np.array([[2.0, 0.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
  with pytest.raises(ValueError, match=r"klm: no fit sample is predicted as class\(es\) \[1\]"):
    detectors.make("klm").fit({"logits": fit}, KEY)


# ------------------------------------------------------------- TempScale --
def _nll(logits, labels, t):
  l = np.asarray(logits, np.float64) / t
  return np.mean(special.logsumexp(l, axis=1) - l[np.arange(len(l)), labels])


def test_tempscale_hand_case():
  # Logits (1, 0) with labels 0, 0, 1: NLL(b) = log(1 + e^b) - 2b/3 with b = 1/T, minimal at
  # sigmoid(b) = 2/3, b = log 2.
  det = detectors.make("tempscale")
  state = det.fit({"logits": np.array([[1.0, 0.0]] * 3), "labels": np.array([0, 0, 1])}, KEY)
  np.testing.assert_allclose(state.temperature, 1.0 / np.log(2.0), rtol=1e-12)


def test_tempscale_is_the_exact_nll_minimiser_and_scores_without_saturating():
  data = _set(80, k=4, seed=5)
  logits, labels = data["logits"] * 2.0, data["labels"]
  det = detectors.make("tempscale")
  t = det.fit({"logits": logits, "labels": labels}, KEY).temperature
  # An independent minimiser of the NLL itself (not of its slope).
  ref = optimize.minimize_scalar(lambda u: _nll(logits, labels, np.exp(u)), bounds=(-5, 5),
                                 method="bounded", options={"xatol": 1e-10})
  np.testing.assert_allclose(t, np.exp(ref.x), rtol=1e-6)
  assert _nll(logits, labels, t) <= min(_nll(logits, labels, t * 1.001),
                                        _nll(logits, labels, t / 1.001))
  # score = -log max softmax(l / T), float64; ranks as -max softmax(l / T).
  state = tempscale.TempScaleModel(temperature=0.5)
  test = np.concatenate([logits[:10], [[30.0, 0.0, 0.0, 0.0], [40.0, 0.0, 0.0, 0.0]]])
  got = det.score(state, {"logits": test}, KEY)["tempscale"]
  assert got.dtype == np.float64
  want = -np.log(np.max(_softmax64(test / 0.5), axis=1))
  np.testing.assert_allclose(got[:10], want[:10], rtol=1e-10)
  # margins 60 and 80 after T: float64's max softmax is 1.0 for both; the log1p form is not.
  assert np.all(np.max(_softmax64(test[10:] / 0.5), axis=1) == 1.0)
  np.testing.assert_allclose(got[10:], 3.0 * np.exp([-60.0, -80.0]), rtol=1e-10)


def test_tempscale_refuses_fits_without_a_minimiser():
  det = detectors.make("tempscale")
  right = {"logits": np.array([[2.0, 0.0], [0.0, 1.0]]), "labels": np.array([0, 1])}
  with pytest.raises(ValueError, match="tempscale: every one of the 2 fit samples has its "
                                       "label's logit as the top logit"):
    det.fit(right, KEY)
  wrong = {"logits": np.array([[2.0, 0.0], [0.0, 1.0]]), "labels": np.array([1, 0])}
  with pytest.raises(ValueError, match="smallest at T = inf"):
    det.fit(wrong, KEY)
  with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\)"):
    det.fit({"logits": right["logits"], "labels": np.array([0, 2])}, KEY)
  with pytest.raises(ValueError, match=r"fit reads the array\(s\) \['labels'\]"):
    det.fit({"logits": right["logits"]}, KEY)


# ------------------------------------------------------------------ RMDS --
def _rmds64(train, labels, test):
  classes = np.unique(labels)
  mu = np.stack([train[labels == c].mean(axis=0) for c in classes])
  within = train - mu[np.searchsorted(classes, labels)]
  prec = np.linalg.pinv(np.cov(within.T, bias=True), hermitian=True)
  mu0 = train.mean(axis=0)
  prec0 = np.linalg.pinv(np.cov(train.T, bias=True), hermitian=True)
  d = test[:, None, :] - mu[None]
  d_class = np.einsum("nkc,cd,nkd->nk", d, prec, d).min(axis=1)
  return d_class - np.einsum("nc,cd,nd->n", test - mu0, prec0, test - mu0)


@pytest.mark.parametrize("dead", [False, True])
def test_rmds_matches_formula(dead):
  rng = np.random.default_rng(6)
  labels = np.repeat([3, 7, 9], 30)                         # any label values
  train = rng.normal(size=(90, 5)) + 2.0 * rng.normal(size=(3, 5))[np.repeat([0, 1, 2], 30)]
  test = rng.normal(size=(21, 5)) * 2.0
  if dead:   # a dead unit: singular covariances, handled by the pseudo-inverse
    train[:, 2], test[:, 2] = 0.0, 0.0
  det = detectors.make("rmds", chunk_size=8)
  state = det.fit({"pre_logits": train, "labels": labels}, KEY)
  assert state.classes == (3, 7, 9) and state.whiten.shape == (5, 4 if dead else 5)
  got = det.score(state, {"pre_logits": test}, KEY)["rmds"]
  want = _rmds64(train, labels, test)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_rmds_refuses_impossible_fits():
  det = detectors.make("rmds")
  z = np.random.default_rng(0).normal(size=(6, 2))
  with pytest.raises(ValueError, match="rmds: the fit labels hold 1 class; RMDS needs at least 2"):
    det.fit({"pre_logits": z, "labels": np.zeros(6, int)}, KEY)
  with pytest.raises(ValueError, match="3 fit rows for 3 classes leave no within-class"):
    det.fit({"pre_logits": z[:3], "labels": np.arange(3)}, KEY)
  same = np.repeat(z[:2], 3, axis=0)                       # each class: one repeated row
  with pytest.raises(ValueError, match="within-class covariance is zero"):
    det.fit({"pre_logits": same, "labels": np.repeat([0, 1], 3)}, KEY)
  with pytest.raises(ValueError, match="chunk_size must be a positive int"):
    detectors.make("rmds", chunk_size=0)


# ------------------------------------------------------------------- SHE --
def test_she_hand_case():
  # Class 0: rows (2, 0) and (4, 2) correct -> s_0 = (3, 1); the row (9, 9) labelled 0 but
  # predicted 1 is left out. Class 1: row (0, 2) -> s_1 = (0, 2).
  fit = {"pre_logits": np.array([[2.0, 0.0], [4.0, 2.0], [9.0, 9.0], [0.0, 2.0]]),
         "logits": np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0], [0.0, 1.0]]),
         "labels": np.array([0, 0, 0, 1])}
  det = detectors.make("she", chunk_size=2)
  state = det.fit(fit, KEY)
  np.testing.assert_array_equal(state, [[3.0, 1.0], [0.0, 2.0]])
  test = {"pre_logits": np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 5.0]]),
          "logits": np.array([[5.0, 0.0], [0.0, 5.0], [0.0, 1.0]])}
  got = det.score(state, test, KEY)["she"]
  np.testing.assert_allclose(got, [-4.0, -2.0, -10.0])


def test_she_matches_formula_and_refuses_impossible_fits():
  train, test = _set(50, seed=7), _set(9, seed=8)
  right = np.argmax(train["logits"], axis=1) == train["labels"]
  s = np.stack([train["pre_logits"][right & (train["labels"] == c)].mean(axis=0)
                for c in range(3)])
  want = -np.sum(test["pre_logits"] * s[np.argmax(test["logits"], axis=1)], axis=1)
  det = detectors.make("she")
  got = det.score(det.fit(train, KEY), test, KEY)["she"]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  no_two = dict(train, labels=np.where(train["labels"] == 2, 0, train["labels"]))
  with pytest.raises(ValueError, match=r"she: class\(es\) \[2\] .* no correctly classified"):
    det.fit(no_two, KEY)
  with pytest.raises(ValueError, match=r"she: labels must be class indices in \[0, 3\)"):
    det.fit(dict(train, labels=train["labels"] + 1), KEY)


# --------------------------------------------------------------- NNGuide --
def _normalize(z):
  return z / np.linalg.norm(z, axis=1, keepdims=True) + 1e-10


@pytest.mark.parametrize("k,bank", [(4, 12), (1, 30), (12, 12)])
def test_nnguide_matches_formula(k, bank):
  train, test = _set(30, seed=9), _set(11, seed=10)
  z, l = train["pre_logits"].astype(np.float64), train["logits"].astype(np.float64)
  g = _normalize(z[:bank]) * special.logsumexp(l[:bank], axis=1)[:, None]
  sims = _normalize(test["pre_logits"].astype(np.float64)) @ g.T
  s_k = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
  want = -s_k * special.logsumexp(test["logits"].astype(np.float64), axis=1)
  det = detectors.make("nnguide", k=k, bank=bank, chunk_size=4)
  state = det.fit(train, KEY)
  assert state.bank.shape == (bank, 6)
  got = det.score(state, test, KEY)["nnguide"]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Only the first `bank` fit rows count.
  later = {a: np.concatenate([v[:bank], v[bank:][::-1] * 3]) for a, v in train.items()}
  np.testing.assert_array_equal(det.score(det.fit(later, KEY), test, KEY)["nnguide"], got)


def test_nnguide_default_bank_is_openood_and_bad_settings_are_refused():
  assert [nnguide.openood_bank_size(n) for n in (50_000, 5170, 30, 1_281_167)] == \
      [600, 200, 30, 13_000]
  train = _set(30, seed=9)
  assert detectors.make("nnguide", k=7).fit(train, KEY).bank.shape == (30, 6)
  with pytest.raises(ValueError, match="nnguide: OpenOOD's bank size for N = 30 is 30 < k = 100"):
    detectors.make("nnguide").fit(train, KEY)
  with pytest.raises(ValueError, match="nnguide: bank = 31 exceeds the 30 fit samples"):
    detectors.make("nnguide", k=5, bank=31).fit(train, KEY)
  with pytest.raises(ValueError, match="nnguide: bank = 50 < k = 100"):
    detectors.make("nnguide", bank=50)
  for k in (0, 2.0, True):
    with pytest.raises(ValueError, match="nnguide: k must be a positive int"):
      detectors.make("nnguide", k=k)
  with pytest.raises(ValueError, match="nnguide: bank must be a positive int"):
    detectors.make("nnguide", bank=0)


# -------------------------------------------------------------- Relation --
@pytest.mark.parametrize("power,threshold", [(1, 0.03), (2, 0.2), (6, 0.0)])
def test_relation_matches_formula(power, threshold):
  train, test = _set(25, seed=11), _set(7, seed=12)

  def unit(z):
    z = z.astype(np.float64)
    return z / np.sqrt(np.sum(z * z, axis=1, keepdims=True) + 1e-10)

  rel = (np.maximum(unit(test["pre_logits"]) @ unit(train["pre_logits"]).T, 0.0)
         * (_softmax64(test["logits"]) @ _softmax64(train["logits"]).T))
  want = -np.sum(np.where(np.abs(rel) > threshold, np.abs(rel) ** power, 0.0), axis=1)
  assert np.min(np.abs(rel - threshold)) > 1e-5   # no float32 rounding decides a cut
  if threshold == 0.2:
    assert 0.1 < np.mean(rel > threshold) < 0.9   # the cut drops some relations, keeps some
  det = detectors.make("relation", pow=power, threshold=threshold, chunk_size=3)
  got = det.score(det.fit(train, KEY), test, KEY)["relation"]
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_relation_refuses_bad_settings():
  for power in (0, -1.0, np.nan, True):
    with pytest.raises(ValueError, match="relation: pow must be a positive finite number"):
      detectors.make("relation", pow=power)
  for threshold in (-0.1, np.inf, "0.03"):
    with pytest.raises(ValueError, match="relation: threshold must be a non-negative finite"):
      detectors.make("relation", threshold=threshold)
