"""Mahalanobis and KNN feature baselines against sklearn / numpy references."""

import dataclasses

import jax
import numpy as np
import pytest
from sklearn import covariance

from dlsr_jax import baselines
from dlsr_jax.evaluation import metrics


def _correlated(rng, n, c, scale=1.0):
  a = rng.normal(size=(c, c))
  return (rng.normal(size=(n, c)) @ a) * scale + rng.normal(size=(c,))


# ------------------------------------------------------------ Mahalanobis --
def test_mahalanobis_matches_sklearn_empirical_covariance():
  rng = np.random.default_rng(0)
  train, test = _correlated(rng, 300, 6), _correlated(rng, 40, 6, scale=1.5)
  model = baselines.fit_mahalanobis(train)
  ref = covariance.EmpiricalCovariance().fit(train)
  np.testing.assert_allclose(model.mean, ref.location_, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(baselines.mahalanobis_score(model, test), ref.mahalanobis(test),
                             rtol=1e-4)
  assert model.shrinkage == 0.0


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0])
def test_mahalanobis_shrinkage_matches_sklearn_shrunk_covariance(alpha):
  rng = np.random.default_rng(1)
  train, test = _correlated(rng, 200, 5), _correlated(rng, 30, 5)
  model = baselines.fit_mahalanobis(train, shrinkage=alpha)
  ref = covariance.ShrunkCovariance(shrinkage=alpha).fit(train)
  np.testing.assert_allclose(model.precision, ref.precision_, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(baselines.mahalanobis_score(model, test), ref.mahalanobis(test),
                             rtol=1e-4)


def test_mahalanobis_ledoit_wolf_matches_sklearn():
  rng = np.random.default_rng(2)
  train, test = _correlated(rng, 60, 10), _correlated(rng, 20, 10)
  model = baselines.fit_mahalanobis(train, shrinkage="ledoit_wolf")
  ref = covariance.LedoitWolf().fit(train)
  assert model.shrinkage == pytest.approx(ref.shrinkage_)
  assert 0.0 < model.shrinkage < 1.0
  np.testing.assert_allclose(baselines.mahalanobis_score(model, test), ref.mahalanobis(test),
                             rtol=1e-4)


def test_mahalanobis_hand_computed_2d():
  # mean (0, 0), biased covariance diag(4, 1).
  train = np.array([[2.0, 1.0], [-2.0, 1.0], [2.0, -1.0], [-2.0, -1.0]])
  model = baselines.fit_mahalanobis(train)
  np.testing.assert_allclose(model.precision, [[0.25, 0.0], [0.0, 1.0]], atol=1e-7)
  got = baselines.mahalanobis_score(model, [[2.0, 0.0], [0.0, 3.0], [2.0, 2.0], [0.0, 0.0]])
  np.testing.assert_allclose(got, [1.0, 9.0, 5.0, 0.0], atol=1e-6)
  # alpha = 0.5: tr(S)/C = 2.5 -> diag(0.5*4 + 1.25, 0.5*1 + 1.25) = diag(3.25, 1.75).
  shrunk = baselines.fit_mahalanobis(train, shrinkage=0.5)
  np.testing.assert_allclose(baselines.mahalanobis_score(shrunk, [[1.0, 1.0]]),
                             [1 / 3.25 + 1 / 1.75], rtol=1e-6)


def test_mahalanobis_singular_covariance_needs_shrinkage():
  rng = np.random.default_rng(3)
  train = rng.normal(size=(5, 8))   # N <= C: rank <= 4
  with pytest.raises(ValueError, match=r"singular.*N = 5 <= C = 8.*shrinkage"):
    baselines.fit_mahalanobis(train)
  dup = np.concatenate([train[:, :3], train[:, :1]], axis=1)   # N > C but a repeated column
  with pytest.raises(ValueError, match="rank 3 < C = 4"):
    baselines.fit_mahalanobis(np.concatenate([dup, dup + 1.0]))
  model = baselines.fit_mahalanobis(train, shrinkage=0.1)
  assert np.all(np.isfinite(baselines.mahalanobis_score(model, rng.normal(size=(3, 8)))))
  with pytest.raises(ValueError, match="zero variance"):
    baselines.fit_mahalanobis(np.ones((10, 3)), shrinkage=0.5)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4,)), r"2-D feature array \[N, C\]"),
    (np.zeros((1, 3)), "at least 2 row"),
    (np.zeros((5, 0)), "no feature columns"),
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, np.inf]]), "2 non-finite value.*first: row 1"),
    ([["a", "b"], ["c", "d"]], "numeric feature array"),
])
def test_mahalanobis_fit_input_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    baselines.fit_mahalanobis(bad, shrinkage=0.1)


@pytest.mark.parametrize("shrinkage", [-0.1, 1.5, "oas", True, None])
def test_mahalanobis_bad_shrinkage(shrinkage):
  with pytest.raises(ValueError, match="shrinkage must be a float in"):
    baselines.fit_mahalanobis(np.random.default_rng(0).normal(size=(20, 3)), shrinkage)


def test_mahalanobis_score_errors():
  model = baselines.fit_mahalanobis(np.random.default_rng(0).normal(size=(20, 3)))
  with pytest.raises(ValueError, match="has 4 features but the model was fitted on 3"):
    baselines.mahalanobis_score(model, np.zeros((2, 4)))
  with pytest.raises(ValueError, match="non-finite"):
    baselines.mahalanobis_score(model, np.full((2, 3), np.nan))
  with pytest.raises(ValueError, match="chunk_size must be a positive int"):
    baselines.mahalanobis_score(model, np.zeros((2, 3)), chunk_size=0)
  with pytest.raises(TypeError, match="MahalanobisModel"):
    baselines.mahalanobis_score(baselines.fit_knn(np.ones((3, 3)), k=1), np.zeros((2, 3)))


def test_models_are_frozen_pytrees():
  model = baselines.fit_mahalanobis(np.random.default_rng(0).normal(size=(20, 3)), 0.2)
  leaves = jax.tree_util.tree_leaves(model)
  assert [x.shape for x in leaves] == [(3,), (3, 3)]
  with pytest.raises(dataclasses.FrozenInstanceError):
    model.mean = None
  moved = jax.tree_util.tree_map(lambda x: x * 1.0, model)
  assert moved.shrinkage == 0.2
  knn = baselines.fit_knn(np.ones((4, 2)), k=3)
  assert [x.shape for x in jax.tree_util.tree_leaves(knn)] == [(4, 2)] and knn.k == 3


# -------------------------------------------------------------------- KNN --
def _knn_reference(train, test, k):
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  qn = test / np.linalg.norm(test, axis=1, keepdims=True)
  sims = np.sort(qn @ tn.T, axis=1)[:, ::-1]
  return -sims[:, k - 1]


@pytest.mark.parametrize("k", [1, 7, 300])
def test_knn_matches_brute_force(k):
  rng = np.random.default_rng(4)
  train, test = rng.normal(size=(300, 16)), rng.normal(size=(50, 16)) + 0.3
  model = baselines.fit_knn(train, k=k)
  np.testing.assert_allclose(np.linalg.norm(model.train, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(baselines.knn_score(model, test), _knn_reference(train, test, k),
                             atol=1e-5)


def test_knn_hand_case_kth_neighbour():
  angles = np.deg2rad([0.0, 30.0, 60.0, 90.0])
  lengths = np.array([2.0, 0.5, 3.0, 1.0])   # the norm must not matter
  train = lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  query = np.array([[5.0, 0.0], [0.0, 0.1]])
  expect = {1: [-1.0, -1.0], 2: [-np.cos(np.pi / 6)] * 2, 3: [-0.5, -0.5], 4: [0.0, 0.0]}
  for k, want in expect.items():
    got = baselines.knn_score(baselines.fit_knn(train, k=k), query)
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"k={k}")


def test_knn_counts_tied_neighbours_separately():
  train = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])   # two identical directions
  got = [baselines.knn_score(baselines.fit_knn(train, k=k), [[2.0, 0.0]])[0] for k in (1, 2, 3)]
  np.testing.assert_allclose(got, [-1.0, -1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("k,match", [
    (0, "k must be a positive int"), (2.5, "k must be a positive int"),
    (True, "k must be a positive int"), (11, "k = 11 exceeds .* N = 10"),
])
def test_knn_bad_k(k, match):
  with pytest.raises(ValueError, match=match):
    baselines.fit_knn(np.random.default_rng(0).normal(size=(10, 3)), k=k)


def test_knn_score_errors():
  model = baselines.fit_knn(np.random.default_rng(0).normal(size=(10, 3)), k=2)
  with pytest.raises(ValueError, match="has 2 features but the model was fitted on 3"):
    baselines.knn_score(model, np.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"2-D feature array"):
    baselines.knn_score(model, np.zeros((2, 3, 1)))
  with pytest.raises(ValueError, match="non-finite"):
    baselines.knn_score(model, [[0.0, np.inf, 1.0]])
  with pytest.raises(ValueError, match="at least 1 row"):
    baselines.knn_score(model, np.zeros((0, 3)))
  with pytest.raises(TypeError, match="KNNModel"):
    baselines.knn_score(object(), np.zeros((1, 3)))


# ------------------------------------------------------------ both --------
def test_far_points_score_higher_than_held_out_id():
  # ID: a correlated Gaussian blob around 8 e0; OOD: the same blob moved to 8 e1, i.e.
  # far away and in another direction (what cosine KNN sees).
  rng = np.random.default_rng(5)
  c = 8
  mix = rng.normal(size=(c, c)) * 0.2 + np.eye(c)
  blob = lambda n, centre: rng.normal(size=(n, c)) @ mix + 8.0 * np.eye(c)[centre]
  id_train, id_test, ood = blob(500, 0), blob(200, 0), blob(200, 1)
  maha = baselines.fit_mahalanobis(id_train)
  knn = baselines.fit_knn(id_train, k=10)
  for name, score in (("mahalanobis", lambda z: baselines.mahalanobis_score(maha, z)),
                      ("knn", lambda z: baselines.knn_score(knn, z))):
    assert metrics.auroc(score(id_test), score(ood)) > 0.99, name


def test_chunking_does_not_change_scores():
  rng = np.random.default_rng(6)
  train, test = rng.normal(size=(120, 5)), rng.normal(size=(23, 5))
  maha = baselines.fit_mahalanobis(train, shrinkage=0.1)
  knn = baselines.fit_knn(train, k=5)
  for fn, model in ((baselines.mahalanobis_score, maha), (baselines.knn_score, knn)):
    whole = fn(model, test, chunk_size=1000)
    assert whole.shape == (23,) and whole.dtype == np.float32
    for chunk in (1, 7, 23):
      np.testing.assert_allclose(fn(model, test, chunk_size=chunk), whole, rtol=1e-6,
                                 atol=1e-6)
