"""Tests for dlsr_jax.offline."""

import numpy as np
import pytest

from dlsr_jax.data import offline
from dlsr_jax.data import ImageSet

SETS = [("digits", "train"), ("digits", "test"), ("digits", "all"), ("letters", "train"),
        ("letters", "test"), ("photos", "train"), ("photos", "test"), ("noise", "train"),
        ("noise", "test")]


@pytest.mark.parametrize("name,split", SETS)
def test_shapes_dtypes_ranges_and_determinism(name, split):
  s = offline.load(name, split)
  assert isinstance(s, ImageSet) and s.name == f"offline:{name}:{split}"
  assert s.images.dtype == np.uint8 and s.images.ndim == 4
  assert s.images.shape[1:] == (32, 32, 3)
  assert s.labels.dtype == np.int64 and s.labels.shape == (len(s),)
  assert s.images.max() > 128  # uses the range, not all dark
  assert s.images.std() > 10  # not constant
  again = offline.load(name, split)
  np.testing.assert_array_equal(s.images, again.images)
  np.testing.assert_array_equal(s.labels, again.labels)


def test_sizes_and_labels():
  assert len(offline.load("digits", "all")) == 1797
  for name in ("letters", "photos", "noise"):
    assert len(offline.load(name)) == offline.DEFAULT_NUM
  assert len(offline.load("noise", num=12)) == 12
  assert len(offline.load("digits", "train", num=5)) == 5
  letters = offline.load("letters")
  assert set(letters.labels.tolist()) == set(range(10))
  assert set(offline.load("noise").labels.tolist()) == {0, 1, 2, 3}


def test_digits_look_like_mnist():
  d = offline.load("digits", "all").images
  np.testing.assert_array_equal(d[..., 0], d[..., 1])  # grey
  assert d[:, :4].max() == 0 and d[:, :, -4:].max() == 0  # dark 4-pixel margin
  assert np.median(d) < 20  # dark background, bright ink
  letters = offline.load("letters").images
  assert np.median(letters) < 20 and letters.max() > 200


def test_digits_split_disjoint_and_covering():
  idx = offline.digits_split_indices()
  train, test = idx["train"], idx["test"]
  assert len(train) + len(test) == 1797
  assert len(np.intersect1d(train, test)) == 0
  np.testing.assert_array_equal(np.union1d(train, test), np.arange(1797))
  labels_all = offline.load("digits", "all").labels
  # Stratified: every class is ~70 % train.
  for c in range(10):
    frac = np.isin(np.flatnonzero(labels_all == c), train).mean()
    assert abs(frac - 0.7) < 0.01
  tr = offline.load("digits", "train")
  al = offline.load("digits", "all")
  np.testing.assert_array_equal(tr.images, al.images[train])
  np.testing.assert_array_equal(tr.labels, al.labels[train])


def test_train_and_test_draws_differ():
  for name in ("letters", "photos", "noise"):
    a, b = offline.load(name, "train"), offline.load(name, "test")
    assert not np.array_equal(a.images, b.images)


def test_errors():
  with pytest.raises(ValueError, match="unknown offline data set 'mnist'.*digits"):
    offline.load("mnist")
  with pytest.raises(ValueError, match="unknown split 'val'.*train, test"):
    offline.load("noise", "val")
  with pytest.raises(ValueError, match="num"):
    offline.load("noise", num=0)
