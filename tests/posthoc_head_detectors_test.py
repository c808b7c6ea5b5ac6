"""GradNorm, ReAct, ASH, SCALE and DICE (SPEC-posthoc 2.7, 3.1-3.4) against numpy formulas.

Every expected score is computed here in float64 numpy from the spec's formulas, on hand-made
final layers passed as `types.SimpleNamespace(head=(W, b))`.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from dlsr_jax import detectors
from dlsr_jax.detectors import _head

KEY = jax.random.key(0)
TYPES = ("gradnorm", "react", "ash", "scale", "dice")
FITTED = ("react", "dice")


def _net(d=6, k=4, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, k)).astype(np.float32)
  b = rng.normal(size=k).astype(np.float32)
  return types.SimpleNamespace(head=(w, b))


def _relu_features(n, d=6, seed=1):
  return np.maximum(np.random.default_rng(seed).normal(size=(n, d)), 0.0).astype(np.float32)


def _neg_energy(v, w, b):
  return -special.logsumexp(np.asarray(v, np.float64) @ np.float64(w) + np.float64(b), axis=-1)


def _fit_score(det, z_fit, z):
  fit_arrays = {"pre_logits": z_fit} if det.fit_reads else {}
  state = det.fit(fit_arrays, KEY)
  return state, det.score(state, {"pre_logits": z}, KEY)[det.name]


# --------------------------------------------------------------- GradNorm --
def test_gradnorm_matches_closed_form_and_autodiff():
  net, z = _net(), _relu_features(9)
  z[4] = 0.0   # a dead feature vector: zero gradient, score 0
  w, b = net.head
  _, got = _fit_score(detectors.make("gradnorm", net=net), None, z)
  assert got.dtype == np.float64 and got.shape == (9,)
  logits = np.float64(z) @ np.float64(w) + np.float64(b)
  p = special.softmax(logits, axis=-1)
  want = -np.abs(4 * p - 1).sum(-1) * np.abs(np.float64(z)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[4] == 0.0

  # OpenOOD's definition: L1 norm of d/dW of -sum_c log softmax(z W + b)_c, per sample.
  def loss(w_, z_row):
    return -jnp.sum(jax.nn.log_softmax(z_row @ w_ + b))
  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(jnp.asarray(w), jnp.asarray(z))
  np.testing.assert_allclose(got, -np.abs(np.asarray(grads)).sum((1, 2)), rtol=1e-4)


def test_gradnorm_float64_separates_confident_rows_float32_would_tie():
  # Logits [20, 0, 0] and [24, 0, 0], same sum |z| = 24: in float32 sum_k |3 p_k - 1| is
  # exactly 4 for both; in float64 the less confident row scores higher.
  w = np.array([[1, 0, 0], [0, 0, 0]], np.float32)
  net = types.SimpleNamespace(head=(w, np.zeros(3, np.float32)))
  z = np.array([[20, 4], [24, 0]], np.float32)
  _, got = _fit_score(detectors.make("gradnorm", net=net), None, z)
  p32 = jax.nn.softmax(jnp.asarray(z @ w), axis=-1)
  assert np.all(np.abs(3 * np.asarray(p32) - 1).sum(-1) == 4.0)   # the float32 tie
  assert got[0] > got[1]
  gap = np.array([20.0, 24.0])
  other = np.exp(-gap) / (1 + 2 * np.exp(-gap))   # p of each of the two other classes
  np.testing.assert_allclose(got, -2 * (2 - 3 * 2 * other) * 24.0, rtol=1e-12)


# ------------------------------------------------------------------ ReAct --
@pytest.mark.parametrize("percentile", [90.0, 35])
def test_react_matches_numpy(percentile):
  net, z_fit, z = _net(), _relu_features(20, seed=2), _relu_features(7, seed=3) * 2.0
  w, b = net.head
  state, got = _fit_score(detectors.make("react", net=net, percentile=percentile), z_fit, z)
  clip = np.percentile(np.float64(z_fit), percentile)   # over all entries, flattened
  np.testing.assert_allclose(state["clip"], clip, rtol=1e-6)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, _neg_energy(np.minimum(z, clip), w, b), rtol=1e-5)
  assert np.any(z > clip)   # the clip is exercised


def test_react_fits_on_the_given_arrays_only():
  det = detectors.make("react", net=_net())
  low = det.fit({"pre_logits": _relu_features(20, seed=4)}, KEY)["clip"]
  high = det.fit({"pre_logits": 10.0 * _relu_features(20, seed=4)}, KEY)["clip"]
  np.testing.assert_allclose(high, 10.0 * low, rtol=1e-6)


# -------------------------------------------------------------------- ASH --
def _ash_numpy(z, w, b, k):
  v = np.zeros(z.shape, np.float64)
  for i, row in enumerate(np.float64(z)):
    top = np.argsort(-row, kind="stable")[:k]   # ties to the lower index
    v[i, top] = row.sum() / k
  return _neg_energy(v, w, b)


def test_ash_matches_numpy_with_ties_to_the_lower_index():
  net = _net(d=8, k=3)
  w, b = net.head
  z = _relu_features(6, d=8, seed=5)
  z[0] = [0, 3, 1, 3, 3, 0, 0, 0]   # three-way tie at the top, k = 2
  det = detectors.make("ash", net=net, percentile=75)   # k = 8 - round(6.0) = 2
  _, got = _fit_score(det, None, z)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, _ash_numpy(z, w, b, 2), rtol=1e-5)
  other_tie = np.zeros(8)
  other_tie[[3, 4]] = 10.0 / 2   # breaking the tie the other way scores differently
  assert abs(_neg_energy(other_tie[None], w, b)[0] - got[0]) > 1e-3
  _, p90 = _fit_score(detectors.make("ash", net=net), None, z)   # k = 8 - round(7.2) = 1
  np.testing.assert_allclose(p90, _ash_numpy(z, w, b, 1), rtol=1e-5)


def test_kept_count_rounds_half_to_even_and_matches_the_spec():
  assert [_head.kept_count(d, p, "ash") for d, p in [(64, 90), (512, 90), (64, 85), (512, 85)]] \
      == [6, 51, 10, 77]
  assert _head.kept_count(4, 62.5, "ash") == 2   # round(2.5) = 2, not 3
  with pytest.raises(ValueError, match=r"percentile=87.5 keeps no entry of the D=4 "):
    _head.kept_count(4, 87.5, "ash")            # round(3.5) = 4: k = 0


# ------------------------------------------------------------------ SCALE --
def test_scale_matches_numpy_and_zero_rows():
  net = _net(d=8, k=3, seed=6)
  w, b = net.head
  z = _relu_features(7, d=8, seed=7)
  z[2] = 0.0
  _, got = _fit_score(detectors.make("scale", net=net), None, z)   # k = 8 - round(6.8) = 1
  z64 = np.float64(z)
  s1 = z64.sum(-1)
  s2 = np.sort(z64, axis=-1)[:, ::-1][:, :1].sum(-1)
  factor = np.exp(np.divide(s1, s2, out=np.zeros_like(s1), where=s2 > 0))
  want = _neg_energy(z64 * factor[:, None], w, b)   # the whole vector scaled, bias not
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got[2], _neg_energy(np.zeros((1, 8)), w, b)[0], rtol=1e-6)
  _, p50 = _fit_score(detectors.make("scale", net=net, percentile=50), None, z)   # k = 4
  s2 = np.sort(z64, axis=-1)[:, ::-1][:, :4].sum(-1)
  factor = np.exp(np.divide(s1, s2, out=np.zeros_like(s1), where=s2 > 0))
  np.testing.assert_allclose(p50, _neg_energy(z64 * factor[:, None], w, b), rtol=1e-5)


def test_scale_refuses_an_overflowing_factor():
  det = detectors.make("scale", net=_net(d=4, k=3), percentile=75)   # k = 1
  z = np.array([[1, 0, 0, 2], [-0.001, -1, -1, -1]], np.float32)    # s1 / s2 = 3001
  with pytest.raises(ValueError, match=r"scale: .*overflows float32 for 1 row.*row 1\)"):
    det.score(None, {"pre_logits": z}, KEY)


# ------------------------------------------------------------------- DICE --
def test_dice_matches_numpy():
  net = _net(d=7, k=3, seed=8)
  w, b = net.head
  z_fit, z = _relu_features(30, d=7, seed=9), _relu_features(8, d=7, seed=10)
  state, got = _fit_score(detectors.make("dice", net=net), z_fit, z)
  contrib = np.float64(w) * np.float64(z_fit).mean(0)[:, None]
  mask = contrib > np.percentile(contrib, 90)
  np.testing.assert_array_equal(state["mask"], mask)
  # 21 weights: the 90th percentile is the 19th smallest contribution itself (position
  # 20 * 0.9 = 18), and the strict inequality keeps only the 2 above it.
  assert mask.sum() == 2
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, _neg_energy(z, w * mask, b), rtol=1e-5)   # bias unmasked
  state50, _ = _fit_score(detectors.make("dice", net=net, percentile=50), z_fit, z)
  assert state50["mask"].sum() == 10   # position 10 of 0..20: 10 strictly above


def test_dice_refuses_a_fit_that_keeps_no_weight():
  det = detectors.make("dice", net=_net())
  with pytest.raises(ValueError, match=r"dice: the fit keeps no weight"):
    det.fit({"pre_logits": np.zeros((5, 6), np.float32)}, KEY)


# ---------------------------------------------------------- all five types --
@pytest.mark.parametrize("type_", TYPES)
def test_make_builds_and_available_lists(type_):
  assert type_ in detectors.base.available()
  det = detectors.make(type_, net=_net())
  assert det.name == type_ and det.reads == ("pre_logits",)
  assert det.fit_reads == (("pre_logits",) if type_ in FITTED else ())


@pytest.mark.parametrize("type_", TYPES)
def test_refuses_nets_without_a_usable_head(type_):
  for net in (types.SimpleNamespace(), None):
    with pytest.raises(TypeError, match=rf"{type_}: net must have .head .* has no .head"):
      detectors.make(type_, net=net)
  with pytest.raises(TypeError, match=rf"{type_}: net.head must be a pair"):
    detectors.make(type_, net=types.SimpleNamespace(head=np.zeros((6, 4))))
  w, b = _net().head
  for bad in ((w, b[:3]), (w[0], b), (w[:0], b)):
    with pytest.raises(ValueError, match=rf"{type_}: net.head must be \(W \[D, K\], b \[K\]\)"):
      detectors.make(type_, net=types.SimpleNamespace(head=bad))
  with pytest.raises(ValueError, match=rf"{type_}: net.head has non-finite"):
    detectors.make(type_, net=types.SimpleNamespace(head=(w * np.nan, b)))


@pytest.mark.parametrize("type_", [t for t in TYPES if t != "gradnorm"])
def test_refuses_bad_percentiles(type_):
  for bad in (0, 100, -5, 150.0, float("nan"), True, "90", None):
    with pytest.raises(ValueError, match=rf"{type_}: percentile must be a number in \(0, 100\)"):
      detectors.make(type_, net=_net(), percentile=bad)
  if type_ in ("ash", "scale"):   # D = 4: round(4 * 0.875) = 4 leaves no entry
    with pytest.raises(ValueError, match=rf"{type_}: percentile=87.5 keeps no entry"):
      detectors.make(type_, net=_net(d=4), percentile=87.5)


def test_gradnorm_refuses_a_single_class_head():
  with pytest.raises(ValueError, match=r"gradnorm: needs a head with K >= 2"):
    detectors.make("gradnorm", net=_net(k=1))


@pytest.mark.parametrize("type_", TYPES)
def test_refuses_bad_arrays_and_missing_state(type_):
  det = detectors.make(type_, net=_net())
  good = _relu_features(5)
  state = det.fit({"pre_logits": good}, KEY)
  infinite = good.copy()
  infinite[2, 3] = np.inf
  for bad, match in ((good[:, :5], r"pre_logits has 5 features but the head's W is \[6, K\]"),
                     (infinite, r"pre_logits contains 1 non-finite"),
                     (good[0], r"pre_logits must be a 2-D feature array")):
    with pytest.raises(ValueError, match=rf"{type_}: {match}"):
      det.score(state, {"pre_logits": bad}, KEY)
    if type_ in FITTED:
      with pytest.raises(ValueError, match=rf"{type_}: {match}"):
        det.fit({"pre_logits": bad}, KEY)
  if type_ in FITTED:
    with pytest.raises(ValueError, match=r"needs at least 1 row"):
      det.fit({"pre_logits": good[:0]}, KEY)
    with pytest.raises(TypeError, match=rf"{type_}: score needs the state returned by fit"):
      det.score(None, {"pre_logits": good}, KEY)
  with pytest.raises(ValueError, match=r"reads the array\(s\) \['pre_logits'\]"):
    det.score(state, {"logits": good}, KEY)


@pytest.mark.parametrize("type_", TYPES)
def test_batch_independent_bitwise(type_):
  det = detectors.make(type_, net=_net())
  z = _relu_features(_head.CHUNK + 6, seed=11)   # two chunks, the second padded
  state = det.fit({"pre_logits": _relu_features(20, seed=12)}, KEY)
  full = det.score(state, {"pre_logits": z}, KEY)[type_]
  rows = np.array([0, 3, _head.CHUNK - 1, _head.CHUNK + 5])
  np.testing.assert_array_equal(det.score(state, {"pre_logits": z[rows]}, KEY)[type_],
                                full[rows])
  for i in rows[:2]:
    np.testing.assert_array_equal(det.score(state, {"pre_logits": z[i:i + 1]}, KEY)[type_],
                                  full[i:i + 1])
  perm = np.random.default_rng(13).permutation(len(z))
  np.testing.assert_array_equal(det.score(state, {"pre_logits": z[perm]}, KEY)[type_],
                                full[perm])
