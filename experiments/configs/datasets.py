"""Data sources of every ID and OOD set the benchmark protocols use, in one place.

Sources are `dlsr_jax.data` strings. Sets that TFDS builds are `tfds:NAME:SPLIT`
(prepare them once with `tfds build NAME --data_dir=DIR` on a machine with network
and pass `--config.data.tfds_data_dir=DIR`); sets the literature distributes as
image folders are `folder:{root}/...`, where `{root}` is the config key
`data.root` (set by the `root=PATH` config arg or `--config.data.root=PATH`;
every folder path follows it). See docs/DATASETS.md for where each set comes from.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Union

import ml_collections
import numpy as np

DEFAULT_ROOT = "data"
ROOT_PLACEHOLDER = "{root}"
SCHEMES = ("npz", "folder", "tfds", "offline")

# Split names declared by the builders of tensorflow-datasets 4.9 (read from its
# sources: image_classification/{cifar,mnist,svhn,dtd,omniglot}.py,
# datasets/{places365_small,celeb_a}/*_dataset_builder.py).
TFDS_SPLITS: dict[str, tuple[str, ...]] = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "svhn_cropped": ("train", "test", "extra"),
    "mnist": ("train", "test"),
    "fashion_mnist": ("train", "test"),
    "kmnist": ("train", "test"),
    "omniglot": ("train", "test", "small1", "small2"),
    "dtd": ("train", "validation", "test"),
    "places365_small": ("train", "validation", "test"),
    "celeb_a": ("train", "validation", "test"),
}

# In-distribution sets: name -> (train source, test source).
ID_SETS: dict[str, tuple[str, str]] = {
    "cifar10": ("tfds:cifar10:train", "tfds:cifar10:test"),
    "cifar100": ("tfds:cifar100:train", "tfds:cifar100:test"),
    "celeba": ("tfds:celeb_a:train", "tfds:celeb_a:test"),
}

# OOD sets: key -> source template.
OOD_SOURCES: dict[str, str] = {
    # TFDS
    "cifar10": "tfds:cifar10:test",                     # 10,000
    "cifar100": "tfds:cifar100:test",                   # 10,000
    "svhn": "tfds:svhn_cropped:test",                   # 26,032
    "mnist": "tfds:mnist:test",                         # 10,000
    "mnist_all": "tfds:mnist:train+test",               # 70,000 (OpenOOD's MNIST list)
    "fashion_mnist": "tfds:fashion_mnist:test",         # 10,000
    "kmnist": "tfds:kmnist:test",                       # 10,000
    "omniglot": "tfds:omniglot:test",                   # 13,180 (images_evaluation)
    "textures": "tfds:dtd:train+validation+test",       # all 5,640 DTD images
    "places365_val": "tfds:places365_small:validation",  # full val split, 36,500 (alternative)
    # Folders under the data root.
    "lsun_crop": "folder:{root}/LSUN",                  # ODIN release (Liang et al. 2018)
    "lsun_resize": "folder:{root}/LSUN_resize",         # ODIN release
    "isun": "folder:{root}/iSUN",                       # ODIN release
    "places365": "folder:{root}/Places365",             # the DLSR/KNN-style subset
    "notmnist": "folder:{root}/notMNIST",
    # OpenOOD v1.5 image lists (benchmark_imglist/<id>/test_<set>.txt) materialised
    # as folders, see docs/DATASETS.md.
    "openood_cifar10_tin": "folder:{root}/openood/cifar10/tin",
    "openood_cifar10_places365": "folder:{root}/openood/cifar10/places365",
    "openood_cifar100_tin": "folder:{root}/openood/cifar100/tin",
    "openood_cifar100_places365": "folder:{root}/openood/cifar100/places365",
    # OpenOOD v1.5's OOD validation lists (benchmark_imglist/<id>/val_tin.txt), disjoint
    # from its test lists: the OOD-val of the openood_* protocols (data.ood_val).
    "openood_cifar10_tin_val": "folder:{root}/openood/cifar10/tin_val",
    "openood_cifar100_tin_val": "folder:{root}/openood/cifar100/tin_val",
}

# data.val = "holdout:FRACTION": that share of data.train's rows, drawn by a fixed
# permutation (HOLDOUT_SEED), is the ID validation split and is left out of the ID train
# arrays the detectors fit on (not out of a classifier net's own training).
HOLDOUT = "holdout"
HOLDOUT_SEED = 0

Source = Union[str, ml_collections.FieldReference]


def expand(template: str, root: Source) -> Source:
  """Fills `{root}` in a source template.

  Args:
    template: a source string, possibly holding one `{root}`.
    root: a path, or a FieldReference to the config's `data.root` (the result
      then follows later changes of the root, e.g. from the command line).

  Returns:
    The template itself when it has no `{root}`, else the filled-in string or
    a lazy FieldReference.
  """
  if template.count(ROOT_PLACEHOLDER) > 1:
    raise ValueError(f"source template {template!r} holds more than one {ROOT_PLACEHOLDER}")
  if ROOT_PLACEHOLDER not in template:
    return template
  before, after = template.split(ROOT_PLACEHOLDER)
  return before + root + after


def ood_source(key: str, root: Source = DEFAULT_ROOT) -> Source:
  """The source of OOD set `key` (see `OOD_SOURCES`) under data root `root`."""
  if key not in OOD_SOURCES:
    raise ValueError(f"unknown OOD set {key!r}; known: {', '.join(sorted(OOD_SOURCES))}")
  return expand(OOD_SOURCES[key], root)


def id_sources(name: str) -> tuple[str, str]:
  """(train source, test source) of in-distribution set `name`."""
  if name not in ID_SETS:
    raise ValueError(f"unknown ID set {name!r}; known: {', '.join(sorted(ID_SETS))}")
  return ID_SETS[name]


def set_ood(c: ml_collections.ConfigDict, sets: Mapping[str, str]) -> None:
  """Fills `c.data.ood` with {config name: OOD_SOURCES key}, folders under `c.data.root`."""
  root = c.data.get_ref("root")
  for name, key in sets.items():
    c.data.ood[name] = ood_source(key, root)


def tfds_split_names(split: str) -> list[str]:
  """Base split names of a TFDS split expression ('train+test[:50%]' -> [train, test])."""
  names = []
  for part in split.split("+"):
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(\[[^\]]*\])?\s*", part)
    if m is None:
      raise ValueError(f"cannot parse TFDS split expression {split!r} (part {part!r})")
    names.append(m.group(1))
  return names


def check_source(source: str) -> None:
  """Checks a data source string statically (no I/O); raises ValueError naming the problem.

  Checks the scheme, that folder/npz sources name a path, and that TFDS sources
  name a known data set and only its declared splits.
  """
  if not isinstance(source, str) or ":" not in source:
    raise ValueError(f"data source must be 'SCHEME:...', got {source!r}")
  scheme, rest = source.split(":", 1)
  if scheme not in SCHEMES:
    raise ValueError(f"unknown scheme {scheme!r} in {source!r}; valid: {', '.join(SCHEMES)}")
  if not rest or ROOT_PLACEHOLDER in rest:
    raise ValueError(f"data source {source!r} has no (expanded) path")
  if scheme != "tfds":
    return
  m = re.fullmatch(r"([^:]+?)(?::\d+\.\d+\.\d+)?:(.+)", rest)
  if m is None:
    raise ValueError(f"tfds source must be 'tfds:NAME:SPLIT', got {source!r}")
  name, split = m.groups()
  if name not in TFDS_SPLITS:
    raise ValueError(f"TFDS data set {name!r} of {source!r} is not one the protocols use: "
                     f"{', '.join(sorted(TFDS_SPLITS))}")
  for s in tfds_split_names(split):
    if s not in TFDS_SPLITS[name]:
      raise ValueError(f"TFDS data set {name!r} has no split {s!r} (source {source!r}); "
                       f"declared splits: {', '.join(TFDS_SPLITS[name])}")


def parse_holdout(spec: str) -> float | None:
  """"holdout:0.1" -> 0.1; another data.val (a source, or "") -> None; ValueError if the
  fraction is not a number in (0, 1)."""
  scheme, sep, rest = str(spec or "").partition(":")
  if scheme != HOLDOUT:
    return None
  try:
    fraction = float(rest) if sep else float("nan")
  except ValueError:
    fraction = float("nan")
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"data.val = {spec!r}: a holdout must be 'holdout:FRACTION' with "
                     "FRACTION in (0, 1), e.g. 'holdout:0.1'")
  return fraction


def holdout_rows(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, validation rows) of a set of n rows, both sorted: the validation rows are
  the first round(fraction * n) of a permutation seeded with HOLDOUT_SEED (deterministic,
  independent of class order)."""
  m = round(fraction * n)
  if not 0 < m < n:
    raise ValueError(f"data.val = holdout:{fraction}: of the {n} ID train rows it holds out "
                     f"{m}; need at least one row on each side")
  perm = np.random.default_rng(HOLDOUT_SEED).permutation(n)
  return np.sort(perm[m:]), np.sort(perm[:m])


def source_identity(source: str) -> tuple:
  """What a source reads, for comparing sources: (scheme, real path) for npz / folder (so
  "npz:dir/./x.npz" and "npz:/abs/dir/x.npz" are the same set), else the stripped string."""
  scheme, _, rest = str(source).strip().partition(":")
  if scheme in ("npz", "folder") and rest:
    return scheme, os.path.realpath(os.path.expanduser(rest))
  return (str(source).strip(),)
