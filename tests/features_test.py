import dataclasses
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dlsr_jax import features
from dlsr_jax.backbones.base import Backbone


class _TwoLevelNet(nn.Module):
  """A tiny backbone with the Backbone module contract (stride 2 and 4 levels)."""

  @nn.compact
  def __call__(self, x, with_head=False):
    a = nn.relu(nn.Conv(4, (3, 3), strides=2, name="c1")(x))
    b = nn.relu(nn.Conv(6, (3, 3), strides=2, name="c2")(a))
    return None, {"level1": a, "level2": b}


def _tiny_backbone(resolution=32):
  m = _TwoLevelNet()
  params = m.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)))
  return Backbone(name="tiny", module=m, params=params, resolution=resolution,
                  level_names=("level1", "level2"), level_channels=(4, 6),
                  default_layers=(0, 1), weights_id="test", has_head=False)


def _images(n, size=20, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_zscore_is_per_sample_unbiased():
  f = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, (5, 7)), jnp.float32)
  z = np.asarray(features.zscore(f))
  np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-5)
  raw = np.asarray(f)
  want = (raw - raw.mean(1, keepdims=True)) / (raw.std(1, ddof=1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hw,target", [((28, 28), (14, 14)), ((7, 7), (14, 14)), ((56, 40), (14, 14))])
def test_dlsr_pooling_equals_align_corners_resize_then_mean(hw, target):
  x = np.random.default_rng(1).normal(size=(2, *hw, 3)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=target,
                                        mode="bilinear", align_corners=True).mean(dim=(2, 3))
  got = features.pool_map(jnp.asarray(x), "dlsr", target)
  np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(features.pool_map(jnp.asarray(x), "gap"), x.mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)


def test_extract_pads_last_batch_and_matches_per_image():
  bb = _tiny_backbone()
  imgs = _images(5)
  z, bounds = features.extract(bb, imgs, batch_size=2, progress=False)
  assert z.shape == (5, 10) and bounds == (0, 4, 10)
  z1, _ = features.extract(bb, imgs[3:4], batch_size=1, progress=False)
  np.testing.assert_allclose(z[3], z1[0], rtol=1e-5, atol=1e-5)
  for lo, hi in zip(bounds[:-1], bounds[1:]):   # each layer is z-scored on its own
    np.testing.assert_allclose(z[:, lo:hi].mean(axis=1), 0, atol=1e-4)
  only2, b2 = features.extract(bb, imgs, batch_size=4, spec=features.FeatureSpec(layers=(1,)),
                               progress=False)
  assert b2 == (0, 6)
  np.testing.assert_allclose(only2, z[:, 4:], rtol=1e-5, atol=1e-5)


def test_extract_errors():
  bb = _tiny_backbone()
  with pytest.raises(ValueError, match="empty"):
    features.extract(bb, np.zeros((0, 8, 8, 3), np.uint8), progress=False)
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    features.extract(bb, np.zeros((2, 8, 8), np.uint8), progress=False)
  with pytest.raises(ValueError, match="layers"):
    features.extract(bb, _images(2), spec=features.FeatureSpec(layers=(2,)), progress=False)
  with pytest.raises(ValueError, match="pooling"):
    features.FeatureSpec(pooling="max")


def test_cache_hit_miss_and_key(tmp_path):
  bb = _tiny_backbone()
  cache = features.FeatureCache(str(tmp_path))
  imgs = _images(6)
  z, b, cached = features.extract_cached(bb, imgs, "npz:x.npz", cache, 4, progress=False)
  assert not cached and len(list(tmp_path.iterdir())) == 1
  z2, b2, cached2 = features.extract_cached(bb, imgs, "npz:x.npz", cache, 4, progress=False)
  assert cached2 and b2 == b
  np.testing.assert_array_equal(z, z2)
  # Different pixels, pooling or dataset name -> a different entry.
  # Another layer selection is an exact slice of the same entry (no backbone run).
  z_last, b_last, c_last = features.extract_cached(bb, imgs, "npz:x.npz", cache, 4,
                                                   features.FeatureSpec(layers=(1,)),
                                                   progress=False)
  assert c_last and b_last == (0, 6)
  np.testing.assert_array_equal(z_last, z[:, 4:])
  direct, _ = features.extract(bb, imgs, 4, features.FeatureSpec(layers=(1,)), progress=False)
  np.testing.assert_allclose(z_last, direct, rtol=1e-6, atol=1e-6)
  _, _, c3 = features.extract_cached(bb, _images(6, seed=1), "npz:x.npz", cache, 4, progress=False)
  _, _, c4 = features.extract_cached(bb, imgs, "npz:x.npz", cache, 4,
                                     features.FeatureSpec(pooling="dlsr"), progress=False)
  _, _, c5 = features.extract_cached(bb, imgs, "npz:y.npz", cache, 4, progress=False)
  # Another input normalisation changes the features: a new entry as well.
  renorm = dataclasses.replace(bb, mean=(0.5,) * 3, std=(0.5,) * 3)
  z6, _, c6 = features.extract_cached(renorm, imgs, "npz:x.npz", cache, 4, progress=False)
  assert not (c3 or c4 or c5 or c6) and len(list(tmp_path.iterdir())) == 5
  assert not np.allclose(z6, z)
