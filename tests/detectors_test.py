"""Post-hoc detectors on hand-made cases: MSP, Energy, ODIN, Mahalanobis, KNN and `make`."""

import dataclasses
import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax import detectors
from dlsr_jax.detectors import odin

KEY = jax.random.key(0)


# ----------------------------------------------------------- MSP, Energy --
def test_msp_hand_computed():
  logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [1000.0, 0.0], [0.0, 0.0]], np.float32)
  det = detectors.make("msp")
  assert det.name == "msp" and det.reads == ("logits",) and det.fit({"logits": logits}, KEY) is None
  got = det.score(None, {"logits": logits}, KEY)["msp"]
  assert got.shape == (4,) and got.dtype == np.float32
  np.testing.assert_allclose(got, [-0.5, -0.75, -1.0, -0.5], rtol=1e-6)
  four = det.score(None, {"logits": np.zeros((1, 4), np.float32)}, KEY)["msp"]
  np.testing.assert_allclose(four, [-0.25], rtol=1e-6)


def test_energy_hand_computed():
  logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [1000.0, 1000.0]], np.float32)
  got = detectors.make("energy").score(None, {"logits": logits}, KEY)["energy"]
  np.testing.assert_allclose(got, [-np.log(2.0), -np.log(4.0), -(1000.0 + np.log(2.0))],
                             rtol=1e-6)
  # T = 2: -2 log(exp(2 log 3 / 2) + exp(0)) = -2 log 4.
  t2 = detectors.make("energy", temperature=2.0)
  got = t2.score(None, {"logits": np.array([[2 * np.log(3.0), 0.0]])}, KEY)["energy"]
  np.testing.assert_allclose(got, [-2.0 * np.log(4.0)], rtol=1e-6)


# ------------------------------------------------------------------ ODIN --
class _TinyCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3))(x))
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(5)(h), {"pre_logits": h}


@dataclasses.dataclass(frozen=True, eq=False)
class _Net:
  """A classifier handle as ODIN expects it; `mask` zeroes input channels."""
  params: dict
  mask: tuple = (1.0, 1.0, 1.0)

  def normalise(self, x01):
    return (x01 - 0.5) / 0.25 * jnp.asarray(self.mask, jnp.float32)

  def apply(self, params, x):
    return _TinyCNN().apply(params, x)


@functools.cache
def _params():
  return jax.jit(_TinyCNN().init)(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))


def _net(mask=(1.0, 1.0, 1.0)):
  return _Net(_params(), mask)


_perturb = jax.jit(odin.perturb, static_argnums=0, static_argnames="clip")


def _images(n=10, seed=2):
  return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


def _ref_grad(net, x01, temperature):
  """d CE(f(x)/T, argmax f(x)) / dx, one image at a time, written without odin.py."""
  def loss(x, label):
    logits, _ = _TinyCNN().apply(net.params, net.normalise(x[None]))
    return -jax.nn.log_softmax(logits[0] / temperature)[label]

  labels = [int(jnp.argmax(_TinyCNN().apply(net.params, net.normalise(x[None]))[0][0]))
            for x in x01]
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  return np.stack([np.asarray(grad(x, y)) for x, y in zip(x01, labels)])


@pytest.mark.parametrize("mask", [(1.0, 1.0, 1.0), (1.0, 0.0, 1.0)])
def test_odin_perturbation_matches_direct_signed_gradient(mask):
  net, temperature, eps = _net(mask), 1000.0, 0.0014
  x01 = _images(4).astype(np.float32) / 255.0
  grad = _ref_grad(net, x01, temperature)
  if mask[1] == 0.0:   # the net ignores channel 1: exact zeros there, which count as +1
    assert np.all(grad[..., 1] == 0.0)
  want = x01 - np.float32(eps) * np.where(grad >= 0, 1.0, -1.0).astype(np.float32)
  got = np.asarray(_perturb(net, net.params, x01, temperature, eps))
  decided = np.abs(grad) > 1e-6 * np.abs(grad).max()   # signs a rounding cannot flip
  assert decided.mean() > 0.6
  np.testing.assert_array_equal(got[decided | (grad == 0)], want[decided | (grad == 0)])
  if mask[1] == 0.0:
    np.testing.assert_array_equal(got[..., 1], x01[..., 1] - np.float32(eps))
  # The detector scores -max softmax(f(x')/T) of that x'.
  logits, _ = _TinyCNN().apply(net.params, net.normalise(jnp.asarray(got)))
  want_score = -np.max(jax.nn.softmax(np.asarray(logits) / temperature, axis=-1), axis=-1)
  det = detectors.make("odin", net=net, temperature=temperature, eps=eps)
  got_score = det.score(None, {"images": _images(4)}, KEY)["odin"]
  np.testing.assert_allclose(got_score, want_score, rtol=1e-6)


def test_odin_clip_setting():
  net = _net()
  x01 = np.concatenate([np.zeros((1, 8, 8, 3)), np.ones((1, 8, 8, 3))]).astype(np.float32)
  free = np.asarray(_perturb(net, net.params, x01, 1000.0, 0.1))
  clipped = np.asarray(_perturb(net, net.params, x01, 1000.0, 0.1, clip=True))
  assert free.min() < 0.0 or free.max() > 1.0   # default: no clipping
  np.testing.assert_array_equal(clipped, np.clip(free, 0.0, 1.0))


def test_odin_eps_zero_is_temperature_msp():
  net, temperature, images = _net(), 7.0, _images()
  det = detectors.make("odin", net=net, temperature=temperature, eps=0.0)
  got = det.score(None, {"images": images}, KEY)["odin"]
  logits, _ = _TinyCNN().apply(net.params, net.normalise(images.astype(np.float32) / 255.0))
  want = detectors.make("msp").score(None, {"logits": np.asarray(logits) / temperature}, KEY)
  np.testing.assert_allclose(got, want["msp"], rtol=1e-6)


def test_odin_batch_size_independent():
  net, images = _net(), _images(10)
  small = detectors.make("odin", net=net, batch_size=3).score(None, {"images": images}, KEY)
  big = detectors.make("odin", net=net, batch_size=64).score(None, {"images": images}, KEY)
  assert small["odin"].shape == (10,)
  np.testing.assert_allclose(small["odin"], big["odin"], rtol=1e-6)


def test_odin_rejects_bad_images_and_nets():
  det = detectors.make("odin", net=_net())
  with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
    det.score(None, {"images": np.zeros((2, 8, 8, 3), np.float32)}, KEY)
  no_normalise = type("NoNormalise", (), {"params": {}, "apply": lambda self, p, x: x})()
  with pytest.raises(TypeError, match="NoNormalise has no .normalise"):
    detectors.make("odin", net=no_normalise)
  with pytest.raises(ValueError, match="eps must be a non-negative number"):
    detectors.make("odin", net=_net(), eps=-0.1)


# ----------------------------------------------------------- Mahalanobis --
def _classes(rng, n_per, c, labels):
  centres = rng.normal(size=(len(labels), c)) * 3.0
  mix = rng.normal(size=(c, c)) * 0.3 + np.eye(c)
  x = np.concatenate([rng.normal(size=(n_per, c)) @ mix + m for m in centres])
  return x, np.repeat(np.asarray(labels), n_per)


@pytest.mark.parametrize("shrinkage", [0.0, 0.2])
def test_mahalanobis_class_conditional_matches_numpy(shrinkage):
  rng = np.random.default_rng(0)
  train, labels = _classes(rng, 50, 6, [3, 7, 9])   # labels need not be 0..K-1
  test = rng.normal(size=(25, 6)) * 4.0
  means = np.stack([train[labels == k].mean(axis=0) for k in (3, 7, 9)])
  resid = train - means[np.searchsorted([3, 7, 9], labels)]
  cov = resid.T @ resid / len(train)
  cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / 6 * np.eye(6)
  prec = np.linalg.inv(cov)
  d = test[:, None, :] - means[None]
  want = np.einsum("nkc,cd,nkd->nk", d, prec, d).min(axis=1)

  det = detectors.make("mahalanobis", array="pre_logits", class_conditional=True,
                       shrinkage=shrinkage, chunk_size=7)
  assert det.reads == ("pre_logits",) and det.fit_reads == ("pre_logits", "labels")
  state = det.fit({"pre_logits": train, "labels": labels}, KEY)
  got = det.score(state, {"pre_logits": test}, KEY)["mahalanobis"]   # no labels needed
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_mahalanobis_single_gaussian_detector_is_the_baseline():
  from dlsr_jax import baselines  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  train, test = rng.normal(size=(80, 4)), rng.normal(size=(9, 4))
  det = detectors.make("mahalanobis", shrinkage=0.1)
  assert det.reads == det.fit_reads == ("features",)
  got = det.score(det.fit({"features": train}, KEY), {"features": test}, KEY)["mahalanobis"]
  want = baselines.mahalanobis_score(baselines.fit_mahalanobis(train, 0.1), test)
  np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------- KNN --
@pytest.mark.parametrize("k", [1, 5, 60])
def test_knn_matches_brute_force_kth_distance(k):
  rng = np.random.default_rng(3)
  train, test = rng.normal(size=(60, 8)) * 5.0, rng.normal(size=(23, 8)) + 0.5
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  dists = np.linalg.norm(unit(test)[:, None, :] - unit(train)[None], axis=-1)
  want = np.sort(dists, axis=1)[:, k - 1]
  det = detectors.make("knn", k=k, array="pre_logits", chunk_size=7)
  state = det.fit({"pre_logits": train}, KEY)
  got = det.score(state, {"pre_logits": test}, KEY)["knn"]
  assert got.shape == (23,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ make --
def test_make_unknown_type_lists_available():
  types = detectors.available()
  assert types == sorted(types) and {"confidence", "dlsr", "energy", "knn", "mahalanobis",
                                     "maxlogit", "msp", "odin"} <= set(types)
  assert not any(t == "base" or t.startswith("_") for t in types)
  with pytest.raises(ValueError, match=r"unknown detector type 'nope'; available: "
                                       + ", ".join(types) + "$"):
    detectors.make("nope")
  with pytest.raises(ValueError, match="available"):
    detectors.make("base")


def test_make_unknown_or_missing_setting_names_the_detector():
  with pytest.raises(TypeError, match=r"detector 'energy': .*'temp'.*accepted settings: "
                                      r"temperature=1.0"):
    detectors.make("energy", temp=2.0)
  with pytest.raises(TypeError, match=r"detector 'odin': missing .*'net'.*accepted settings: "
                                      r"net, temperature=1000.0"):
    detectors.make("odin")
  with pytest.raises(ValueError, match="knn: k must be a positive int"):
    detectors.make("knn", k=0)
  with pytest.raises(ValueError, match="shrinkage must be a float"):
    detectors.make("mahalanobis", shrinkage="oas")


def test_missing_array_is_a_clear_error():
  with pytest.raises(ValueError, match=r"detector 'msp': score reads the array\(s\) "
                                       r"\['logits'\], missing .*has \['features'\]"):
    detectors.make("msp").score(None, {"features": np.zeros((2, 3))}, KEY)
  det = detectors.make("mahalanobis", class_conditional=True)
  with pytest.raises(ValueError, match=r"fit reads the array\(s\) \['labels'\]"):
    det.fit({"features": np.zeros((5, 2))}, KEY)
  with pytest.raises(ValueError, match="row-aligned"):
    det.fit({"features": np.zeros((5, 2)), "labels": np.zeros(4, int)}, KEY)


def test_package_import_is_lazy():
  code = ("import sys, dlsr_jax.detectors as d; "
          "print(sorted(m for m in sys.modules if m.startswith('dlsr_jax.detectors')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "['dlsr_jax.detectors', 'dlsr_jax.detectors.base']"


def test_maxlogit_hand_case():
  logits = np.array([[1.0, 3.0, -2.0], [0.5, 0.5, 0.5]], np.float32)
  det = detectors.make("maxlogit")
  assert det.reads == ("logits",) and det.fit({"logits": logits}, KEY) is None
  np.testing.assert_allclose(det.score(None, {"logits": logits}, KEY)["maxlogit"], [-3.0, -0.5])


def test_confidence_hand_case():
  z = np.array([0.0, np.log(3.0), -np.log(3.0), 20.0, -800.0, 800.0], np.float32)
  det = detectors.make("confidence")
  assert det.reads == ("confidence",) and det.fit({"confidence": z}, KEY) is None
  got = det.score(None, {"confidence": z}, KEY)["confidence"]
  assert got.shape == (6,) and got.dtype == np.float64
  want = [-0.5, -0.75, -0.25, -1.0 / (1.0 + np.exp(-20.0)), -0.0, -1.0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  assert got[3] > -1.0   # float64: no tie with the saturated float32 sigmoid


def test_odin_on_head_features_steps_the_features():
  """input="features": x' = z - eps * sign(grad_z loss) through the head (hand-checked)."""
  from dlsr_jax import models  # pylint: disable=g-import-not-at-top
  from dlsr_jax.detectors import odin  # pylint: disable=g-import-not-at-top
  head = models.load("linear_head", num_features=4, num_classes=3, seed=1)
  z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
  det = detectors.make("odin", net=head, temperature=2.0, eps=0.1, input="features")
  assert det.reads == ("features",)
  got = det.score(None, {"features": z}, KEY)["odin"]
  zp = odin.perturb(head, head.params, z, 2.0, 0.1)
  assert np.all(np.abs(np.abs(np.asarray(zp) - z) - 0.1) < 1e-6)
  logits, _ = head.apply(head.params, zp)
  want = -np.max(np.asarray(jax.nn.softmax(np.asarray(logits) / 2.0, axis=-1)), axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match="input must be"):
    detectors.make("odin", net=head, input="pixels")
