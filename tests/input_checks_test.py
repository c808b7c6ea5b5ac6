"""Bad inputs get a clear error naming the problem (or are handled correctly)."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from dlsr_jax import data, features
from dlsr_jax.evaluation import metrics
from experiments import build, validate
from experiments.configs import quickstart


def test_empty_npz_is_named_before_any_resize(tmp_path):
  p = tmp_path / "empty.npz"
  np.savez(p, images=np.zeros((0, 8, 8, 3), np.uint8))
  for size in (None, 32):
    with pytest.raises(ValueError, match=rf"data source 'npz:{p}' contains no images"):
      data.load_images(f"npz:{p}", image_size=size)


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
  a = np.array([[0, 65535, 32768], [1000, 257, 65278]], np.uint16)
  Image.fromarray(a).save(tmp_path / "deep.png")
  assert Image.open(tmp_path / "deep.png").mode.startswith("I")
  s = data.load_images(f"folder:{tmp_path}")
  assert s.images.shape == (1, 2, 3, 3) and s.images.dtype == np.uint8
  np.testing.assert_array_equal(s.images[0, ..., 0], [[0, 255, 128], [4, 1, 254]])
  np.testing.assert_array_equal(s.images[0, ..., 0], s.images[0, ..., 2])


def _config(**changes):
  c = quickstart.get_config("tiny")
  for key, value in changes.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return c


@pytest.mark.parametrize("key,value,message", [
    ("model.dtype", "float8", "--config.model.dtype='float8': must be one of ('float32', "
                              "'bfloat16', 'float16', 'bf16_matmul')"),
    ("backbone_dtype", "bf16_matmul", "--config.backbone_dtype='bf16_matmul': must be one of"),
    ("backbone_dtype", "float8", "--config.backbone_dtype='float8': must be one of"),
    ("resolution", 8, "--config.resolution=8: must be 0 (the backbone's own) or an int >= 32"),
    ("resolution", -64, "--config.resolution=-64: must be 0"),
    ("eval.batch_size", 0, "--config.eval.batch_size=0: must be an int >= 1"),
    ("eval.batch_size", -4, "--config.eval.batch_size=-4: must be an int >= 1"),
    ("train.batch_size", 0, "--config.train.batch_size=0: must be an int >= 1"),
    ("feature_batch_size", -1, "--config.feature_batch_size=-1: must be an int >= 1"),
    ("eval.ks", (0, 3), "--config.eval.ks=(0, 3): ks must lie in 1..99"),
    ("eval.ks", (2, 100), "--config.eval.ks=(2, 100): ks must lie in 1..99"),
    ("schedule.kind", "cosin", "--config.schedule.kind='cosin': must be one of"),
    ("schedule.num_steps", 1, "--config.schedule.num_steps=1: must be an int >= 2"),
    ("schedule.beta_end", 0.001, "need 0 < beta_start < beta_end < 1"),
    ("eval.rows", "knn,mahalanobs", "unknown rows ['mahalanobs']"),
    ("eval.lr_orientation", "up", "--config.eval.lr_orientation='up': must be one of"),
    ("backbone", "efficientnet_lite9", "--config.backbone='efficientnet_lite9': must be one"),
])
def test_config_errors_name_the_key_and_what_is_allowed(key, value, message):
  build.validate_config(_config())          # the tiny config itself is fine
  with pytest.raises(ValueError, match="invalid config") as err:
    build.validate_config(_config(**{key: value}))
  assert message in str(err.value), str(err.value)


def test_the_lfdn_takes_bf16_matmul():
  """The opt-in bf16-dot LFDN (`lfdn.BF16_MATMUL`) passes the checks and reaches the row."""
  plan = build.validate_config(_config(**{"model.dtype": "bf16_matmul"}))
  assert plan.rows["dlsr"].settings["dtype"] == "bf16_matmul"


def test_all_problems_in_one_message():
  c = _config(**{"model.dtype": "float8", "eval.batch_size": 0, "resolution": 8})
  lines = validate.problems(build.config_record(c))
  assert len(lines) == 3, lines


def test_feature_spec_rejects_tiny_resolutions():
  for res in (8, -64, 0):
    with pytest.raises(ValueError, match=r"feature resolution must be an int >= 32"):
      features.FeatureSpec(resolution=res)


def test_damaged_or_nan_feature_cache_entry_is_recomputed_with_a_warning(tmp_path, caplog):
  cache = features.FeatureCache(str(tmp_path))
  key = {"dataset": "npz:x.npz", "images": "abc"}
  z = np.ones((4, 3), np.float32)
  path = cache.save(key, z, (0, 3))
  np.testing.assert_array_equal(cache.load(key)[0], z)
  caplog.set_level("WARNING")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  assert cache.load(key) is None
  assert f"cache file {path} is damaged" in caplog.text
  z[1, 2] = np.nan
  cache.save(key, z, (0, 3))
  assert cache.load(key) is None
  assert f"cache file {path} holds 1 NaN/inf values" in caplog.text


def test_one_image_sets_warn_that_the_metrics_are_meaningless():
  with pytest.warns(RuntimeWarning, match="set of one input AUROC is 0, 0.5 or 1 by chance"):
    assert metrics.auroc([0.1], [0.2, 0.3]) == 1.0
  with pytest.warns(RuntimeWarning, match="1 ID and 1 OOD"):
    metrics.compute_all([0.1], [0.2])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    metrics.auroc([0.1, 0.2], [0.2, 0.3])


@pytest.mark.parametrize("key,value,message", [
    ("eval.batch_size", 0, "--config.eval.batch_size=0: must be an int >= 1"),
    ("eval.ks", (0, 3), "--config.eval.ks=(0, 3): ks must lie in 1..99"),
    ("schedule.kind", "cosin", "--config.schedule.kind='cosin': must be one of"),
])
def test_evaluate_rejects_batch_size_k_and_schedule_before_any_extraction(
    key, value, message, tmp_path, monkeypatch):
  """Issue 10, seen 7: these errors came only after minutes of feature extraction."""
  from dlsr_jax.evaluation import inputs as inputs_lib  # pylint: disable=g-import-not-at-top
  from experiments import evaluation, run  # pylint: disable=g-import-not-at-top

  def no_work(*args, **kwargs):
    raise AssertionError("work started before the config was checked")

  monkeypatch.setattr(features, "extract", no_work)
  monkeypatch.setattr(inputs_lib, "load_backbone", no_work)
  monkeypatch.setattr(evaluation.arrays, "ArrayStore", no_work)
  with pytest.raises(ValueError, match="invalid config:") as err:
    run.evaluate(_config(**{key: value}), str(tmp_path))
  assert message in str(err.value) and not os.listdir(tmp_path)
