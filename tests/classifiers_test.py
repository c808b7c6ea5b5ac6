"""dlsr_jax.training.classifier: a recipe trains, writes its workdir and resumes."""

import jax
import numpy as np
import pytest

from dlsr_jax.training import classifier as classifiers


def _toy(n=256, seed=0):
  rng = np.random.default_rng(seed)
  centers = 3.0 * rng.normal(size=(3, 8))
  y = rng.integers(0, 3, n)
  return (centers[y] + rng.normal(size=(n, 8))).astype(np.float32), y


def test_train_classifier_head_trains_and_resumes(tmp_path):
  z, y = _toy()
  nc = classifiers.net_config(model="linear_head", num_classes=3, epochs=10, batch_size=64,
                              log_every_steps=20)
  net = classifiers.load_net(nc, num_features=8)
  assert classifiers.train_classifier(net, z, y, classifiers.net_config(epochs=0),
                                      str(tmp_path / "none")) is net
  trained = classifiers.train_classifier(net, z, y, nc, str(tmp_path / "wd"))
  logits, _ = jax.jit(trained.apply)(trained.params, z)
  assert np.mean(np.argmax(logits, -1) == y) > 0.9
  assert (tmp_path / "wd" / "net_config.json").exists()
  again = classifiers.train_classifier(net, z, y, nc, str(tmp_path / "wd"))  # finished: restore
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_net_config_rejects_unknown_keys():
  assert classifiers.net_config()["learning_rate"] == 0.1
  with pytest.raises(ValueError, match="unknown net config keys"):
    classifiers.net_config(lr=0.1)
