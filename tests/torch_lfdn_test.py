"""The PyTorch benchmark baseline computes what dlsr_jax computes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reference import torch_lfdn  # noqa: E402
from dlsr_jax import diffusion, lfdn, schedule, scoring, train  # noqa: E402

ABAR = schedule.make_schedule().alphas_cumprod
BOUNDS = (0, 4, 10, 16)


def _random_params(cfg, seed=0):
  """Random LFDN params with the init's layout, zero-initialised layers included.

  Built in numpy over `jax.eval_shape(init)`: jitting the init with its many
  RNG calls takes seconds to compile. Kernels ~ N(0, 1 / fan_in), GroupNorm
  scales ~ 1 + N(0, 0.05^2), biases ~ N(0, 0.05^2).
  """
  shapes = jax.eval_shape(lambda: lfdn.init_params(cfg, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    z = rng.normal(size=x.shape).astype(np.float32)
    if name == "kernel":
      return z / np.sqrt(x.shape[0])
    return 1.0 + 0.05 * z if name == "scale" else 0.05 * z

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _torch_model(cfg, params):
  model = torch_lfdn.TorchLFDN.from_config(cfg)
  return torch_lfdn.load_flax_params(model, params).eval()


def _cfg(**kw):
  return lfdn.LFDNConfig(features=16, width=32, embed_dim=16, num_blocks=2, **kw)


@pytest.mark.parametrize("use_time", [True, False])
def test_forward_matches_flax(use_time):
  cfg = _cfg(use_time_embedding=use_time)
  p = _random_params(cfg)
  x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
  t = np.arange(8, dtype=np.int32) * 11
  want = jax.jit(lfdn.LFDN(cfg).apply)({"params": p}, x, t if use_time else None)
  with torch.inference_mode():
    got = _torch_model(cfg, p)(torch.from_numpy(x), torch.from_numpy(t) if use_time else None)
  np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _forward_noise(key, ids, draws, c):
  """[draws, B, c]: the forward noise dlsr_jax draws for example i and draw d (make_score_fn)."""
  keys = scoring.sample_keys(key, ids)
  eps = []
  for d in range(draws):
    split = jax.vmap(jax.random.split)(jax.vmap(lambda kk: jax.random.fold_in(kk, d))(keys))
    eps.append(jax.vmap(lambda kk: jax.random.normal(kk, (c,)))(split[:, 0]))
  return jnp.stack(eps)


@pytest.mark.parametrize("stride,release_compat,draws",
                         [(1, False, 1), (2, False, 2), (1, True, 2)])
def test_deterministic_scores_match_dlsr_jax(stride, release_compat, draws):
  cfg = _cfg()
  p = _random_params(cfg, seed=3)
  z0 = np.random.default_rng(1).normal(size=(6, 16)).astype(np.float32)
  ids, ks, key = np.arange(6, dtype=np.int32), [3, 7], jax.random.key(5)
  ddim = diffusion.DDIMConfig(stride=stride, eta=0.0, release_compat=release_compat)
  score_cfg = scoring.ScoreConfig(boundaries=BOUNDS, ddim=ddim, num_draws=draws,
                                  mfsim_skip_first=release_compat)
  fn = jax.jit(scoring.make_score_fn(train.lfdn_apply_fn(cfg), ABAR, score_cfg))
  want = fn(p, z0, ids, jnp.asarray(ks, jnp.int32), key)

  eps = _forward_noise(key, ids, draws, 16)
  tcfg = torch_lfdn.TorchScoreConfig(boundaries=BOUNDS, stride=stride, eta=0.0,
                                     release_compat=release_compat, num_draws=draws,
                                     mfsim_skip_first=release_compat)
  with torch.inference_mode():
    got = torch_lfdn.score(_torch_model(cfg, p), torch.from_numpy(z0), ks, ABAR, tcfg,
                           eps=torch.from_numpy(np.array(eps)))
  for name in ("mse", "mfsim"):
    assert got[name].shape == (2, 6)
    np.testing.assert_allclose(got[name].numpy(), np.asarray(want[name]), rtol=1e-4, atol=1e-5)


def test_train_step_matches_optax_adamw_and_ema():
  """Same t and noise: the torch AdamW + EMA step equals the optax one."""
  cfg = _cfg()
  p = _random_params(cfg, seed=7)
  rng = np.random.default_rng(2)
  z0 = rng.normal(size=(8, 16)).astype(np.float32)
  t = rng.integers(0, len(ABAR), size=8).astype(np.int32)
  noise = rng.normal(size=(8, 16)).astype(np.float32)
  ocfg = train.OptimConfig(learning_rate=1e-2, weight_decay=0.1, ema_decay=0.9)
  apply = train.lfdn_apply_fn(cfg)

  def loss_fn(params):
    z_t = diffusion.q_sample(z0, t, noise, jnp.asarray(ABAR))
    return jnp.mean(jnp.square(apply(params, z_t, t) - z0))

  tx = train.make_optimizer(ocfg)

  @jax.jit
  def jax_step(params, opt_state, ema, step):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda a, u: a + u, params, updates)
    d = train.ema_decay_at(step, ocfg.ema_decay)
    ema = jax.tree.map(lambda e, q: d * e + (1.0 - d) * q, ema, params)
    grad_norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
    return params, opt_state, ema, loss, grad_norm

  opt_state, params, ema = jax.jit(tx.init)(p), p, p
  trainer = torch_lfdn.TorchTrainer(_torch_model(cfg, p), ABAR, ocfg.learning_rate,
                                    ocfg.weight_decay, ema_decay=ocfg.ema_decay)
  for step in range(2):
    params, opt_state, ema, loss, grad_norm = jax_step(params, opt_state, ema, step)
    got_loss, got_norm = trainer.step(torch.from_numpy(z0), torch.from_numpy(t),
                                      torch.from_numpy(noise))
    np.testing.assert_allclose(got_loss.item(), float(loss), rtol=1e-5)
    np.testing.assert_allclose(got_norm.item(), float(grad_norm), rtol=1e-4)

  want_model = _torch_model(cfg, params)
  want_ema = _torch_model(cfg, ema)
  got = dict(trainer.model.named_parameters())
  for name, w in want_model.named_parameters():
    np.testing.assert_allclose(got[name].detach().numpy(), w.detach().numpy(),
                               rtol=1e-4, atol=2e-5, err_msg=name)
  names = [n for n, _ in trainer.model.named_parameters()]
  for name, e, (_, w) in zip(names, trainer.ema, want_ema.named_parameters()):
    np.testing.assert_allclose(e.numpy(), w.detach().numpy(), rtol=1e-4, atol=2e-5,
                               err_msg=name)


def test_stochastic_scorer_runs_and_differs_per_draw():
  cfg = _cfg()
  model = _torch_model(cfg, _random_params(cfg))
  tcfg = torch_lfdn.TorchScoreConfig(boundaries=BOUNDS, eta=1.0)
  z0 = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
  with torch.inference_mode():
    a = torch_lfdn.score(model, z0, [2], ABAR, tcfg, gen=torch.Generator().manual_seed(1))
    b = torch_lfdn.score(model, z0, [2], ABAR, tcfg, gen=torch.Generator().manual_seed(2))
  assert a["mse"].shape == (1, 4) and torch.all(torch.isfinite(a["mfsim"]))
  assert not torch.allclose(a["mse"], b["mse"])
