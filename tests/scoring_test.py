import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax import diffusion, lfdn, schedule, scoring, train

ABAR = schedule.make_schedule().alphas_cumprod
BOUNDS = (0, 4, 10, 16)


def _random_lfdn(features=16, seed=0):
  cfg = lfdn.LFDNConfig(features=features, width=32, embed_dim=16, num_blocks=2)
  p = lfdn.init_params(cfg, jax.random.key(seed))
  leaves, tree = jax.tree.flatten(p)
  ks = jax.random.split(jax.random.key(seed + 1), len(leaves))
  p = jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, ks)])
  return train.lfdn_apply_fn(cfg), p


def _features(n=64, c=16, seed=0):
  return np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32)


def _reference_scores(apply_fn, params, z0, ids, k, key, eta=1.0):
  """A plain Python-loop DDIM, written independently of diffusion.ddim_reconstruct."""
  out_mse, out_mfs = [], []
  for i in range(z0.shape[0]):
    kk = jax.random.fold_in(jax.random.fold_in(key, int(ids[i])), 0)
    k_eps, k_steps = jax.random.split(kk)
    eps = jax.random.normal(k_eps, (z0.shape[1],))
    x0 = z0[i:i + 1]
    z = np.sqrt(ABAR[k]) * x0 + np.sqrt(1 - ABAR[k]) * np.asarray(eps)[None]
    t = k
    while t > 0:
      tp = max(t - 1, 0)
      xh = np.asarray(apply_fn(params, jnp.asarray(z), jnp.array([t])))
      at, ap = ABAR[t], ABAR[tp]
      eh = (z - np.sqrt(at) * xh) / np.sqrt(1 - at)
      sig = eta * np.sqrt((1 - ap) / (1 - at)) * np.sqrt(1 - at / ap)
      noise = np.asarray(jax.random.normal(jax.random.fold_in(k_steps, t), (z0.shape[1],)))
      z = np.sqrt(ap) * xh + np.sqrt(max(1 - ap - sig ** 2, 0)) * eh + sig * noise[None]
      t = tp
    out_mse.append(np.sum((x0 - z) ** 2))
    cos = [np.sum(x0[0, a:b] * z[0, a:b]) / (np.linalg.norm(x0[0, a:b]) * np.linalg.norm(z[0, a:b]))
           for a, b in zip(BOUNDS[:-1], BOUNDS[1:])]
    out_mfs.append(-np.mean(cos))
  return np.array(out_mse), np.array(out_mfs)


def test_vmapped_multi_k_equals_python_loop_over_k():
  apply_fn, p = _random_lfdn()
  z = _features(6)
  ks = [1, 3, 7]
  fn = jax.jit(scoring.make_score_fn(apply_fn, ABAR, scoring.ScoreConfig(boundaries=BOUNDS)))
  key = jax.random.key(11)
  got = fn(p, z, np.arange(6), jnp.asarray(ks), key)
  assert got["mse"].shape == (3, 6)
  for j, k in enumerate(ks):
    mse, mfs = _reference_scores(apply_fn, p, z, np.arange(6), k, key)
    np.testing.assert_allclose(got["mse"][j], mse, rtol=1e-4)
    np.testing.assert_allclose(got["mfsim"][j], mfs, rtol=1e-4, atol=1e-6)


def test_scores_do_not_depend_on_batch_size_and_one_compile():
  apply_fn, p = _random_lfdn()
  z = _features(64)
  raw = scoring.make_score_fn(apply_fn, ABAR, scoring.ScoreConfig(boundaries=BOUNDS))
  traces = []
  fn = jax.jit(lambda *args: (traces.append(1), raw(*args))[1])
  key = jax.random.key(3)
  a = scoring.score_dataset(fn, p, z, [3, 5, 10], key, batch_size=7)
  b = scoring.score_dataset(fn, p, z, [3, 5, 10], key, batch_size=64)
  # Noise is keyed on (seed, example id): the draws are bitwise identical whatever the
  # batching. What remains is float32 round-off: XLA's CPU kernels give different last
  # bits for 7 and 64 rows even for a plain `x @ w` (measured ~1e-7 relative here).
  ids = np.arange(64)
  draw = lambda i: jax.vmap(lambda kk: jax.random.normal(kk, (16,)))(
      scoring.sample_keys(key, jnp.asarray(i)))
  np.testing.assert_array_equal(np.concatenate([draw(ids[s:s + 7]) for s in range(0, 64, 7)]),
                                draw(ids))
  for t in ("mse", "mfsim"):
    np.testing.assert_allclose(a[t], b[t], rtol=1e-5, atol=1e-6)
  # Other k values of the same count reuse the compiled function.
  n_before = len(traces)
  scoring.score_dataset(fn, p, z, [4, 6, 9], key, batch_size=64)
  assert len(traces) == n_before


def test_padding_and_ids_make_scores_order_free():
  apply_fn, p = _random_lfdn()
  z = _features(10)
  fn = jax.jit(scoring.make_score_fn(apply_fn, ABAR, scoring.ScoreConfig(boundaries=BOUNDS)))
  key = jax.random.key(5)
  full = scoring.score_dataset(fn, p, z, [3], key, batch_size=4)
  perm = np.random.default_rng(0).permutation(10)
  shuffled = scoring.score_dataset(fn, p, z[perm], [3], key, batch_size=3, sample_ids=perm)
  np.testing.assert_allclose(shuffled["mse"][0], full["mse"][0][perm], rtol=1e-5)


def test_perfect_denoiser_deterministic_ddim_is_analytic():
  z0 = jnp.asarray(_features(3, 16))
  oracle = lambda params, z, t: z0
  eps = jax.random.normal(jax.random.key(0), z0.shape)
  keys = jax.random.split(jax.random.key(1), 3)
  for k in (1, 4, 9):
    rec = diffusion.ddim_reconstruct(oracle, None, z0, k, eps, keys, ABAR,
                                     diffusion.DDIMConfig(eta=0.0))
    want = np.sqrt(ABAR[0]) * z0 + np.sqrt(1 - ABAR[0]) * eps   # ends on level 0
    np.testing.assert_allclose(rec, want, rtol=1e-5, atol=1e-6)


def test_stride_and_eta_zero_is_deterministic():
  apply_fn, p = _random_lfdn()
  z = _features(8)
  cfg = scoring.ScoreConfig(boundaries=BOUNDS, ddim=diffusion.DDIMConfig(stride=2, eta=0.0))
  fn = jax.jit(scoring.make_score_fn(apply_fn, ABAR, cfg))
  a = fn(p, z, np.arange(8), jnp.array([5]), jax.random.key(0))
  b = fn(p, z, np.arange(8), jnp.array([5]), jax.random.key(0))
  np.testing.assert_array_equal(a["mse"], b["mse"])
  c = fn(p, z, np.arange(8), jnp.array([5]), jax.random.key(1))
  assert not np.allclose(a["mse"], c["mse"])   # forward noise still depends on the key


def test_mse_and_mfsim_by_hand():
  z0 = jnp.array([[1.0, 0.0, 3.0, 4.0]])
  zr = jnp.array([[0.0, 1.0, 3.0, 4.0]])
  np.testing.assert_allclose(scoring.mse_score(z0, zr), [2.0])
  # layer 1: cos(e1, e2) = 0; layer 2: identical -> 1. MFsim = -(0 + 1) / 2.
  np.testing.assert_allclose(scoring.mfsim_score(z0, zr, (0, 2, 4)), [-0.5], atol=1e-7)
  np.testing.assert_allclose(scoring.mfsim_score(z0, zr, (0, 2, 4), skip_first=True), [-1.0],
                             atol=1e-7)


def test_likelihood_ratio_and_validation():
  a, b = np.array([3.0, 1.0]), np.array([1.0, 2.0])
  np.testing.assert_array_equal(scoring.likelihood_ratio(a, b), [2.0, -1.0])
  np.testing.assert_array_equal(scoring.likelihood_ratio(a, b, "final_minus_first"), [-2.0, 1.0])
  with pytest.raises(ValueError, match="orientation"):
    scoring.likelihood_ratio(a, b, "up")
  with pytest.raises(ValueError, match="1..99"):
    scoring.validate_ks([0, 3], 100)
  with pytest.raises(ValueError, match="non-empty"):
    scoring.validate_ks([], 100)
  with pytest.raises(ValueError, match="boundaries"):
    scoring.ScoreConfig(boundaries=(0, 5, 5))
  apply_fn, p = _random_lfdn()
  fn = jax.jit(scoring.make_score_fn(apply_fn, ABAR, scoring.ScoreConfig(boundaries=BOUNDS)))
  bad = _features(4)
  bad[1, 2] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    scoring.score_dataset(fn, p, bad, [3], jax.random.key(0))
  with pytest.raises(ValueError, match="non-empty"):
    scoring.score_dataset(fn, p, np.zeros((0, 16), np.float32), [3], jax.random.key(0))


def test_per_k_strategy_gives_the_same_scores():
  apply_fn, p = _random_lfdn()
  z = _features(20)
  fn = jax.jit(scoring.make_score_fn(apply_fn, ABAR, scoring.ScoreConfig(boundaries=BOUNDS)))
  key = jax.random.key(9)
  a = scoring.score_dataset(fn, p, z, [2, 5, 9], key, batch_size=8)
  b = scoring.score_dataset(fn, p, z, [2, 5, 9], key, batch_size=8, k_strategy="per_k")
  for t in ("mse", "mfsim"):
    np.testing.assert_allclose(a[t], b[t], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="k_strategy"):
    scoring.score_dataset(fn, p, z, [2], key, k_strategy="loop")
