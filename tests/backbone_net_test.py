"""`Backbone.as_net`: a backbone as a classifier `Net` (logits, out["pre_logits"], levels).

One EfficientNet-Lite0 at 32x32 (compiling is the cost), with its bundled ImageNet weights:
a random init gives near-constant logits (spread ~3e-5 over 1000 classes), too flat to test
ODIN's step. Its net must give the backbone's own logits and level maps, a head with
pre_logits @ W + b = logits, and work with `evaluation.forward` and the MSP / ODIN detectors.
"""

import dataclasses

import jax
import numpy as np
import pytest

from dlsr_jax import backbones, detectors, evaluation

RES = 32


@pytest.fixture(scope="module")
def lite0():
  bb = backbones.load("efficientnet_lite0", "imagenet", padding_size=None)
  return dataclasses.replace(bb, resolution=RES)


def _softmax(logits, t=1.0):
  z = np.asarray(logits, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_backbone_as_net_matches_backbone_and_runs_detectors(lite0):
  images = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
  net = lite0.as_net()
  assert net.outputs == ("logits", "pre_logits") and net.resolution == RES
  assert net.weights_id == lite0.weights_id and len(net.weights_id) == 12
  x = net.preprocess(images)
  np.testing.assert_allclose(x, lite0.preprocess(images), rtol=1e-6, atol=1e-6)

  # The backbone's own logits and levels, and the net's outputs, in one compiled call.
  both = jax.jit(lambda p, x: (lite0.logits(p, x), lite0.apply(p, x), net.apply(p, x)))
  ref_logits, ref_levels, (logits, out) = jax.device_get(both(net.params, x))
  assert ref_logits.shape == (4, 1000) and np.all(np.isfinite(ref_logits))
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  assert set(out) == {"pre_logits", *lite0.level_names}
  for name, ref in zip(lite0.level_names, ref_levels):
    np.testing.assert_allclose(out[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)
  w, b = net.head
  pre = np.asarray(out["pre_logits"], np.float64)
  assert w.shape == (pre.shape[1], 1000) == (1280, 1000)
  np.testing.assert_allclose(pre @ np.asarray(w, np.float64) + np.asarray(b), ref_logits,
                             rtol=1e-4, atol=1e-4)

  arrays = evaluation.forward(net, images, batch_size=4)
  assert set(arrays) == {"logits", "pre_logits"}
  np.testing.assert_allclose(arrays["logits"], ref_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(arrays["pre_logits"], pre, rtol=1e-5, atol=1e-5)
  key = jax.random.key(0)
  msp = detectors.make("msp")
  got = msp.score(msp.fit(arrays, key), arrays, key)["msp"]
  np.testing.assert_allclose(got, -_softmax(ref_logits).max(-1), rtol=1e-5, atol=1e-6)
  # ODIN's step lowers each image's loss at temperature T on its own pseudo-label, so every
  # score must drop below the unperturbed -max softmax(logits / T) (measured: by 2-5%); a
  # gradient that did not flow through the net's resize + normalisation would not.
  t = 10.0
  odin = detectors.make("odin", net=net, temperature=t, eps=0.002, batch_size=4)
  got = odin.score(odin.fit({}, key), {"images": images}, key)["odin"]
  unperturbed = -_softmax(ref_logits, t).max(-1)
  assert got.shape == (4,) and np.all(got < unperturbed * 1.001), (got, unperturbed)
  assert lite0.as_net().apply_fn is net.apply_fn   # one compiled forward per backbone


def test_as_net_needs_the_head(lite0):
  with pytest.raises(ValueError, match="no classification head"):
    dataclasses.replace(lite0, has_head=False).as_net()
  with pytest.raises(ValueError, match="head_name"):
    dataclasses.replace(lite0, head_name=None).as_net()
