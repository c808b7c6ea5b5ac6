"""VRA, ViM, Residual, fDBD and NCI (SPEC-posthoc 3.5, 3.9-3.12) against float64 numpy formulas.

Every expected value is computed here in numpy, row by row where the formula is per row, from
hand-made final layers (W [D, K], b [K]) passed as `types.SimpleNamespace(head=(W, b))`.
"""

import types

import jax
import numpy as np
import pytest
from scipy import special

from dlsr_jax import detectors
from dlsr_jax.detectors import _final_layer

KEY = jax.random.key(0)
TYPES = ("vra", "vim", "residual", "fdbd", "nci")
D, K = 6, 3


def _head(seed=0, shift=4.0):
  """W [D, K], b [K] float32; `shift` raises b so that the mean max logit is positive (ViM)."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(D, K)).astype(np.float32),
          (rng.normal(size=K) + shift).astype(np.float32))


def _net(seed=0, shift=4.0):
  return types.SimpleNamespace(head=_head(seed, shift))


def _features(n, seed, relu=True):
  """Features [n, D] float32; ReLU-like (non-negative, some exact zeros) unless relu=False."""
  z = np.random.default_rng(seed).normal(size=(n, D)) * 1.5 + 0.5
  return (np.maximum(z, 0.0) if relu else z).astype(np.float32)


def _arrays(z, w, b):
  return {"pre_logits": z, "logits": (z.astype(np.float64) @ w + b).astype(np.float32)}


def _fit_score(det, train, test):
  return det.score(det.fit(train, KEY), test, KEY)[det.name]


def _residual_basis(z, u, dim):
  """R [D, D - dim] from the SVD of (z - u): right singular vectors after the first dim."""
  _, _, vt = np.linalg.svd(z - u, full_matrices=True)
  return vt[dim:].T


# -------------------------------------------------------------------- VRA --
@pytest.mark.parametrize("low, high", [(10, 90), (1.5, 60)])
def test_vra_matches_numpy(low, high):
  w, b = _head()
  train, test = _features(40, 1, relu=False), _features(15, 2, relu=False) * 1.3
  z = train.astype(np.float64).ravel()
  lo, hi = np.percentile(z, low), np.percentile(z, high)
  v = np.clip(test.astype(np.float64), lo, hi)
  want = -special.logsumexp(v @ w + b, axis=1)
  assert (test < lo).any() and (test > hi).any()   # both sides of the clip are exercised
  det = detectors.make("vra", net=_net(), low=low, high=high)
  assert det.reads == det.fit_reads == ("pre_logits",)
  got = _fit_score(det, {"pre_logits": train}, {"pre_logits": test})
  assert got.shape == (15,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=2e-6)


def test_vra_refusals():
  net = _net()
  for settings, match in [({"low": 90, "high": 10}, "low = 90 must be below high = 10"),
                          ({"low": 5, "high": 5}, "must be below"),
                          ({"low": -1}, r"low must be a finite number in \[0.0, 100.0\]"),
                          ({"high": 101}, "high must be a finite number"),
                          ({"high": True}, "high must be"), ({"low": "10"}, "low must be")]:
    with pytest.raises(ValueError, match=match):
      detectors.make("vra", net=net, **settings)
  det = detectors.make("vra", net=net)
  with pytest.raises(ValueError, match=r"vra: fit pre_logits has 5 columns, but net.head's W "
                                       r"\(6, 3\) needs 6"):
    det.fit({"pre_logits": np.ones((4, 5), np.float32)}, KEY)
  bad = np.ones((4, D), np.float32)
  bad[2, 3] = np.inf
  with pytest.raises(ValueError, match=r"vra: fit pre_logits contains 1 non-finite value\(s\) "
                                       r"in 1 row\(s\) \(first: row 2\)"):
    det.fit({"pre_logits": bad}, KEY)


# -------------------------------------------------------------------- ViM --
def _vim_numpy(w, b, train, test, dim):
  u = -np.linalg.pinv(w.T.astype(np.float64)) @ b   # the spec's -pinv(W) b, W [K, D]
  r = _residual_basis(train.astype(np.float64), u, dim)
  res = lambda z: np.linalg.norm((z.astype(np.float64) - u) @ r, axis=1)
  logits = lambda z: z.astype(np.float64) @ w + b
  alpha = logits(train).max(axis=1).mean() / res(train).mean()
  return alpha * res(test) - special.logsumexp(logits(test), axis=1), res(test)


@pytest.mark.parametrize("dim", [None, 1, 4])
def test_vim_matches_numpy(dim):
  w, b = _head()
  train, test = _features(30, 3), _features(12, 4) * 2.0
  want, _ = _vim_numpy(w, b, train, test, D // 2 if dim is None else dim)
  det = detectors.make("vim", net=_net(), dim=dim)
  assert det.reads == det.fit_reads == ("pre_logits",)
  got = _fit_score(det, {"pre_logits": train}, {"pre_logits": test})
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vim_and_residual_refusals():
  net = _net()
  for t in ("vim", "residual"):
    with pytest.raises(ValueError, match=rf"{t}: dim = 6 must satisfy 1 <= dim < D = 6 .*no "
                                         r"residual space"):
      detectors.make(t, net=net, dim=6)
    with pytest.raises(ValueError, match=rf"{t}: dim = 0 must satisfy"):
      detectors.make(t, net=net, dim=0)
    with pytest.raises(ValueError, match=rf"{t}: dim must be an int"):
      detectors.make(t, net=net, dim=2.5)
    with pytest.raises(ValueError, match=rf"{t}: dim = 0 \(None: D // 2\) must satisfy "
                                         r"1 <= dim < D = 1"):
      detectors.make(t, net=types.SimpleNamespace(head=(np.ones((1, 3)), np.zeros(3))))
    det = detectors.make(t, net=net, dim=4)
    # N = 3 rows span at most 3 directions about u: the 4th and 5th eigenvalues are both 0.
    with pytest.raises(ValueError, match=rf"{t}: the fit set does not determine a principal "
                                         r"subspace of dim = 4.*N = 3 <= dim"):
      det.fit({"pre_logits": _features(3, 5)}, KEY)
    # With b = 0 the origin u is 0; features +-2 e_0, +-2 e_1 spread equally: a tie at dim = 1.
    zero_bias = types.SimpleNamespace(head=(net.head[0], np.zeros(K, np.float32)))
    tied = 2.0 * np.concatenate([np.eye(D)[:2], -np.eye(D)[:2]])
    with pytest.raises(ValueError, match=r"eigenvalues 1 and 2 \(largest first\) of its "
                                         r"covariance about u are equal \(2, 2\)"):
      detectors.make(t, net=zero_bias, dim=1).fit({"pre_logits": tied}, KEY)
  # A negative mean max logit would flip the residual term's sign.
  low = detectors.make("vim", net=_net(shift=-20.0))
  with pytest.raises(ValueError, match="vim: alpha = mean max logit / mean residual norm = -"):
    low.fit({"pre_logits": _features(30, 3)}, KEY)


# --------------------------------------------------------------- Residual --
@pytest.mark.parametrize("dim", [None, 2])
def test_residual_matches_numpy(dim):
  w, b = _head(seed=7)
  train, test = _features(25, 8), _features(10, 9) + 1.0
  _, want = _vim_numpy(w, b, train, test, D // 2 if dim is None else dim)
  det = detectors.make("residual", net=types.SimpleNamespace(head=(w, b)), dim=dim)
  assert det.reads == det.fit_reads == ("pre_logits",)
  got = _fit_score(det, {"pre_logits": train}, {"pre_logits": test})
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- fDBD --
def _fdbd_numpy(w, logits, test, center):
  out = []
  for l, z in zip(logits.astype(np.float64), test.astype(np.float64)):
    c = int(np.argmax(l))
    total = sum(abs(l[j] - l[c]) / np.linalg.norm(w[:, j] - w[:, c].astype(np.float64))
                for j in range(K) if j != c)
    out.append(-total / np.linalg.norm(z - center))
  return np.array(out)


@pytest.mark.parametrize("distance_as_normalizer", [True, False])
def test_fdbd_matches_numpy(distance_as_normalizer):
  w, b = _head(seed=2)
  train, test = _features(20, 10), _features(11, 11)
  test[0] = 0.0                              # an all-zero feature row: ||z|| = 0 without mu
  arrays = _arrays(test, w, b)
  center = train.astype(np.float64).mean(axis=0) if distance_as_normalizer else np.zeros(D)
  det = detectors.make("fdbd", net=types.SimpleNamespace(head=(w, b)),
                       distance_as_normalizer=distance_as_normalizer)
  assert det.reads == ("logits", "pre_logits")
  assert det.fit_reads == (("pre_logits",) if distance_as_normalizer else ())
  fit_arrays = {"pre_logits": train} if distance_as_normalizer else {}
  got = det.score(det.fit(fit_arrays, KEY), arrays, KEY)["fdbd"]
  assert got.dtype == np.float32 and np.all(np.isfinite(got))
  if distance_as_normalizer:
    np.testing.assert_allclose(got, _fdbd_numpy(w, arrays["logits"], test, center), rtol=1e-5)
  else:   # the zero row's normaliser is floored at 1e-12: finite and lowest (most ID)
    np.testing.assert_allclose(got[1:], _fdbd_numpy(w, arrays["logits"][1:], test[1:], center),
                               rtol=1e-5)
    distance = -_fdbd_numpy(w, arrays["logits"][:1], np.ones((1, D)) / np.sqrt(D), center)
    np.testing.assert_allclose(got[0], -distance[0] / 1e-12, rtol=1e-5)
    assert got[0] == got.min()


def test_fdbd_refusals():
  w, b = _head()
  w_same = w.copy()
  w_same[:, 2] = w_same[:, 0]
  with pytest.raises(ValueError, match=r"fdbd: classes 0 and 2 of net.head have identical "
                                       r"weight vectors"):
    detectors.make("fdbd", net=types.SimpleNamespace(head=(w_same, b)))
  with pytest.raises(ValueError, match="fdbd: net.head has K = 1 class"):
    detectors.make("fdbd", net=types.SimpleNamespace(head=(w[:, :1], b[:1])))
  with pytest.raises(ValueError, match="fdbd: distance_as_normalizer must be a bool, got 1"):
    detectors.make("fdbd", net=_net(), distance_as_normalizer=1)
  det = detectors.make("fdbd", net=_net())
  state = det.fit({"pre_logits": _features(5, 0)}, KEY)
  with pytest.raises(ValueError, match=r"fdbd: logits has 4 columns, but net.head's W "
                                       r"\(6, 3\) needs 3"):
    det.score(state, {"logits": np.zeros((2, 4)), "pre_logits": _features(2, 1)}, KEY)


# -------------------------------------------------------------------- NCI --
@pytest.mark.parametrize("alpha", [1e-4, 0.1, 0.0])
def test_nci_matches_numpy(alpha):
  w, b = _head(seed=3)
  train, test = _features(20, 12), _features(13, 13, relu=False) * 1.7   # ||z||_1, not sum z
  arrays = _arrays(test, w, b)
  mu = train.astype(np.float64).mean(axis=0)
  want = []
  for l, z in zip(arrays["logits"], test.astype(np.float64)):
    c = int(np.argmax(l))
    want.append(-(w[:, c] @ (z - mu) / np.linalg.norm(z - mu) + alpha * np.abs(z).sum()))
  det = detectors.make("nci", net=types.SimpleNamespace(head=(w, b)), alpha=alpha)
  assert det.reads == ("logits", "pre_logits") and det.fit_reads == ("pre_logits",)
  got = _fit_score(det, {"pre_logits": train}, arrays)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # A row at mu exactly: no direction, the projection term is 0 (finite score).
  at_mu = {"pre_logits": mu[None].astype(np.float32), "logits": np.zeros((1, K), np.float32)}
  z_mu = mu.astype(np.float32)
  got_mu = det.score(det.fit({"pre_logits": np.repeat(z_mu[None], 3, 0)}, KEY), at_mu, KEY)
  np.testing.assert_allclose(got_mu["nci"], [-alpha * np.abs(z_mu).sum()], rtol=1e-6)


def test_nci_refusals():
  for alpha, match in [(-1e-4, r"alpha must be a finite number >= 0.0, got -0.0001"),
                       (float("nan"), "alpha must be"), (True, "alpha must be"),
                       ("1e-4", "alpha must be")]:
    with pytest.raises(ValueError, match=f"nci: {match}"):
      detectors.make("nci", net=_net(), alpha=alpha)


# ------------------------------------------------------------ all five --
class _NoDenseHead:
  """Like a models.wrap Net without head=: its .head property raises ValueError."""

  @property
  def head(self):
    raise ValueError("net 'wrapped' does not name its final dense layer")


def test_make_builds_each_and_available_lists_them():
  assert set(TYPES) <= set(detectors.available())
  for t in TYPES:
    det = detectors.make(t, net=_net())
    assert isinstance(det, detectors.Detector) and det.name == t
    with pytest.raises(TypeError, match=rf"{t}: net must have .head -> \(W \[D, K\], b \[K\]\)"
                                        r".*SimpleNamespace has no .head"):
      detectors.make(t, net=types.SimpleNamespace(params={}))
    with pytest.raises(ValueError, match=rf"{t}: net 'wrapped' does not name its final"):
      detectors.make(t, net=_NoDenseHead())
    with pytest.raises(TypeError, match=rf"detector '{t}': missing .*'net'"):
      detectors.make(t)
    with pytest.raises(ValueError, match=rf"{t}: net.head's b must have shape \[K\] = \(3,\)"):
      detectors.make(t, net=types.SimpleNamespace(head=(np.ones((D, K)), np.ones(4))))
    with pytest.raises(TypeError, match=rf"{t}: net.head must be a pair"):
      detectors.make(t, net=types.SimpleNamespace(head=np.ones((D, K))))


def test_scores_are_batch_independent_and_chunked_alike(monkeypatch):
  """Row i's score is the same whatever the other rows of its batch, and across chunkings."""
  w, b = _head()
  train = _arrays(_features(30, 20), w, b)
  a, other1, other2 = _features(5, 21), _features(4, 22), _features(4, 23) * 3.0
  for t in TYPES:
    det = detectors.make(t, net=_net())
    state = det.fit(train, KEY)
    first = det.score(state, _arrays(np.concatenate([a, other1]), w, b), KEY)[t]
    second = det.score(state, _arrays(np.concatenate([a, other2]), w, b), KEY)[t]
    np.testing.assert_array_equal(first[:5], second[:5])
    monkeypatch.setattr(_final_layer, "CHUNK", 4)   # 9 rows: chunks of 4, 4 and 1 (padded)
    chunked = det.score(state, _arrays(np.concatenate([a, other1]), w, b), KEY)[t]
    monkeypatch.undo()
    np.testing.assert_allclose(chunked, first, rtol=1e-6, atol=1e-6)
