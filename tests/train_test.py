import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax import lfdn, parallel, schedule, train, trainer
from dlsr_jax.checkpoint import Checkpointer

SCHED = schedule.make_schedule()
CFG = lfdn.LFDNConfig(features=8, width=16, embed_dim=8, num_blocks=2)


def _data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(4, 8))
  return (base[rng.integers(0, 4, n)] + 0.05 * rng.normal(size=(n, 8))).astype(np.float32)


def test_ema_decay_warmup():
  assert float(train.ema_decay_at(0, 0.9999)) == pytest.approx(0.1)
  assert float(train.ema_decay_at(90, 0.9999)) == pytest.approx(91 / 100)
  assert float(train.ema_decay_at(10 ** 7, 0.9999)) == pytest.approx(0.9999)


def test_loss_decreases_and_ema_tracks():
  tx = train.make_optimizer(train.OptimConfig(learning_rate=3e-3, weight_decay=0.0))
  state = train.create_train_state(CFG, tx, jax.random.key(0))
  step = jax.jit(train.make_train_step(CFG, tx, SCHED.alphas_cumprod, 0.99))
  z = jnp.asarray(_data(32))
  losses = []
  for _ in range(150):
    state, m = step(state, z, jax.random.key(1))
    losses.append(float(m["loss"]))
  assert int(state.step) == 150
  assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), (losses[:3], losses[-3:])
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                      state.params, state.ema_params))
  assert max(diff) > 0   # EMA lags the raw params


def test_sharded_step_matches_single_device():
  assert jax.device_count() == 4, "conftest sets 4 fake CPU devices"
  tx = train.make_optimizer(train.OptimConfig(learning_rate=1e-3))
  z = _data(16)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    state = trainer.init_state(CFG, tx, jax.random.key(0), mesh)
    step = trainer.make_jitted_step(CFG, tx, SCHED, 0.999, mesh, state)
    key = jax.device_put(jax.random.key(7), parallel.replicated(mesh))
    for _ in range(3):
      state, _ = step(state, parallel.host_to_global(z, mesh), key)
    results.append(jax.device_get(state))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_fit_resume_equals_uninterrupted(tmp_path):
  z = _data(48)
  optim = train.OptimConfig(learning_rate=1e-3)
  cfg2 = trainer.FitConfig(batch_size=16, num_epochs=2, seed=3, log_every_steps=2)
  logged = []
  full = trainer.fit(z, CFG, optim, SCHED, cfg2, Checkpointer(str(tmp_path / "a")),
                     write_metrics=lambda s, m: logged.append((s, m)), progress=False)
  assert int(full.step) == 6 and [s for s, _ in logged] == [2, 4, 6]
  # Same run in two parts: one epoch, then the same command asking for two.
  cfg1 = trainer.FitConfig(batch_size=16, num_epochs=1, seed=3)
  ck = Checkpointer(str(tmp_path / "b"))
  trainer.fit(z, CFG, optim, SCHED, cfg1, ck, progress=False)
  ck.close()
  ck = Checkpointer(str(tmp_path / "b"))
  assert ck.latest_step() == 3 and ck.first_epoch_step() == 3
  resumed = trainer.fit(z, CFG, optim, SCHED, cfg2, ck, progress=False)
  assert ck.first_epoch_step() == 3 and ck.latest_step() == 6
  ck.close()
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_rejects_bad_features(tmp_path):
  optim = train.OptimConfig()
  cfg = trainer.FitConfig(batch_size=16, num_epochs=1)
  bad = _data(32)
  bad[3, 1] = np.inf
  with pytest.raises(ValueError, match="NaN/inf"):
    trainer.fit(bad, CFG, optim, SCHED, cfg, None, progress=False)
  with pytest.raises(ValueError, match="fewer than one batch"):
    trainer.fit(_data(8), CFG, optim, SCHED, cfg, None, progress=False)
  with pytest.raises(ValueError, match="not divisible"):
    trainer.fit(_data(32), CFG, optim, SCHED, trainer.FitConfig(batch_size=18), None,
                progress=False)
