"""Confidence branch: the loss against its formula, lambda's rule, the head wrapper, resume."""

import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlsr_jax import detectors, models
from dlsr_jax.models.confidence import ConfidenceNet, with_confidence_head
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import confidence_branch as cb
from dlsr_jax.objectives import cross_entropy
from dlsr_jax.training import loop, optim
from dlsr_jax.training.checkpoint import Checkpointer
from dlsr_jax.training.preemption import Preempted
from tests.training_test import TinyCNN, _assert_bitwise_equal

N, B = 64, 16    # 4 steps per epoch


@functools.cache
def _tiny_net() -> Net:
  module = TinyCNN()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  return Net(name="tiny", module=module, params=variables, resolution=8,
             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), weights_id="w0")


@functools.cache
def _objective():
  tx = optim.sgd(optim.SGDConfig(learning_rate=0.05), 12)
  return cb.make(_tiny_net(), tx, ema_decay=0.9, seed=3, lambda0=0.1, beta=0.3)


def _streams():
  rng = np.random.default_rng(0)
  return {"in": {"x": rng.integers(0, 256, (N, 8, 8, 3)).astype(np.uint8),
                 "y": rng.integers(0, 3, N).astype(np.int32)}}


def _cfg(epochs=3):
  return loop.FitConfig(batch_size=B, num_epochs=epochs, seed=5, log_every_steps=1,
                        lr_reference_steps=None)


# ------------------------------------------------------------------ loss --
def _numpy_loss(logits, conf_logit, labels, hint, lam, eps=1e-12):
  logits, conf_logit = np.asarray(logits, np.float64), np.asarray(conf_logit, np.float64)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  c = 1.0 / (1.0 + np.exp(-conf_logit))
  task, conf = [], []
  for i, y in enumerate(labels):
    ci = c[i] if hint[i] else 1.0
    p_prime = ci * p[i] + (1.0 - ci) * np.eye(p.shape[1])[y]
    task.append(-np.log(max(p_prime[y], eps)))
    conf.append(-np.log(c[i]))
  return np.mean(task) + lam * np.mean(conf), np.mean(task), np.mean(conf)


def test_loss_matches_the_formula():
  logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [-3.0, 4.0, 1.0], [1.0, -2.0, 0.5],
                     [-60.0, 60.0, 0.0]], np.float32)
  conf_logit = np.array([0.3, -1.5, 2.0, -0.2, -4.0], np.float32)
  labels = np.array([0, 2, 0, 1, 0])
  hint = np.array([True, False, True, False, True])
  got = cb.loss(jnp.asarray(logits), jnp.asarray(conf_logit), jnp.asarray(labels),
                jnp.asarray(hint), 0.7)
  want = _numpy_loss(logits, conf_logit, labels, hint, 0.7)
  np.testing.assert_allclose(np.array(got), want, rtol=1e-5)
  total, task, conf = got
  np.testing.assert_allclose(total, task + 0.7 * conf, rtol=1e-6)
  # A 0/1 mask is the same as a boolean one; without hints the task loss is plain CE.
  np.testing.assert_array_equal(
      np.array(cb.loss(logits, conf_logit, labels, hint.astype(np.int32), 0.7)), np.array(got))
  _, task, _ = cb.loss(logits, conf_logit, labels, np.zeros(5, bool), 0.7)
  np.testing.assert_allclose(task, cross_entropy.loss(logits[:4], labels[:4]) * 0.8
                             + 0.2 * -np.log(1e-12), rtol=1e-5)   # row 4: p_y floored at eps
  # -log c stays finite for very negative confidence logits (softplus, not log(sigmoid)).
  _, _, conf = cb.loss(logits[:1], np.array([-200.0], np.float32), labels[:1], hint[:1], 1.0)
  np.testing.assert_allclose(conf, 200.0, rtol=1e-6)


def test_update_lambda_rule():
  lam = jnp.float32(0.1)
  assert cb.update_lambda(lam, jnp.float32(0.29), 0.3) == np.float32(0.1) / np.float32(1.01)
  assert cb.update_lambda(lam, jnp.float32(0.3), 0.3) == np.float32(0.1) / np.float32(0.99)
  assert cb.update_lambda(lam, jnp.float32(2.0), 0.3) == np.float32(0.1) / np.float32(0.99)
  assert cb.update_lambda(lam, jnp.float32(0.29), 0.3).dtype == jnp.float32
  jitted = jax.jit(cb.update_lambda, static_argnums=2)   # exact division under jit too
  for lam in np.float32([0.1, 0.1 / 0.99, 0.37, 3e-5]):
    assert jitted(lam, np.float32(0.1), 0.3) == lam / np.float32(1.01)
    assert jitted(lam, np.float32(0.5), 0.3) == lam / np.float32(0.99)


# --------------------------------------------------------------- wrapper --
@pytest.mark.parametrize("which", ["tiny", "linear_head", "mlp_head"])
def test_wrapper_keeps_the_inner_outputs(which):
  if which == "tiny":
    net = _tiny_net()
    x = _tiny_net().preprocess(_streams()["in"]["x"][:5])
  else:
    net = models.load(which, num_features=6, num_classes=3, seed=1)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
  wrapped = with_confidence_head(net, jax.random.key(7))
  assert isinstance(wrapped.module, ConfidenceNet) and wrapped.name == net.name + "+confidence"
  assert wrapped.outputs == ("logits", "pre_logits", "confidence")
  assert (wrapped.resolution, wrapped.mean, wrapped.std) == (net.resolution, net.mean, net.std)
  assert set(wrapped.params) == set(net.params)   # no batch_stats for the heads
  shapes = jax.eval_shape(lambda: wrapped.module.init(jax.random.key(0), x, train=False))
  assert jax.tree.structure(shapes) == jax.tree.structure(wrapped.params)
  logits, out = wrapped.apply(wrapped.params, x)
  want_logits, want_out = net.apply(net.params, x)
  np.testing.assert_array_equal(logits, want_logits)
  np.testing.assert_array_equal(out["pre_logits"], want_out["pre_logits"])
  head = wrapped.params["params"]["confidence"]
  assert out["confidence"].shape == (5,)
  np.testing.assert_allclose(out["confidence"],
                             np.asarray(out["pre_logits"]) @ head["kernel"][:, 0] + head["bias"],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="already has"):
    with_confidence_head(wrapped, jax.random.key(0))


# --------------------------------------------------------------- make --
def test_make_settings_and_wrapping():
  tx = optax.sgd(0.1)
  for bad in (dict(lambda0=0.0), dict(beta=-1.0), dict(hint_probability=1.5),
              dict(lambda0=True), dict(beta=float("nan"))):
    with pytest.raises(ValueError, match="confidence_branch: " + next(iter(bad))):
      cb.make(_tiny_net(), tx, **bad)
  obj = _objective()
  assert obj.net.outputs[-1] == "confidence" and cb.ARRAYS == ("confidence",)
  assert cb.make(obj.net, tx).net is obj.net       # already has the head: not re-wrapped
  head = models.load("linear_head", num_features=4, num_classes=3)
  with pytest.raises(ValueError, match="no image augmentation"):
    cb.make(head, tx, augment=True)


# ------------------------------------------------------------------ fit --
def test_fit_logs_and_updates_lambda_by_the_rule():
  obj, logged = _objective(), []
  state = loop.fit(obj.init, obj.step, _streams(), _cfg(epochs=2), None,
                   write_metrics=lambda s, m: logged.append(m), progress=False)
  assert int(state.step) == 8 and len(logged) == 8
  assert {"loss", "task_loss", "confidence_loss", "lambda", "accuracy",
          "grad_norm"} <= set(logged[0])
  lam = jnp.float32(0.1)
  for m in logged:    # logged "lambda" is the one the step used; the state holds the next
    assert m["lambda"] == float(lam)
    np.testing.assert_allclose(m["loss"], m["task_loss"] + m["lambda"] * m["confidence_loss"],
                               rtol=1e-5)
    lam = cb.update_lambda(lam, jnp.float32(m["confidence_loss"]), 0.3)
  assert state.extra["lambda"].dtype == jnp.float32
  np.testing.assert_array_equal(state.extra["lambda"], lam)
  # Confidence heads start near c = 1/2 (-log c ~ 0.69 > beta): lambda grew by 1/0.99 a step.
  np.testing.assert_allclose(state.extra["lambda"], 0.1 / 0.99 ** 8, rtol=1e-5)
  logits, out = obj.net.apply(obj.variables(state), obj.net.preprocess(_streams()["in"]["x"]))
  assert out["confidence"].shape == (N,) and logits.shape == (N, 3)
  score = detectors.make("confidence").score(None, {"confidence": out["confidence"]}, None)
  assert np.all((score["confidence"] < 0) & (score["confidence"] > -1))


def test_head_on_features_trains_with_every_sample_hinted():
  rng = np.random.default_rng(0)
  z, y = rng.normal(size=(32, 6)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32)
  head = models.load("mlp_head", num_features=6, num_classes=3, hidden=8, seed=1)
  obj = cb.make(head, optax.sgd(0.1), hint_probability=1.0)
  state = loop.fit(obj.init, obj.step, {"in": {"x": z, "y": y}},
                   loop.FitConfig(batch_size=16, num_epochs=1, lr_reference_steps=None), None,
                   progress=False)
  assert int(state.step) == 2 and state.batch_stats is None
  assert set(state.params) == {"inner", "confidence"}


def test_sigterm_mid_epoch_then_resume_is_bitwise_equal_including_lambda(tmp_path):
  obj = _objective()
  full = loop.fit(obj.init, obj.step, _streams(), _cfg(), None, progress=False)
  assert full.ema_params is not None and float(full.extra["lambda"]) != 0.1

  def kill_at_5(step, _):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)

  ck = Checkpointer(str(tmp_path))
  with pytest.raises(Preempted, match="step 5"):
    loop.fit(obj.init, obj.step, _streams(), _cfg(), ck, write_metrics=kill_at_5,
             progress=False)
  assert ck.latest_step() == 5
  resumed = loop.fit(obj.init, obj.step, _streams(), _cfg(), ck, progress=False)
  ck.close()
  assert int(resumed.step) == 12
  _assert_bitwise_equal(full, resumed)
