"""Every detector type on one real net (`models.load`, its `Net.head`): built by
`detectors.make`, fitted, and batch independent (a row's score never depends on the other
rows scored with it)."""

import jax
import numpy as np
import pytest

from dlsr_jax import detectors, evaluation, models

# Settings sized for the small fit set below (D = 8 pre-logit features, K = 4 classes).
SETTINGS = {
    "knn": dict(array="pre_logits", k=5), "mahalanobis": dict(array="pre_logits"),
    "odin": dict(input="features", temperature=10.0, eps=0.01), "nnguide": dict(k=5, bank=40),
    "vim": dict(dim=4), "residual": dict(dim=4),
}
NEEDS_NET = {"odin", "gradnorm", "react", "ash", "scale", "dice", "vra", "vim", "residual",
             "fdbd", "nci"}
# DLSR trains an LFDN in its fit; its batch-size-independent noise is tested in scoring_test.
NOT_HERE = {"dlsr"}


@pytest.fixture(scope="module", name="arrays")
def _arrays():
  net = models.load("linear_head", num_features=8, num_classes=4, seed=3)
  rng = np.random.default_rng(0)
  fit_x = rng.normal(size=(80, 8)).astype(np.float32)
  test_x = (rng.normal(size=(23, 8)) * 1.5 + 0.3).astype(np.float32)
  fit = {**evaluation.forward(net, fit_x), "features": fit_x,
         "confidence": rng.normal(size=80).astype(np.float32)}
  pred = np.argmax(fit["logits"], -1)
  fit["labels"] = np.where(np.arange(80) % 8 == 0, (pred + 1) % 4, pred)   # 1 in 8 wrong
  assert set(pred) == set(range(4))                     # every class predicted
  test = {**evaluation.forward(net, test_x), "features": test_x,
          "confidence": rng.normal(size=23).astype(np.float32)}
  return net, fit, test


@pytest.mark.parametrize("kind", sorted(set(detectors.available()) - NOT_HERE))
def test_every_detector_is_batch_independent(kind, arrays):
  net, fit, test = arrays
  settings = dict(SETTINGS.get(kind, {}))
  if kind in NEEDS_NET:
    settings["net"] = net
  det = detectors.make(kind, **settings)
  key = jax.random.key(0)
  state = det.fit({k: fit[k] for k in det.fit_reads}, key)
  whole = det.score(state, {k: test[k] for k in det.reads}, key)
  assert whole and all(np.shape(v) == (23,) and np.all(np.isfinite(v)) for v in whole.values())
  parts = [det.score(state, {k: test[k][i:j] for k in det.reads}, key)
           for i, j in ((0, 1), (1, 8), (8, 23))]
  for name, scores in whole.items():
    np.testing.assert_allclose(np.concatenate([p[name] for p in parts]), scores, rtol=2e-6,
                               atol=1e-6, err_msg=f"{kind}: {name}")


def test_the_list_covers_every_type():
  assert NOT_HERE <= set(detectors.available())
  assert NEEDS_NET <= set(detectors.available())
