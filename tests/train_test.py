import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax import lfdn, parallel, schedule, scoring, train, trainer
from dlsr_jax.training.checkpoint import Checkpointer

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
  cfg2 = trainer.FitConfig(batch_size=16, num_epochs=2, seed=3, log_every_steps=2,
                           lr_reference_steps=0)
  logged = []
  full = trainer.fit(z, CFG, optim, SCHED, cfg2, Checkpointer(str(tmp_path / "a")),
                     write_metrics=lambda s, m: logged.append((s, m)), progress=False)
  assert int(full.step) == 6 and [s for s, _ in logged] == [2, 4, 6]
  # Same run in two parts: one epoch, then the same command asking for two.
  cfg1 = trainer.FitConfig(batch_size=16, num_epochs=1, seed=3, lr_reference_steps=0)
  ck = Checkpointer(str(tmp_path / "b"))
  trainer.fit(z, CFG, optim, SCHED, cfg1, ck, progress=False)
  ck.close()
  ck = Checkpointer(str(tmp_path / "b"))
  assert ck.latest_step() == 3 and ck.reference_steps() == [3]
  resumed = trainer.fit(z, CFG, optim, SCHED, cfg2, ck, progress=False)
  assert ck.reference_steps() == [3] and ck.latest_step() == 6
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


def test_sharded_scorer_matches_single_device():
  assert jax.device_count() == 4, "conftest sets 4 fake CPU devices"
  apply_fn = train.lfdn_apply_fn(CFG)
  tx = train.make_optimizer(train.OptimConfig())
  params = train.create_train_state(CFG, tx, jax.random.key(5)).params
  score_fn = scoring.make_score_fn(apply_fn, SCHED.alphas_cumprod,
                                   scoring.ScoreConfig(boundaries=(0, 3, 8)))
  z, ks, key = _data(20, seed=1), [2, 3], jax.random.key(9)
  single = scoring.score_dataset(jax.jit(score_fn), params, z, ks, key, batch_size=8)
  mesh = parallel.make_mesh()
  sharded_fn = parallel.shard_score_fn(score_fn, mesh)
  sharded = scoring.score_dataset(sharded_fn, params, z, ks, key, batch_size=8)
  for t in scoring.SCORE_TYPES:
    assert sharded[t].shape == (2, 20)
    np.testing.assert_allclose(sharded[t], single[t], rtol=1e-5, atol=1e-6)
  out = sharded_fn(params, z[:8], np.arange(8), np.asarray(ks, np.int32), key)
  assert out["mse"].sharding.is_fully_replicated and len(out["mse"].sharding.device_set) == 4
  with pytest.raises(ValueError, match="not divisible"):
    sharded_fn(params, z[:6], np.arange(6), np.asarray(ks, np.int32), key)


def test_local_rows_follow_the_mesh_device_order():
  mesh = parallel.make_mesh(jax.devices()[::-1])   # one process: every row, in order
  np.testing.assert_array_equal(parallel.local_rows(mesh, 8), np.arange(8))
  np.testing.assert_array_equal(parallel.local_rows(parallel.make_mesh(jax.devices()[:1]), 4),
                                np.arange(4))
  with pytest.raises(ValueError, match="not divisible"):
    parallel.local_rows(mesh, 6)


def test_checkpoint_schedule():
  cfg = trainer.FitConfig(num_epochs=4, checkpoint_every_epochs=2, checkpoint_every_steps=5)
  saved = [s for s in range(1, 13) if trainer._is_checkpoint_step(s, 3, cfg)]
  assert saved == [3, 5, 6, 10, 12]   # epoch 1 (LR), every 5 steps, every 2 epochs, last
  with pytest.raises(ValueError, match="checkpoint_every_steps"):
    trainer.FitConfig(checkpoint_every_steps=-1)


def test_sigterm_checkpoints_mid_epoch_and_resume_is_exact(tmp_path):
  """SIGTERM at step 4 (mid-epoch 2): checkpoint at 4, `Preempted`, old handler back."""
  z, optim = _data(48), train.OptimConfig(learning_rate=1e-3)
  cfg = trainer.FitConfig(batch_size=16, num_epochs=3, seed=3, log_every_steps=1,
                          lr_reference_steps=0)
  mesh = parallel.make_mesh(jax.devices()[:1])
  full = trainer.fit(z, CFG, optim, SCHED, cfg, None, mesh=mesh, progress=False)

  def kill_at_4(step, _):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)

  seen = []
  old = signal.signal(signal.SIGTERM, lambda *_: seen.append("old handler"))
  try:
    ck = Checkpointer(str(tmp_path))
    with pytest.raises(trainer.Preempted, match="step 4") as err:
      trainer.fit(z, CFG, optim, SCHED, cfg, ck, mesh=mesh, write_metrics=kill_at_4,
                  progress=False)
    assert err.value.step == 4 and not seen
    assert ck.latest_step() == 4 and ck.reference_steps() == [3]
    ck.close()
    os.kill(os.getpid(), signal.SIGTERM)    # the previous handler is back
    assert seen == ["old handler"]
  finally:
    signal.signal(signal.SIGTERM, old)
  ck = Checkpointer(str(tmp_path))
  resumed = trainer.fit(z, CFG, optim, SCHED, cfg, ck, mesh=mesh, progress=False)
  assert ck.latest_step() == 9 and ck.reference_steps() == [3]
  ck.close()
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lr_reference_and_kept_steps_are_counted_in_steps(tmp_path):
  """The LR reference is a step count (mid-epoch too), kept apart with any keep_steps."""
  z = _data(48)   # 3 steps an epoch at batch 16
  optim = train.OptimConfig(learning_rate=1e-3)
  cfg = trainer.FitConfig(batch_size=16, num_epochs=3, seed=1, lr_reference_steps=4,
                          keep_steps=(2, 7))
  assert cfg.reference_step(3) == 4 and cfg.kept_steps(3) == {2, 4, 7}
  assert trainer.FitConfig(lr_reference_steps=0).reference_step(40) == 40
  assert trainer.FitConfig().lr_reference_steps == 391   # the paper's first epoch
  ck = Checkpointer(str(tmp_path))
  final = trainer.fit(z, CFG, optim, SCHED, cfg, ck, progress=False)
  assert ck.reference_steps() == [2, 4, 7] and ck.latest_step() == 9
  ref = ck.restore_reference(final, 4)
  assert int(ref.step) == 4
  with pytest.raises(FileNotFoundError, match=r"step 5 .*kept: \[2, 4, 7\]"):
    ck.restore_reference(final, 5)
  ck.close()
  with pytest.raises(ValueError, match="lr_reference_steps"):
    trainer.FitConfig(lr_reference_steps=-1)
  with pytest.raises(ValueError, match="keep_steps"):
    trainer.FitConfig(keep_steps=(0,))
