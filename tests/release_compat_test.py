"""`release_compat` equals the release's arithmetic (SPEC 1.5), checked against
`tests/release_reference.py`, a numpy implementation that shares no code with dlsr_jax.

Same LFDN weights, same features, same noise (the reference is handed the draws
dlsr_jax makes): reconstructions and scores agree to float32 round-off.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import release_reference as ref
from dlsr_jax import diffusion, lfdn, schedule, scoring, train

ABAR = schedule.make_schedule().alphas_cumprod
BOUNDS = (0, 4, 10, 16)
C = 16


def _params(seed=0):
  cfg = lfdn.LFDNConfig(features=C, width=32, embed_dim=16, num_blocks=2)
  p = lfdn.init_params(cfg, jax.random.key(seed))
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  # Perturb every leaf (the zero-initialised output layers too) so the net is not trivial.
  p = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape)
                                for a, k in zip(leaves, keys)])
  return cfg, jax.tree.map(np.asarray, p)


def _noise(key, ids, ks):
  """The forward noise and the per-step noise dlsr_jax draws (make_score_fn, one draw)."""
  keys = scoring.sample_keys(key, jnp.asarray(ids))
  split = jax.vmap(jax.random.split)(jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(keys))
  eps = np.asarray(jax.vmap(lambda kk: jax.random.normal(kk, (C,)))(split[:, 0]))
  step_keys = split[:, 1]
  steps = {t: np.asarray(jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, t),
                                                                (C,)))(step_keys))
           for t in range(1, max(ks) + 1)}
  return eps, step_keys, steps


def test_numpy_lfdn_equals_flax_lfdn():
  cfg, p = _params()
  z = np.random.default_rng(0).normal(size=(5, C)).astype(np.float32)
  t = np.array([0, 1, 3, 10, 99])
  want = lfdn.LFDN(cfg).apply({"params": p}, z, t)
  np.testing.assert_allclose(ref.lfdn_forward(p, z, t), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_release_compat_reconstructions_and_scores_equal_the_reference(eta):
  cfg, p = _params(seed=3)
  ks = [3, 5, 10]
  n = 7
  z0 = np.random.default_rng(1).normal(size=(n, C)).astype(np.float32)
  ids, key = np.arange(n, dtype=np.int32) + 100, jax.random.key(11)
  eps, step_keys, steps = _noise(key, ids, ks)
  apply_fn = train.lfdn_apply_fn(cfg)
  ddim = diffusion.DDIMConfig(stride=1, eta=eta, release_compat=True)
  score_cfg = scoring.ScoreConfig(boundaries=BOUNDS, ddim=ddim, mfsim_skip_first=True)
  got = jax.jit(scoring.make_score_fn(apply_fn, ABAR, score_cfg))(
      p, z0, ids, jnp.asarray(ks, jnp.int32), key)
  recon = jax.jit(diffusion.ddim_reconstruct, static_argnums=(0, 7))
  for j, k in enumerate(ks):
    want = ref.release_reconstruct(lambda z, t: ref.lfdn_forward(p, z, t), z0, k, eps, ABAR,
                                   eta, steps)
    ours = np.asarray(recon(apply_fn, p, z0, k, eps, step_keys, ABAR, ddim))
    scale = np.abs(want).max()
    assert np.abs(ours - want).max() <= 2e-6 * scale, (k, np.abs(ours - want).max(), scale)
    np.testing.assert_allclose(got["mse"][j], ref.mse(z0, want), rtol=2e-5)
    np.testing.assert_allclose(got["mfsim"][j], ref.mfsim(z0, want, BOUNDS, True),
                               rtol=2e-5, atol=1e-6)
    # The release's reconstruction still carries noise: far from z0, unlike a clean denoiser.
    assert np.all(ref.mse(z0, want) > 0)


def test_release_compat_differs_from_paper_mode_and_keeps_noise():
  """With a perfect denoiser (x0_hat = z0) paper mode is analytic; the release is not z0."""
  z0 = jnp.asarray(np.random.default_rng(2).normal(size=(3, C)).astype(np.float32))
  oracle = lambda params, z, t: z0
  eps = jax.random.normal(jax.random.key(0), z0.shape)
  keys = jax.random.split(jax.random.key(1), 3)
  for k in (2, 4, 9):
    compat = diffusion.ddim_reconstruct(oracle, None, z0, k, eps, keys, ABAR,
                                        diffusion.DDIMConfig(eta=0.0, release_compat=True))
    want = ref.release_reconstruct(lambda z, t: np.asarray(z0), np.asarray(z0), k,
                                   np.asarray(eps), ABAR, 0.0)
    np.testing.assert_allclose(compat, want, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(compat - z0).max()) > 1e-3
    paper = diffusion.ddim_reconstruct(oracle, None, z0, k, eps, keys, ABAR,
                                       diffusion.DDIMConfig(eta=0.0))
    np.testing.assert_allclose(paper, np.sqrt(ABAR[0]) * z0 + np.sqrt(1 - ABAR[0]) * eps,
                               rtol=1e-5, atol=1e-6)


def test_release_compat_needs_stride_one():
  with pytest.raises(ValueError, match="stride 1"):
    diffusion.DDIMConfig(stride=2, release_compat=True)
