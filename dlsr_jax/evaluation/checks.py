"""Checks of a run's data before any long work: source counts, batch sizes, training labels,
training streams disjoint from the test sets.

They take plain values and the caller's config keys (so each message names the key to fix),
never a config: `experiments.runner` passes the keys of its plan.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from dlsr_jax import cache as cache_lib
from dlsr_jax.evaluation.arrays import ArrayStore


def count_sources(sources: Mapping[str, str], keys: Mapping[str, str],
                  count: Callable[[str], int]) -> dict[str, int]:
  """{set name: count(source)} of every source (no decoding).

  Raises:
    FileNotFoundError / ValueError: one line naming the set's key (`keys[name]`) and source.
  """
  counts = {}
  for name, source in sources.items():
    try:
      counts[name] = count(source)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"{keys[name]} = {source!r}: {e}") from None
    except (OSError, ValueError, KeyError, AssertionError) as e:
      raise ValueError(f"{keys[name]} = {source!r} cannot be read: {type(e).__name__}: {e}"
                       ) from None
  return counts


def check_batch_sizes(batch_sizes: Mapping[str, int], n: int, train: str) -> None:
  """Every {key: batch size} must be at most the `n` images of the training set `train`."""
  for key, bs in batch_sizes.items():
    if int(bs) > n:
      raise ValueError(f"{key} = {bs} is more than the {n} images of data.train ({train}): "
                       "lower it")


def check_labels(y: np.ndarray, train: str, users: Sequence[str],
                 num_classes: Mapping[str, tuple[int, str]]) -> None:
  """The labels `y` of the training set `train` must all be in 0..k-1 for every net
  {name: (k, its num_classes key)}; `users` ("net a", "row b") name who trains on them."""
  y = np.asarray(y)
  users = ", ".join(users)
  if y.size == 0 or np.all(y < 0):
    raise ValueError(f"data.train has no labels ({train}: every label is -1); "
                     f"{users} train(s) on them: give a labelled training set")
  if np.any(y < 0):
    raise ValueError(f"data.train ({train}) has {int(np.sum(y < 0))} unlabelled images "
                     f"(label -1) among {y.size}; {users} train(s) on the labels")
  for n, (k, key) in num_classes.items():
    if int(y.max()) >= k:
      raise ValueError(f"labels of data.train lie in {int(y.min())}..{int(y.max())}; net {n} "
                       f"has num_classes={k} ({key})")


def check_not_a_test_set(store: ArrayStore, tests: Mapping[str, tuple[str, str]],
                         key: str, source: str, images: np.ndarray) -> None:
  """A training stream must not hold the images of a test set (the same file under another
  name, a symlink or a copy): compares the images' digest with every test set's
  ({name: (its key, its source)})."""
  digest = cache_lib.images_digest(np.asarray(images))
  for name, (test_key, test_source) in tests.items():
    store.sources.setdefault(name, test_source)
    other = store.image_set(name).images
    if other.shape == images.shape and cache_lib.images_digest(np.asarray(other)) == digest:
      raise ValueError(f"{key} = {source!r} holds the same images as the test set "
                       f"{test_key} = {test_source!r}: training data must be "
                       "disjoint from the test sets")
