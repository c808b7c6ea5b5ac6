"""Tests for dlsr_jax.data (sources and batching helpers)."""

import os
import sys
import time

import numpy as np
import pytest
from PIL import Image

from dlsr_jax import data
from dlsr_jax.data import folder as folder_source
from dlsr_jax.data import tfds as tfds_source


def _rand_images(n, h, w, c=3, seed=0):
  shape = (n, h, w) if c is None else (n, h, w, c)
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------------------
# npz


def test_npz_round_trip(tmp_path):
  images, labels = _rand_images(7, 5, 6), np.arange(7, dtype=np.int32)
  np.savez(tmp_path / "a.npz", images=images, labels=labels)
  s = data.load_images(f"npz:{tmp_path / 'a.npz'}")
  assert s.name == f"npz:{tmp_path / 'a.npz'}"
  np.testing.assert_array_equal(s.images, images)
  assert s.labels.dtype == np.int64 and list(s.labels) == list(range(7))
  assert len(s) == 7
  s = data.load_images(f"npz:{tmp_path / 'a.npz'}", limit=3, image_size=4)
  assert s.images.shape == (3, 4, 4, 3) and list(s.labels) == [0, 1, 2]


@pytest.mark.parametrize("c", [None, 1])
def test_npz_grayscale_and_default_labels(tmp_path, c):
  images = _rand_images(4, 8, 8, c)
  np.savez(tmp_path / "g.npz", images=images)
  s = data.load_images(f"npz:{tmp_path / 'g.npz'}")
  assert s.images.shape == (4, 8, 8, 3) and s.images.dtype == np.uint8
  for ch in range(3):
    np.testing.assert_array_equal(s.images[..., ch], images.reshape(4, 8, 8))
  assert s.labels.dtype == np.int64 and (s.labels == -1).all()


def test_npz_errors(tmp_path):
  t = time.time()
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    data.load_images(f"npz:{tmp_path / 'nope.npz'}")
  assert time.time() - t < 1.0
  np.savez(tmp_path / "k.npz", pics=_rand_images(2, 4, 4))
  with pytest.raises(ValueError, match="no 'images' array.*pics"):
    data.load_images(f"npz:{tmp_path / 'k.npz'}")
  np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="dtype uint8.*float32"):
    data.load_images(f"npz:{tmp_path / 'f.npz'}")
  np.savez(tmp_path / "s.npz", images=_rand_images(2, 4, 4, 2))
  with pytest.raises(ValueError, match=r"shape.*\(2, 4, 4, 2\)"):
    data.load_images(f"npz:{tmp_path / 's.npz'}")
  np.savez(tmp_path / "l.npz", images=_rand_images(2, 4, 4), labels=np.arange(3))
  with pytest.raises(ValueError, match="'labels' must be"):
    data.load_images(f"npz:{tmp_path / 'l.npz'}")
  np.savez(tmp_path / "e.npz", images=np.zeros((0, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="contains no images"):
    data.load_images(f"npz:{tmp_path / 'e.npz'}")


def test_bad_sources_and_arguments(tmp_path):
  with pytest.raises(ValueError, match="npz:, folder:, tfds:, offline:"):
    data.load_images("http://x")
  with pytest.raises(ValueError, match="SCHEME"):
    data.load_images("cifar10")
  np.savez(tmp_path / "a.npz", images=_rand_images(2, 4, 4))
  with pytest.raises(ValueError, match="image_size"):
    data.load_images(f"npz:{tmp_path / 'a.npz'}", image_size=0)
  with pytest.raises(ValueError, match="limit"):
    data.load_images(f"npz:{tmp_path / 'a.npz'}", limit=0)
  with pytest.raises(ValueError, match="uint8"):
    data.ImageSet(np.zeros((1, 2, 2, 3), np.float32), np.zeros(1, np.int64), "x")


# ---------------------------------------------------------------------------
# folder


def _save(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path)


def test_count_and_rows_match_the_full_load(tmp_path, monkeypatch):
  images, labels = _rand_images(9, 5, 6), np.arange(9)
  np.savez(tmp_path / "a.npz", images=images, labels=labels)
  src = f"npz:{tmp_path / 'a.npz'}"
  assert data.count_images(src) == 9 and data.count_images(src, limit=4) == 4
  full = data.load_images(src, image_size=8)
  part = data.load_images(src, image_size=8, rows=(2, 7))
  np.testing.assert_array_equal(part.images, full.images[2:7])
  np.testing.assert_array_equal(part.labels, full.labels[2:7])
  # A folder: only the files of the requested rows are read.
  for i in range(9):
    _save(str(tmp_path / "f" / f"{i}.png"), images[i])
  folder = f"folder:{tmp_path / 'f'}"
  assert data.count_images(folder) == 9 and data.count_images(folder, limit=20) == 9
  reads, read = [], folder_source._read_image
  monkeypatch.setattr(folder_source, "_read_image",
                      lambda p: reads.append(os.path.basename(p)) or read(p))
  part = data.load_images(folder, rows=(3, 5))
  assert reads == ["3.png", "4.png"]
  np.testing.assert_array_equal(part.images, images[3:5])
  off = data.load_images("offline:digits:test", limit=30)
  assert data.count_images("offline:digits:test", limit=30) == 30
  np.testing.assert_array_equal(
      data.load_images("offline:digits:test", limit=30, rows=(10, 30)).images, off.images[10:])
  with pytest.raises(ValueError, match=r"rows \[5, 12\) out of range .*9 images"):
    data.load_images(src, rows=(5, 12))
  with pytest.raises(ValueError, match=r"rows \[3, 5\) out of range .*with 4 images"):
    data.load_images(folder, limit=4, rows=(3, 5))
  with pytest.raises(ValueError, match="0 <= start < stop"):
    data.load_images(src, rows=(3, 3))
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    data.count_images(f"npz:{tmp_path / 'nope.npz'}")
  np.savez(tmp_path / "b.npz", pixels=images)
  with pytest.raises(ValueError, match="no 'images' array"):
    data.count_images(f"npz:{tmp_path / 'b.npz'}")
  with pytest.raises(ValueError, match="unknown data source scheme"):
    data.count_images("web:x")


def test_folder_flat(tmp_path):
  imgs = _rand_images(3, 6, 5)
  _save(str(tmp_path / "b.png"), imgs[1])
  _save(str(tmp_path / "a.PNG"), imgs[0])
  _save(str(tmp_path / "c.bmp"), imgs[2])
  (tmp_path / "notes.txt").write_text("not an image")
  _save(str(tmp_path / ".hidden.png"), imgs[0])
  s = data.load_images(f"folder:{tmp_path}")
  np.testing.assert_array_equal(s.images, imgs)  # lossless, sorted a, b, c
  assert (s.labels == -1).all()
  s = data.load_images(f"folder:{tmp_path}", image_size=8, limit=2)
  assert s.images.shape == (2, 8, 8, 3)
  expected = np.asarray(Image.fromarray(imgs[0]).resize((8, 8), Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(s.images[0], expected)


def test_folder_class_subfolders_mixed_formats_and_sizes(tmp_path):
  _save(str(tmp_path / "dog" / "1.jpg"), _rand_images(1, 20, 10)[0])
  _save(str(tmp_path / "dog" / "nested" / "0.png"), _rand_images(1, 12, 12, None)[0])
  _save(str(tmp_path / "cat" / "z.jpeg"), _rand_images(1, 9, 9)[0])
  rgba = np.concatenate([_rand_images(1, 9, 9)[0], np.full((9, 9, 1), 128, np.uint8)], -1)
  _save(str(tmp_path / "cat" / "a.webp"), rgba)
  os.makedirs(tmp_path / "empty_class")
  files, labels, classes = data.list_folder(str(tmp_path))
  assert classes == ["cat", "dog"]
  assert [os.path.relpath(f, tmp_path) for f in files] == [
      "cat/a.webp", "cat/z.jpeg", "dog/1.jpg", "dog/nested/0.png"]
  assert labels == [0, 0, 1, 1]
  with pytest.raises(ValueError, match="different sizes.*image_size"):
    data.load_images(f"folder:{tmp_path}")
  s = data.load_images(f"folder:{tmp_path}", image_size=16)
  assert s.images.shape == (4, 16, 16, 3) and s.images.dtype == np.uint8
  assert list(s.labels) == [0, 0, 1, 1]


def test_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing_dir"):
    data.load_images(f"folder:{tmp_path / 'missing_dir'}")
  os.makedirs(tmp_path / "empty" / "sub")
  (tmp_path / "empty" / "readme.txt").write_text("x")
  with pytest.raises(ValueError, match="contains no image files"):
    data.load_images(f"folder:{tmp_path / 'empty'}")
  _save(str(tmp_path / "mixed" / "a.png"), _rand_images(1, 4, 4)[0])
  _save(str(tmp_path / "mixed" / "cls" / "b.png"), _rand_images(1, 4, 4)[0])
  with pytest.raises(ValueError, match="mixes image files"):
    data.load_images(f"folder:{tmp_path / 'mixed'}")
  _save(str(tmp_path / "bad" / "a.png"), _rand_images(1, 4, 4)[0])
  (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError, match="broken.png"):
    data.load_images(f"folder:{tmp_path / 'bad'}")


# ---------------------------------------------------------------------------
# offline


def test_offline_via_load_images():
  s = data.load_images("offline:digits:train", limit=10, image_size=16)
  assert s.images.shape == (10, 16, 16, 3) and s.name == "offline:digits:train"
  s = data.load_images("offline:noise")
  assert s.images.shape == (500, 32, 32, 3)
  with pytest.raises(ValueError, match="valid names: digits"):
    data.load_images("offline:cifar")


# ---------------------------------------------------------------------------
# tfds (only mocked data or empty data dirs: never the network)


def test_tfds_mock_cifar10_and_mnist(tmp_path, no_network):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=6):
    s = data.load_images("tfds:cifar10:test", tfds_data_dir=str(tmp_path))
    assert s.images.shape == (6, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.labels.dtype == np.int64 and ((0 <= s.labels) & (s.labels < 10)).all()
    m = data.load_images("tfds:mnist:test[:50%]", tfds_data_dir=str(tmp_path), limit=4)
    assert m.images.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(m.images[..., 0], m.images[..., 2])
    m = data.load_images("tfds:mnist:train", image_size=32)
    assert m.images.shape == (6, 32, 32, 3)


def test_tfds_mock_variable_size(no_network):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="different sizes.*image_size"):
      data.load_images("tfds:dtd:test")
    s = data.load_images("tfds:dtd:test", image_size=20)
    assert s.images.shape == (4, 20, 20, 3)
    with pytest.raises(ValueError, match="no feature 'img'"):
      data.load_images("tfds:dtd:test", image_key="img")


def test_tfds_real_prepared_dataset(tmp_path, monkeypatch, no_network):
  """Non-mocked path on a dataset prepared offline (tfds' own DummyMnist)."""
  import importlib.resources
  import importlib.resources.abc  # noqa: F401
  import tensorflow_datasets as tfds
  try:
    import importlib_resources  # noqa: F401
  except ImportError:  # tfds 4.9.10 needs it to prepare data but does not declare it
    monkeypatch.setitem(sys.modules, "importlib_resources", importlib.resources)
  builder = tfds.testing.DummyMnist(data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert builder.is_prepared()
  s = data.load_images("tfds:dummy_mnist:train", tfds_data_dir=str(tmp_path))
  assert s.images.shape == (20, 28, 28, 3) and s.labels.shape == (20,)
  np.testing.assert_array_equal(s.images[..., 0], s.images[..., 1])
  first = data.load_images("tfds:dummy_mnist:train[:5]", tfds_data_dir=str(tmp_path))
  np.testing.assert_array_equal(first.images, s.images[:5])  # deterministic order
  np.testing.assert_array_equal(first.labels, s.labels[:5])
  lim = data.load_images("tfds:dummy_mnist:test", tfds_data_dir=str(tmp_path), limit=3,
                         image_size=32)
  assert lim.images.shape == (3, 32, 32, 3)
  # Counting without decoding, and one process's rows of the set.
  count = lambda src, **kw: data.count_images(src, tfds_data_dir=str(tmp_path), **kw)
  assert count("tfds:dummy_mnist:train") == 20 and count("tfds:dummy_mnist:train[:5]") == 5
  assert count("tfds:dummy_mnist:train", limit=7) == 7
  part = data.load_images("tfds:dummy_mnist:train", tfds_data_dir=str(tmp_path), rows=(6, 13))
  np.testing.assert_array_equal(part.images, s.images[6:13])
  np.testing.assert_array_equal(part.labels, s.labels[6:13])
  with pytest.raises(ValueError, match=r"rows \[15, 25\) out of range.*fewer than 25"):
    data.load_images("tfds:dummy_mnist:train", tfds_data_dir=str(tmp_path), rows=(15, 25))
  # Damaged prepared data (a truncated dataset_info.json): one ValueError naming the data set,
  # the folder and the fix, not tfds' AssertionError / protobuf ParseError.
  (info,) = tmp_path.glob("dummy_mnist/*/dataset_info.json")
  info.write_text(info.read_text()[:40])
  with pytest.raises(ValueError, match=r"TFDS data of 'dummy_mnist' in .* cannot be read .*"
                     r"damaged: rebuild it with `tfds build dummy_mnist`") as e:
    data.count_images("tfds:dummy_mnist:train", tfds_data_dir=str(tmp_path))
  assert str(tmp_path) in str(e.value)


def test_tfds_unprepared_fails_fast_without_download(tmp_path, monkeypatch, no_network):
  import tensorflow_datasets as tfds

  def no_download(*args, **kwargs):
    raise AssertionError("download_and_prepare must never be called")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
  t = time.time()
  with pytest.raises(FileNotFoundError) as e:
    data.load_images("tfds:svhn_cropped:test", tfds_data_dir=str(tmp_path))
  assert time.time() - t < 10.0
  msg = str(e.value)
  assert "svhn_cropped" in msg and str(tmp_path) in msg and "tfds build" in msg
  assert "--config.data.tfds_data_dir=DIR" in msg and " (--tfds_data_dir)" not in msg
  with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
    data.load_images("tfds:no_such_dataset_xyz:test", tfds_data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="tfds:NAME:SPLIT"):
    data.load_images("tfds:cifar10")
  assert tfds_source.parse("cifar10:3.0.2:test[:10%]") == ("cifar10:3.0.2", "test[:10%]")
  assert tfds_source.parse("mnist:test[:50%]") == ("mnist", "test[:50%]")


# ---------------------------------------------------------------------------
# batching


@pytest.mark.parametrize("n,bs", [(10, 4), (8, 4), (3, 5), (1, 1), (0, 3)])
def test_iterate_eval_batches_covers_all_once(n, bs):
  batches = list(data.iterate_eval_batches(n, bs))
  assert len(batches) == -(-n // bs)
  seen = []
  for idx, mask in batches:
    assert idx.shape == (bs,) and mask.shape == (bs,) and mask.dtype == bool
    assert ((0 <= idx) & (idx < n)).all()
    assert mask[:mask.sum()].all()  # valid entries first
    seen.extend(idx[mask].tolist())
  assert seen == list(range(n))
  with pytest.raises(ValueError, match="batch_size"):
    list(data.iterate_eval_batches(4, 0))


def test_pad_batch():
  tree = {"x": np.arange(6).reshape(3, 2), "y": [np.array([1, 2, 3])]}
  padded, mask = data.pad_batch(tree, 5)
  assert padded["x"].shape == (5, 2) and padded["y"][0].tolist() == [1, 2, 3, 3, 3]
  np.testing.assert_array_equal(padded["x"][3:], [[4, 5], [4, 5]])
  assert mask.tolist() == [True, True, True, False, False]
  same, mask = data.pad_batch(np.ones((4, 1)), 4)
  assert same.shape == (4, 1) and mask.all()
  with pytest.raises(ValueError, match="leading size"):
    data.pad_batch({"a": np.ones(2), "b": np.ones(3)}, 4)
  with pytest.raises(ValueError, match="leading size 5"):
    data.pad_batch(np.ones(5), 4)


def test_train_batch_indices_deterministic_and_disjoint():
  n, bs = 103, 8
  full = data.train_batch_indices(n, bs, epoch=2, seed=7)
  assert full.shape == (n // bs, bs) and full.dtype == np.int64
  assert len(np.unique(full)) == full.size  # no repeats; remainder dropped
  np.testing.assert_array_equal(full, data.train_batch_indices(n, bs, epoch=2, seed=7))
  assert not np.array_equal(full, data.train_batch_indices(n, bs, epoch=3, seed=7))
  assert not np.array_equal(full, data.train_batch_indices(n, bs, epoch=2, seed=8))
  parts = [data.train_batch_indices(n, bs, 2, 7, process_index=p, process_count=4)
           for p in range(4)]
  for p in parts:
    assert p.shape == (n // bs, 2)
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), full)
  for step in range(full.shape[0]):
    sets = [set(p[step]) for p in parts]
    assert sum(map(len, sets)) == len(set().union(*sets)) == bs
  with pytest.raises(ValueError, match="not divisible by process_count 3"):
    data.train_batch_indices(n, bs, 0, 0, process_count=3)
  with pytest.raises(ValueError, match="smaller than one global batch"):
    data.train_batch_indices(5, 8, 0, 0)
  with pytest.raises(ValueError, match="process_index"):
    data.train_batch_indices(n, bs, 0, 0, process_index=2, process_count=2)
