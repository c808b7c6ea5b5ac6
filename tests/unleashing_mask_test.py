"""Unleashing Mask: the loss, the masks, the b estimate, UM and UMAP training."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlsr_jax.models.net import Net
from dlsr_jax.objectives import unleashing_mask as um
from dlsr_jax.training import loop
from dlsr_jax.training.checkpoint import Checkpointer

N, B = 48, 16     # 3 steps per epoch


class TinyCNN(nn.Module):
  """conv - BatchNorm - relu - pool - dense, as in training_test."""
  features: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.features, (3, 3), name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
    pre = jnp.mean(x, axis=(1, 2))
    return nn.Dense(3, name="fc")(pre), {"pre_logits": pre}


@functools.cache
def _net(features=4) -> Net:
  module = TinyCNN(features)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  # Non-trivial running statistics, so eval mode differs from train mode.
  stats = jax.tree.map(lambda v: v + 0.1, variables["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": stats}
  return Net(name="tiny", module=module, params=variables, resolution=8,
             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _data(n=N, seed=0):
  rng = np.random.default_rng(seed)
  return {"in": {"x": rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8),
                 "y": rng.integers(0, 3, n).astype(np.int32)}}


def _cfg(epochs=1):
  return loop.FitConfig(batch_size=B, num_epochs=epochs, seed=3, log_every_steps=100,
                        lr_reference_steps=None)


def _np_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


def test_loss_is_abs_ce_minus_b_plus_b_and_ascends_below_b():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [-3.0, 4.0, 1.0]])
  labels = jnp.array([0, 2, 1])
  ce_np = _np_ce(logits, labels).mean()
  ce_of = lambda z: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, labels))
  for b in (0.5 * ce_np, 2.0 * ce_np):
    got = um.loss(ce_of(logits), b)
    np.testing.assert_allclose(got, abs(ce_np - b) + b, rtol=1e-6)
  g_ce = jax.grad(ce_of)(logits)
  g_above = jax.grad(lambda z: um.loss(ce_of(z), 0.5 * ce_np))(logits)   # ce > b: descent
  g_below = jax.grad(lambda z: um.loss(ce_of(z), 2.0 * ce_np))(logits)   # ce < b: ascent
  np.testing.assert_allclose(g_above, g_ce, rtol=1e-6)
  np.testing.assert_allclose(g_below, -g_ce, rtol=1e-6)


def test_random_mask_drops_exactly_per_kernel_and_never_biases_or_bn():
  params = _net(features=40).params["params"]     # conv 3*3*3*40 = 1080, fc 40*3 = 120
  kernels = jax.tree_util.tree_leaves_with_path(um.kernel_leaves(params))
  assert sum(bool(k) for _, k in kernels) == 2
  mask = um.random_mask(jax.random.key(0), params)
  flat = jax.tree_util.tree_leaves_with_path(mask)
  for (path, m), (_, p) in zip(flat, jax.tree_util.tree_leaves_with_path(params)):
    assert m.shape == p.shape and m.dtype == bool
    if um.is_kernel(path, p):
      assert int(np.sum(~np.asarray(m))) == round(0.035 * p.size), path
    else:
      assert np.all(np.asarray(m)), path
  other = um.random_mask(jax.random.key(1), params)
  assert not np.array_equal(other["conv"]["kernel"], mask["conv"]["kernel"])
  masked = um.masked_copy(params, mask)
  np.testing.assert_array_equal(masked["conv"]["kernel"],
                                np.where(mask["conv"]["kernel"], params["conv"]["kernel"], 0))
  for name in ("bias", "scale"):
    np.testing.assert_array_equal(masked["bn"][name], params["bn"][name])
  np.testing.assert_array_equal(masked["fc"]["bias"], params["fc"]["bias"])


def test_estimate_b_is_the_masked_nets_mean_eval_ce_and_is_stored(tmp_path):
  net, data = _net(), _data(40)
  x, y = data["in"]["x"], data["in"]["y"]
  key = jax.random.key(7)
  b = um.estimate_b(net, x, y, key=key, batch_size=16)     # 3 batches, the last one padded
  params = um.masked_copy(net.params["params"], um.random_mask(key, net.params["params"]))
  logits, _ = net.apply({"params": params, "batch_stats": net.params["batch_stats"]},
                        net.preprocess(x))
  assert isinstance(b, float)
  np.testing.assert_allclose(b, _np_ce(logits, y).mean(), rtol=1e-5)
  dense_logits, _ = net.apply(net.params, net.preprocess(x))
  assert abs(b - _np_ce(dense_logits, y).mean()) > 1e-6      # the mask does something

  wd = str(tmp_path)
  um.make(net, optax.sgd(0.1), data=data, workdir=wd, seed=2)
  with open(os.path.join(wd, um.B_FILE)) as f:
    saved = json.load(f)
  want = um.estimate_b(net, x, y, key=jax.random.fold_in(jax.random.key(2), um.B_KEY_TAG))
  assert saved == {"b": want, "mask_drop": 0.035, "seed": 2, "num_images": 40}
  saved["b"] = 1.25                       # a re-run reads the file instead of re-estimating
  with open(os.path.join(wd, um.B_FILE), "w") as f:
    json.dump(saved, f)
  obj = um.make(net, optax.sgd(0.0), data=data, workdir=wd, seed=2)
  _, metrics = jax.jit(obj.step)(obj.init(jax.random.key(0)), _batch(data), jax.random.key(1))
  assert float(metrics["b"]) == 1.25
  with pytest.raises(ValueError, match="seed 2 there, 3 now"):
    um.make(net, optax.sgd(0.1), data=data, workdir=wd, seed=3)
  with pytest.raises(ValueError, match="num_images 40 there, 48 now"):
    um.make(net, optax.sgd(0.1), data=_data(48), workdir=wd, seed=2)
  with pytest.raises(ValueError, match="mask_drop"):
    um.make(net, optax.sgd(0.1), data=data, workdir=wd, seed=2, mask_drop=0.05)
  with pytest.raises(ValueError, match="neither b nor data"):
    um.make(net, optax.sgd(0.1))
  for bad in ({"mask_drop": 0.0}, {"keep": 1.5}, {"b": -0.1}, {"score_init": "x"}):
    with pytest.raises(ValueError):
      um.make(net, optax.sgd(0.1), **{"b": 1.0, **bad})


def _batch(data, n=B):
  return {"in": {k: jnp.asarray(v[:n]) for k, v in data["in"].items()}}


def test_topk_mask_keeps_exactly_round_keep_n_even_with_ties():
  scores = {"a": {"kernel": jnp.array([[0.0, -3.0], [1.0, 1.0], [1.0, 2.0]])},
            "b": {"kernel": jnp.ones((5, 7))}}
  masks = um.topk_mask(scores, 0.5)
  np.testing.assert_array_equal(masks["a"]["kernel"], [[0, 1], [0, 0], [1, 1]])
  assert float(masks["b"]["kernel"].sum()) == round(0.5 * 35)


def test_umap_freezes_weights_learns_exact_masks_and_exports_a_dense_net(tmp_path):
  net, data = _net(), _data()
  obj = um.make(net, optax.sgd(0.5, momentum=0.9), b=0.5, prune=True)
  assert obj.name == "unleashing_mask_prune" and obj.net is net
  init = obj.init(jax.random.key(0))
  w0 = jax.device_get(init.extra["weights"])
  s0 = jax.device_get(init.params)
  assert set(s0) == {"conv", "fc"} and set(s0["conv"]) == {"kernel"}
  np.testing.assert_array_equal(s0["fc"]["kernel"], np.abs(w0["fc"]["kernel"]))
  state = loop.fit(obj.init, obj.step, data, _cfg(epochs=2), None, progress=False)
  assert int(state.step) == 6
  ck = Checkpointer(str(tmp_path))       # a run killed after one epoch resumes exactly
  loop.fit(obj.init, obj.step, data, _cfg(epochs=1), ck, progress=False)
  ck.close()
  ck = Checkpointer(str(tmp_path))
  resumed = loop.fit(obj.init, obj.step, data, _cfg(epochs=2), ck, progress=False)
  ck.close()
  for u, v in zip(jax.tree.leaves(state), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(u, v)
  w = jax.device_get(state.extra["weights"])
  assert jax.tree.structure(w) == jax.tree.structure(w0)
  for u, v in zip(jax.tree.leaves(w0), jax.tree.leaves(w)):
    assert np.array_equal(u, v)
  scores = jax.device_get(state.params)
  assert not np.array_equal(scores["conv"]["kernel"], s0["conv"]["kernel"])
  masks = jax.device_get(um.topk_mask(state.params, 0.8))
  for name in ("conv", "fc"):
    m = masks[name]["kernel"]
    assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() == round(0.8 * m.size)
  out = jax.device_get(obj.export(state))
  assert set(out) == {"params", "batch_stats"}
  for name in ("conv", "fc"):
    np.testing.assert_array_equal(out["params"][name]["kernel"],
                                  w0[name]["kernel"] * masks[name]["kernel"])
  np.testing.assert_array_equal(out["params"]["fc"]["bias"], w0["fc"]["bias"])
  for name in ("bias", "scale"):
    np.testing.assert_array_equal(out["params"]["bn"][name], w0["bn"][name])
  # Running statistics were updated (train-mode BatchNorm of the pruned net).
  assert not np.array_equal(out["batch_stats"]["bn"]["mean"],
                            np.asarray(net.params["batch_stats"]["bn"]["mean"]))
  logits, _ = net.apply(out, net.preprocess(data["in"]["x"]))    # a plain dense net
  assert logits.shape == (N, 3) and np.all(np.isfinite(logits))


def test_umap_straight_through_gradient_and_kaiming_init():
  net = _net()
  weights = net.params["params"]
  scores = um.kernels_of(jax.tree.map(lambda w: -2.0 * w, weights))   # negative-signed
  g = jax.grad(lambda s: jnp.sum(jax.tree.leaves(um.pruned_kernels(weights, s, 0.5))[0]))(
      scores)
  # d sum(w * mask) / d mask = w, handed to |s| unchanged: d / d s = w * sign(s).
  want = weights["conv"]["kernel"] * jnp.sign(scores["conv"]["kernel"])
  np.testing.assert_allclose(g["conv"]["kernel"], want, rtol=1e-6)
  obj = um.make(net, optax.sgd(0.1), b=0.5, prune=True, score_init="kaiming", seed=4)
  s = jax.device_get(obj.init(jax.random.key(0)).params)
  fan_in = 3 * 3 * 3
  assert np.abs(s["conv"]["kernel"]).max() <= np.sqrt(6.0 / fan_in)
  assert not np.array_equal(np.abs(s["conv"]["kernel"]), np.abs(weights["conv"]["kernel"]))
  # With an EMA, the EMA scores are trained alongside and export masks with them.
  obj = um.make(net, optax.sgd(1.0), b=0.5, prune=True, ema_decay=0.5)
  state, _ = jax.jit(obj.step)(obj.init(jax.random.key(0)), _batch(_data()), jax.random.key(1))
  assert state.ema_params is not None
  ema_masks = um.topk_mask(state.ema_params, 0.8)
  np.testing.assert_array_equal(obj.export(state)["params"]["conv"]["kernel"],
                                weights["conv"]["kernel"] * ema_masks["conv"]["kernel"])


def test_um_fine_tunes_all_params_towards_b_and_reports_it():
  net, data = _net(), _data()
  obj = um.make(net, optax.sgd(0.05), data=data, seed=0)
  assert obj.name == "unleashing_mask" and obj.net is net
  state = obj.init(jax.random.key(0))
  step = jax.jit(obj.step)
  metrics = []
  for i in range(3):
    state, m = step(state, _batch(_data(B, seed=i)), jax.random.key(i))
    metrics.append(jax.device_get(m))
  assert {"loss", "ce", "accuracy", "b", "grad_norm"} <= set(metrics[0])
  b = um.estimate_b(net, data["in"]["x"], data["in"]["y"],
                    key=jax.random.fold_in(jax.random.key(0), um.B_KEY_TAG))
  np.testing.assert_allclose(metrics[0]["b"], b, rtol=1e-6)
  np.testing.assert_allclose(metrics[0]["loss"], abs(metrics[0]["ce"] - b) + b, rtol=1e-5)
  moved = [not np.array_equal(u, v) for u, v in
           zip(jax.tree.leaves(net.params["params"]), jax.tree.leaves(state.params))]
  assert all(moved)
  # Below b the step ascends: with b far above the CE, the CE grows.
  obj = um.make(net, optax.sgd(0.05), b=10.0, augment=False)
  state, batch = obj.init(jax.random.key(0)), _batch(data)
  ce = []
  for i in range(3):
    state, m = jax.jit(obj.step)(state, batch, jax.random.key(i))
    ce.append(float(m["ce"]))
  assert ce[-1] > ce[0]
