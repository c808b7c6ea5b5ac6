"""The generic loop with classifier objectives: training, streams, resume, preemption."""

import dataclasses
import functools
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlsr_jax import data, models, parallel
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import cross_entropy, outlier_exposure
from dlsr_jax.training import loop, optim
from dlsr_jax.training.checkpoint import Checkpointer
from dlsr_jax.training.preemption import Preempted
from dlsr_jax.training.state import TrainState

N_IN, N_OUT, B_IN, B_OUT = 64, 24, 16, 8      # 4 steps per epoch; outliers cycle every 3


class TinyCNN(nn.Module):
  """conv - BatchNorm - relu - pool - dense: a classifier with batch_stats in a few ms."""

  strides: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), strides=(self.strides, self.strides), name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
    pre = jnp.mean(x, axis=(1, 2))
    return nn.Dense(3, name="fc")(pre), {"pre_logits": pre}


@functools.cache
def _tiny_net() -> Net:
  module = TinyCNN()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  return Net(name="tiny", module=module, params=variables, resolution=8,
             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8),
          rng.integers(0, 3, n).astype(np.int32))


def _sgd(total=12):
  return optim.sgd(optim.SGDConfig(learning_rate=0.05), total)


@functools.cache
def _ce_objective():
  return cross_entropy.make(_tiny_net(), _sgd())


@functools.cache
def _oe_objective():
  """The two-stream objective: outlier exposure (CE on "in" + uniform CE on "outliers")."""
  return outlier_exposure.make(_tiny_net(), _sgd(), ema_decay=0.9)


def _streams(two=False):
  x, y = _images(N_IN)
  streams = {"in": {"x": x, "y": y}}
  if two:
    streams["outliers"] = {"x": _images(N_OUT, seed=1)[0]}
  return streams


def _cfg(epochs=3, **kw):
  return loop.FitConfig(batch_size=B_IN, num_epochs=epochs, seed=5, log_every_steps=1,
                        lr_reference_steps=None, stream_batch_sizes={"outliers": B_OUT}, **kw)


def _assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_cross_entropy_loss_matches_optax():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [-3.0, 4.0, 1.0]])
  labels = jnp.array([0, 2, 1])
  want = np.mean([-jax.nn.log_softmax(logits[i])[labels[i]] for i in range(3)])
  got = cross_entropy.loss(logits, labels)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  onehot = jax.nn.one_hot(labels, 3)
  np.testing.assert_allclose(got, optax.softmax_cross_entropy(logits, onehot).mean(), rtol=1e-6)
  np.testing.assert_allclose(cross_entropy.loss(logits[1:2], labels[1:2]), np.log(3.0),
                             rtol=1e-6)


def test_sgd_is_torch_sgd_with_nesterov_and_weight_decay():
  """Two hand-computed torch SGD steps: g += wd p; buf = m buf + g; p -= lr (g + m buf)."""
  cfg = optim.SGDConfig(learning_rate=0.1, momentum=0.9, weight_decay=0.5, schedule="constant")
  tx = optim.sgd(cfg, 10)
  p, s = {"kernel": jnp.array([1.0]), "bias": jnp.array([2.0])}, None
  s = tx.init(p)
  want, buf = {"kernel": 1.0, "bias": 2.0}, {"kernel": 0.0, "bias": 0.0}
  for g in (1.0, -2.0):
    u, s = tx.update({"kernel": jnp.array([g]), "bias": jnp.array([g])}, s, p)
    p = optax.apply_updates(p, u)
    for k in want:
      d = g + 0.5 * want[k]
      buf[k] = 0.9 * buf[k] + d
      want[k] -= 0.1 * (d + 0.9 * buf[k])
  for k in want:
    np.testing.assert_allclose(p[k], [want[k]], rtol=1e-6)
  kernels_only = optim.sgd(optim.SGDConfig(weight_decay=1.0, decay="kernels", momentum=0.0,
                                           schedule="constant", learning_rate=1.0), 1)
  u, _ = kernels_only.update({"kernel": jnp.zeros(1), "bias": jnp.zeros(1)},
                             kernels_only.init(p), p)
  assert float(u["bias"][0]) == 0.0 and float(u["kernel"][0]) == -float(p["kernel"][0])


def test_classifier_trains_through_fit():
  net, logged = _tiny_net(), []
  state = loop.fit(_ce_objective().init, _ce_objective().step, _streams(), _cfg(epochs=2),
                   None, write_metrics=lambda s, m: logged.append((s, m)), progress=False)
  assert int(state.step) == 8 and [s for s, _ in logged] == list(range(1, 9))
  assert all(np.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for _, m in logged)
  assert state.ema_params is None and state.extra == {}
  for before, after in ((net.params["batch_stats"], state.batch_stats),
                        (net.params["params"], state.params)):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
    assert all(jax.tree.leaves(changed))


def test_resnet20_takes_a_training_step():
  net = models.load("cifar_resnet20", seed=0)
  obj = cross_entropy.make(net, _sgd(2))
  x, y = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype(np.uint8), \
      np.arange(32, dtype=np.int32) % 10
  logged = []
  state = loop.fit(obj.init, obj.step, {"in": {"x": x, "y": y}},
                   loop.FitConfig(batch_size=16, num_epochs=1, lr_reference_steps=None,
                                  log_every_steps=1), None,
                   mesh=parallel.make_mesh(jax.devices()[:1]),
                   write_metrics=lambda s, m: logged.append(m["loss"]), progress=False)
  assert int(state.step) == 2 and np.all(np.isfinite(logged))
  bn = state.batch_stats["bn1"]["mean"]
  assert not np.array_equal(bn, net.params["batch_stats"]["bn1"]["mean"])


def test_resume_after_stopping_equals_uninterrupted(tmp_path):
  obj = _ce_objective()
  full = loop.fit(obj.init, obj.step, _streams(), _cfg(), None, progress=False)
  ck = Checkpointer(str(tmp_path))
  loop.fit(obj.init, obj.step, _streams(), _cfg(epochs=1), ck, progress=False)  # "killed"
  ck.close()
  ck = Checkpointer(str(tmp_path))
  assert ck.latest_step() == 4 and ck.reference_steps() == []
  resumed = loop.fit(obj.init, obj.step, _streams(), _cfg(), ck, progress=False)
  ck.close()
  assert int(resumed.step) == 12
  _assert_bitwise_equal(full, resumed)


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
  """Two streams, SIGTERM at step 5 (mid-epoch 2, mid outlier epoch 2): exact resume."""
  obj = _oe_objective()
  full = loop.fit(obj.init, obj.step, _streams(True), _cfg(), None, progress=False)
  assert full.ema_params is not None

  def kill_at_5(step, _):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)

  ck = Checkpointer(str(tmp_path))
  old = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Preempted, match="step 5"):
    loop.fit(obj.init, obj.step, _streams(True), _cfg(), ck, write_metrics=kill_at_5,
             progress=False)
  assert signal.getsignal(signal.SIGTERM) is old
  assert ck.latest_step() == 5
  resumed = loop.fit(obj.init, obj.step, _streams(True), _cfg(), ck, progress=False)
  ck.close()
  _assert_bitwise_equal(full, resumed)


def _recorder(total):
  """(init, step) that record every batch's ids and the step keys in `extra`."""

  def init(key):
    del key
    extra = {"in": jnp.zeros((total, B_IN), jnp.int32),
             "out": jnp.zeros((total, B_OUT), jnp.int32),
             "key": jnp.zeros((total, 2), jnp.uint32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=(), extra=extra)

  def step(state, batch, key):
    assert batch["in"]["id"].shape == (B_IN,) and batch["in"]["x"].shape == (B_IN, 3)
    assert batch["outliers"]["id"].shape == (B_OUT,)
    e, s = state.extra, state.step
    extra = {"in": e["in"].at[s].set(batch["in"]["id"]),
             "out": e["out"].at[s].set(batch["outliers"]["id"]),
             "key": e["key"].at[s].set(jax.random.key_data(key))}
    return state.replace(step=s + 1, extra=extra), {}

  return init, step


def test_two_streams_batches_and_keys_are_fixed_per_seed_and_epoch():
  epochs = 2
  total = epochs * N_IN // B_IN
  init, step = _recorder(total)
  streams = {"in": {"id": np.arange(N_IN, dtype=np.int32),
                    "x": np.zeros((N_IN, 3), np.float32)},
             "outliers": {"id": np.arange(N_OUT, dtype=np.int32)}}
  run = lambda seed: jax.device_get(loop.fit(
      init, step, streams, dataclasses.replace(_cfg(epochs=epochs), seed=seed), None,
      progress=False).extra)
  a, again, other = run(5), run(5), run(6)
  for k in a:
    np.testing.assert_array_equal(a[k], again[k])
  assert not np.array_equal(a["in"], other["in"]) and not np.array_equal(a["out"], other["out"])
  spe = N_IN // B_IN
  for e in range(epochs):    # "in": today's batches, a function of (seed, epoch, i)
    np.testing.assert_array_equal(a["in"][e * spe:(e + 1) * spe],
                                  data.train_batch_indices(N_IN, B_IN, e, 5))
  spe_out = N_OUT // B_OUT   # outliers cycle through their own shuffled epochs
  epochs_out = [a["out"][i:i + spe_out].ravel() for i in range(0, total - spe_out + 1, spe_out)]
  assert all(len(set(ids)) == len(ids) and ids.max() < N_OUT for ids in epochs_out)
  assert not np.array_equal(epochs_out[0], epochs_out[1])
  loop_key = jax.random.split(jax.random.key(5))[1]
  want = [jax.random.key_data(jax.random.fold_in(loop_key, s)) for s in range(total)]
  np.testing.assert_array_equal(a["key"], np.stack(want))


@pytest.mark.parametrize("name,settings", [("linear_head", {}),
                                           ("mlp_head", {"hidden": 32, "dropout": 0.1})])
def test_head_on_features_learns_a_separable_problem(name, settings):
  rng = np.random.default_rng(0)
  centers = 3.0 * rng.normal(size=(3, 16))
  y = rng.integers(0, 3, 512).astype(np.int32)
  z = (centers[y] + rng.normal(size=(512, 16))).astype(np.float32)
  net = models.load(name, num_features=16, num_classes=3, seed=1, **settings)
  cfg = loop.FitConfig(batch_size=64, num_epochs=40, lr_reference_steps=None,
                       log_every_steps=1000)
  obj = cross_entropy.make(net, optim.sgd(optim.SGDConfig(), 8 * 40))
  state = loop.fit(obj.init, obj.step, {"in": {"x": z, "y": y}}, cfg, None, progress=False)
  assert int(state.step) == 320
  y_test = rng.integers(0, 3, 256)
  z_test = (centers[y_test] + rng.normal(size=(256, 16))).astype(np.float32)
  logits, _ = jax.jit(net.apply)(state.eval_variables(), z_test)
  assert np.mean(np.argmax(logits, -1) == y_test) > 0.9
  with pytest.raises(ValueError, match="no image augmentation"):
    cross_entropy.make(net, optax.sgd(0.1), augment=True)


def test_fit_config_stream_sizes_and_no_reference():
  cfg = _cfg()
  assert cfg.batch_size_of("in") == B_IN and cfg.batch_size_of("outliers") == B_OUT
  assert cfg.batch_size_of("other") == B_IN and cfg.kept_steps(4) == frozenset()
  assert hash(cfg) == hash(_cfg())
  with pytest.raises(ValueError, match="stream_batch_sizes"):
    loop.FitConfig(stream_batch_sizes={"in": 4})
  with pytest.raises(ValueError, match="'in' stream"):
    loop.fit(_recorder(1)[0], _recorder(1)[1], {"outliers": {"x": np.zeros(8)}}, cfg, None)
  with pytest.raises(ValueError, match="row-aligned"):
    loop.fit(*_recorder(1), {"in": {"x": np.zeros(32), "y": np.zeros(31)}}, cfg, None)
