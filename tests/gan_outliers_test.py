"""GAN synthetic outliers (Lee et al. 2018): losses, DCGAN, the step, fit / resume, samples."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from dlsr_jax.models.dcgan import Discriminator, Generator, init_variables
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base, gan_outliers
from dlsr_jax.training import loop, optim
from dlsr_jax.training.checkpoint import Checkpointer
from tests.training_test import TinyCNN

N_IN, B = 32, 8            # 4 steps an epoch
TINY = dict(nz=8, ngf=8, ndf=8, num_samples=64, seed=3)


@functools.cache
def _net() -> Net:
  module = TinyCNN(strides=2)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  return Net(name="tiny32", module=module, params=variables, resolution=32,
             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@functools.cache
def _objective(augment=True, ema_decay=None):
  tx = optim.sgd(optim.SGDConfig(learning_rate=0.05), 8)
  return gan_outliers.make(_net(), tx, augment=augment, ema_decay=ema_decay, **TINY)


def _streams():
  rng = np.random.default_rng(0)
  return {"in": {"x": rng.integers(0, 256, (N_IN, 32, 32, 3)).astype(np.uint8),
                 "y": rng.integers(0, 3, N_IN).astype(np.int32)}}


def _cfg(epochs):
  return loop.FitConfig(batch_size=B, num_epochs=epochs, seed=1, log_every_steps=1,
                        lr_reference_steps=None)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl_uniform(logits):
  p = np.exp(_log_softmax(np.asarray(logits, np.float64)))
  k = p.shape[-1]
  return np.mean(np.sum((1.0 / k) * np.log((1.0 / k) / p), axis=-1))


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def _leaves_differ(a, b):
  return all(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _leaves_equal(a, b):
  return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


LOGITS = np.array([[4.0, 0.0, -1.0], [0.5, 0.5, 0.2], [-2.0, 3.0, 8.0]], np.float32)
LABELS = np.array([0, 2, 1])


def test_kl_uniform_matches_numpy():
  assert abs(float(gan_outliers.kl_uniform(jnp.full((4, 5), 2.5)))) < 1e-6
  np.testing.assert_allclose(gan_outliers.kl_uniform(LOGITS), _np_kl_uniform(LOGITS), rtol=1e-5)
  k = 3   # the closed form: mean_b [-log K - (1/K) sum_k log p_k]
  want = np.mean(-np.log(k) - _log_softmax(LOGITS.astype(np.float64)).mean(-1))
  np.testing.assert_allclose(gan_outliers.kl_uniform(LOGITS), want, rtol=1e-5)
  assert np.isfinite(float(gan_outliers.kl_uniform(jnp.array([[500.0, -500.0, 0.0]]))))


def test_discriminator_and_generator_losses_match_numpy():
  real, fake = np.array([2.0, -1.0, 0.3]), np.array([-3.0, 0.5])
  want_d = -np.mean(_np_log_sigmoid(real)) - np.mean(np.log(1.0 - 1.0 / (1.0 + np.exp(-fake))))
  np.testing.assert_allclose(gan_outliers.discriminator_loss(real, fake), want_d, rtol=1e-5)
  assert np.isfinite(float(gan_outliers.discriminator_loss(jnp.array([-200.0]),
                                                           jnp.array([200.0]))))
  d_on_fake = np.array([0.2, -1.5, 3.0])
  want_g = -np.mean(_np_log_sigmoid(d_on_fake)) + 0.1 * _np_kl_uniform(LOGITS)
  np.testing.assert_allclose(gan_outliers.generator_loss(d_on_fake, LOGITS, 0.1), want_g,
                             rtol=1e-5)


def test_classifier_loss_matches_numpy():
  ce = -np.mean(_log_softmax(LOGITS.astype(np.float64))[np.arange(3), LABELS])
  fake = LOGITS[::-1] * 0.5
  want = ce + 0.3 * _np_kl_uniform(fake)
  np.testing.assert_allclose(gan_outliers.classifier_loss(LOGITS, LABELS, fake, 0.3), want,
                             rtol=1e-5)
  np.testing.assert_allclose(gan_outliers.classifier_loss(LOGITS, LABELS, fake, 0.0), ce,
                             rtol=1e-5)


def test_dcgan_shapes_range_and_init():
  gen, disc = Generator(nz=8, ngf=8), Discriminator(ndf=8)

  @jax.jit
  def run(key):
    k_g, k_d, k_z = jax.random.split(key, 3)
    gv, dv = init_variables(gen, k_g), init_variables(disc, k_d)
    images, _ = gen.apply(gv, 3.0 * jax.random.normal(k_z, (5, 8)), train=True,
                          mutable=["batch_stats"])
    logits, _ = disc.apply(dv, images, train=True, mutable=["batch_stats"])
    return gv, dv, images, logits, disc.apply(dv, images)

  gv, dv, images, logits, eval_logits = run(jax.random.key(0))
  assert images.shape == (5, 32, 32, 3)
  assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
  assert logits.shape == (5,) and eval_logits.shape == (5,)
  assert "bn1" not in dv["params"] and {"bn2", "bn3"} <= set(dv["params"])
  for module, got, x in ((gen, gv, jnp.zeros((1, 8))), (disc, dv, images)):
    want = jax.eval_shape(lambda m=module, x=x: m.init(jax.random.key(0), x))
    assert jax.tree.map(lambda a: a.shape, want) == jax.tree.map(lambda a: a.shape, got)
  kernels = np.concatenate([np.ravel(v["kernel"]) for p in (gv, dv)
                            for v in p["params"].values() if "kernel" in v])
  scales = np.concatenate([np.ravel(v["scale"]) for p in (gv, dv)
                           for v in p["params"].values() if "scale" in v])
  assert abs(kernels.mean()) < 1e-3 and 0.019 < kernels.std() < 0.021
  assert abs(scales.mean() - 1.0) < 0.01 and 0.01 < scales.std() < 0.03
  assert all(not np.any(v["bias"]) for p in (gv, dv) for v in p["params"].values()
             if "bias" in v)
  with pytest.raises(ValueError, match="z of shape"):
    jax.eval_shape(lambda: gen.apply(gv, jnp.zeros((2, 9))))


def test_step_updates_the_three_networks_deterministically():
  obj, net = _objective(augment=False, ema_decay=0.9), _net()
  state = jax.jit(obj.init)(jax.random.key(0))
  _assert_bitwise_equal(state, jax.jit(obj.init)(jax.random.key(7)))   # seed decides, not key
  batch = {"in": {k: jnp.asarray(v[:B]) for k, v in _streams()["in"].items()}}
  step = jax.jit(obj.step)
  new, metrics = step(state, batch, jax.random.key(11))
  again, _ = step(state, batch, jax.random.key(11))
  other, _ = step(state, batch, jax.random.key(12))
  _assert_bitwise_equal(new, again)
  assert not _leaves_equal(new.extra, other.extra) and not _leaves_equal(new.params,
                                                                         other.params)
  assert int(new.step) == 1
  assert _leaves_differ(state.params, new.params)
  for part in ("gen", "disc"):
    for field in ("params", "batch_stats"):
      assert _leaves_differ(state.extra[part][field], new.extra[part][field]), (part, field)
  assert set(metrics) == {"loss", "ce", "kl_fake", "d_loss", "g_loss", "accuracy", "d_real",
                          "d_fake", "grad_norm"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  np.testing.assert_allclose(metrics["loss"], metrics["ce"] + 0.1 * metrics["kl_fake"],
                             rtol=1e-5)
  # The classifier's running statistics come from its ID pass alone.
  _, _, id_stats = base.apply_train(net.module, state.variables, net.preprocess(batch["in"]["x"]),
                                    jax.random.key(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new.batch_stats, id_stats)
  ema = obj.variables(new)["params"]    # export: the classifier's EMA
  assert _leaves_differ(ema, new.params) and _leaves_differ(ema, state.params)
  fakes = gan_outliers.generate(new, 4, jax.random.key(1))
  assert fakes.shape == (4, 32, 32, 3) and float(jnp.abs(fakes).max()) <= 1.0


def test_fit_resume_export_and_samples(tmp_path):
  obj, net = _objective(), _net()
  full = loop.fit(obj.init, obj.step, _streams(), _cfg(2), None, progress=False)
  ck = Checkpointer(str(tmp_path / "run"))
  logged = []
  loop.fit(obj.init, obj.step, _streams(), _cfg(1), ck, progress=False,   # "killed" at 4
           write_metrics=lambda s, m: logged.append(m))
  ck.close()
  assert len(logged) == 4 and all(np.isfinite(m["d_loss"]) for m in logged)
  ck = Checkpointer(str(tmp_path / "run"))
  assert ck.latest_step() == 4
  resumed = loop.fit(obj.init, obj.step, _streams(), _cfg(2), ck, progress=False)
  ck.close()
  assert int(resumed.step) == 8
  _assert_bitwise_equal(full, resumed)

  variables = obj.variables(resumed)
  assert set(variables) == {"params", "batch_stats"}
  assert jax.tree.structure(variables["params"]) == jax.tree.structure(net.params["params"])
  logits, _ = net.apply(variables, net.preprocess(_streams()["in"]["x"][:4]))
  assert logits.shape == (4, 3) and obj.net is net

  obj.finish(resumed, str(tmp_path / "out"))
  with Image.open(tmp_path / "out" / gan_outliers.SAMPLES_FILE) as image:
    assert image.size == (8 * 34 + 2, 8 * 34 + 2) and image.mode == "RGB"
    pixels = np.asarray(image)
  assert pixels[2:34, 2:34].std() > 0 and not pixels[:2].any()


def test_sample_grid_layout():
  images = np.stack([np.full((2, 3, 1), v, np.uint8) for v in (10, 20, 30)])
  grid = gan_outliers.sample_grid(images, columns=2, pad=1, pad_value=255)
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
  assert (grid[1:3, 1:4] == 10).all() and (grid[1:3, 5:8] == 20).all()
  assert (grid[4:6, 1:4] == 30).all() and (grid[4:6, 5:8] == 255).all()
  assert (grid[0] == 255).all() and (grid[:, 4] == 255).all()
  with pytest.raises(ValueError, match="uint8"):
    gan_outliers.sample_grid(images.astype(np.float32))


@pytest.mark.parametrize("settings,match", [
    ({"beta": -0.1}, "beta"), ({"ngf": 0}, "ngf"), ({"nz": 2.5}, "nz"),
    ({"gan_b1": 1.0}, "gan_b1"), ({"gan_learning_rate": 0.0}, "gan_learning_rate"),
    ({"num_samples": 0}, "num_samples")])
def test_make_rejects_bad_settings(settings, match):
  with pytest.raises(ValueError, match=match):
    gan_outliers.make(_net(), optax.sgd(0.1), **settings)


def test_make_needs_a_32x32_image_net():
  head = Net(name="linear_head", module=TinyCNN(), params={}, resolution=None)
  with pytest.raises(ValueError, match="'linear_head'.*resolution None"):
    gan_outliers.make(head, optax.sgd(0.1))
