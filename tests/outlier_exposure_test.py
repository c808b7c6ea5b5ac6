"""Outlier Exposure: the loss against its formula, the objective on two streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax.objectives import outlier_exposure
from dlsr_jax.training import loop
from tests.training_test import B_IN, _cfg, _sgd, _streams, _tiny_net


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def test_loss_is_ce_plus_weight_times_cross_entropy_to_uniform():
  logits_in = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [-3.0, 4.0, 1.0]], np.float32)
  labels = np.array([0, 2, 1])
  logits_out = np.array([[5.0, -2.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
  ce = -np.mean(_log_softmax(logits_in)[np.arange(3), labels])
  # cross-entropy from softmax(logits) to uniform: -(1/K) sum_k log p_k
  to_uniform = np.mean(-np.mean(_log_softmax(logits_out), -1))
  got = outlier_exposure.loss(jnp.asarray(logits_in), jnp.asarray(labels),
                              jnp.asarray(logits_out), 0.5)
  np.testing.assert_allclose(float(got), ce + 0.5 * to_uniform, rtol=1e-6)
  # logsumexp - mean form (SPEC 4.4) and the uniform logits' value log K
  np.testing.assert_allclose(float(outlier_exposure.uniform_cross_entropy(logits_out)),
                             np.mean(np.log(np.exp(logits_out).sum(-1)) - logits_out.mean(-1)),
                             rtol=1e-6)
  np.testing.assert_allclose(
      float(outlier_exposure.uniform_cross_entropy(jnp.zeros((2, 10)))), np.log(10), rtol=1e-6)
  assert float(outlier_exposure.loss(jnp.asarray(logits_in), jnp.asarray(labels),
                                     jnp.asarray(logits_out), 0.0)) == pytest.approx(ce, 1e-6)


def test_objective_trains_on_both_streams_and_pushes_outliers_to_uniform():
  net = _tiny_net()
  obj = outlier_exposure.make(net, _sgd(), augment=False, weight=5.0)
  assert obj.streams == ("outliers",) and obj.name == "outlier_exposure"
  streams = _streams(two=True)
  state = loop.fit(obj.init, obj.step, streams, _cfg(epochs=3), None, progress=False)
  assert int(state.step) == 12

  def to_uniform(params):
    logits, _ = net.apply(params, net.preprocess(streams["outliers"]["x"]))
    return float(outlier_exposure.uniform_cross_entropy(logits))

  assert to_uniform(state.eval_variables()) < to_uniform(net.params)


def test_step_metrics_split_the_loss():
  obj = outlier_exposure.make(_tiny_net(), _sgd(), augment=False, weight=0.5)
  streams = _streams(two=True)
  batch = {"in": {k: jnp.asarray(v[:B_IN]) for k, v in streams["in"].items()},
           "outliers": {"x": jnp.asarray(streams["outliers"]["x"][:8])}}
  _, m = jax.jit(obj.step)(obj.init(jax.random.key(0)), batch, jax.random.key(1))
  np.testing.assert_allclose(float(m["loss"]), float(m["ce"]) + 0.5 * float(m["outlier_loss"]),
                             rtol=1e-6)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="weight must be >= 0"):
    outlier_exposure.make(_tiny_net(), _sgd(), weight=-1.0)
