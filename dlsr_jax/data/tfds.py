"""``tfds:NAME:SPLIT`` sources: TensorFlow Datasets already prepared (never downloads).

Needs the `tfds` extra (`pip install 'dlsr_jax[tfds]'`: tensorflow-datasets, tensorflow-cpu);
without it every function here raises `extras.MissingExtra` naming that command, before
reading anything.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

import numpy as np

from dlsr_jax import extras
from dlsr_jax.data.image_set import resize_image, stack_images, to_rgb_uint8


def parse(spec: str) -> Tuple[str, str]:
  """'NAME:SPLIT' or 'NAME:VERSION:SPLIT' -> (name, split); split may hold ':'."""
  m = re.fullmatch(r"([^:]+(?::\d+\.\d+\.\d+)?):(.+)", spec)
  if m is None:
    raise ValueError(
        f"tfds source must look like 'tfds:NAME:SPLIT' (e.g. 'tfds:cifar10:test'), "
        f"got 'tfds:{spec}'")
  return m.group(1), m.group(2)


def require(spec: str) -> None:
  """Raises extras.MissingExtra (naming `pip install 'dlsr_jax[tfds]'`) if TFDS is absent."""
  extras.require("tfds", f"data source 'tfds:{spec}'")


def _damaged(name: str, spec: str, where: str, e: Exception) -> ValueError:
  """The error for prepared TFDS data that cannot be read (e.g. a broken dataset_info.json)."""
  why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
  return ValueError(
      f"TFDS data of {name!r} in {where} cannot be read (source 'tfds:{spec}'): "
      f"{type(e).__name__}: {why[:300]}. Its dataset_info.json or record files are damaged: "
      f"rebuild it with `tfds build {name}` on a machine with network access and copy the "
      "folder here")


def _dataset(spec: str, data_dir: Optional[str], image_key: str):
  """(tf.data.Dataset of examples, name, split, has_label); never downloads."""
  name, split = parse(spec)
  require(spec)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  where = data_dir if data_dir is not None else "the default TFDS data dir"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown TFDS dataset {name!r} (source 'tfds:{spec}')") from e
  except Exception as e:  # noqa: BLE001  # tfds raises AssertionError / ParseError / OSError
    raise _damaged(name, spec, where, e) from e
  where = data_dir if data_dir is not None else f"the default TFDS data dir ({builder.data_dir})"
  prepared = builder.is_prepared()
  try:
    # No download_and_prepare: tfds raises AssertionError immediately when the
    # data is missing.  The is_prepared() check alone is not used as the gate
    # because tfds.testing.mock_data serves mocked data for unprepared builders.
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:
    if prepared:
      raise _damaged(name, spec, where, e) from e
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {where}; this code never "
        f"downloads. On a machine with network access run `tfds build {name}` "
        f"(or tfds.load({name!r}) once) and copy the data dir here, then pass "
        f"the data dir with --config.data.tfds_data_dir=DIR (experiments) or "
        f"tfds_data_dir=DIR (load_images)") from e
  spec_el = ds.element_spec
  if image_key not in spec_el:
    raise ValueError(f"TFDS dataset {name!r} has no feature {image_key!r} "
                     f"(features: {sorted(spec_el)}); set image_key")
  return ds, name, split, "label" in spec_el


def count(spec: str, data_dir: Optional[str], image_key: str) -> int:
  ds, _, _, _ = _dataset(spec, data_dir, image_key)
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.map(lambda ex: 0).reduce(0, lambda count, _: count + 1))


def load(spec: str, image_size: Optional[int], data_dir: Optional[str],
               limit: Optional[int], image_key: str,
               rows: Optional[Tuple[int, int]]) -> Tuple[np.ndarray, np.ndarray]:
  require(spec)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds, name, split, has_label = _dataset(spec, data_dir, image_key)
  spec_el = ds.element_spec
  ds = ds.map(lambda ex: (ex[image_key], ex["label"] if has_label
                          else tf.constant(-1, tf.int64)))
  if limit is not None:
    ds = ds.take(limit)
  if rows is not None:  # only these rows are converted and kept
    ds = ds.skip(rows[0]).take(rows[1] - rows[0])
  what = f"TFDS dataset {name!r} split {split!r}"
  if spec_el[image_key].shape.is_fully_defined():  # fixed size: fast batched read
    batches = tfds.as_numpy(ds.batch(1024))
  else:
    batches = ((im[None], lab) for im, lab in tfds.as_numpy(ds))
  # Convert (and resize) each batch as it arrives, so a large set (CelebA, Places365)
  # is never held at its native size.
  chunks = []
  for im, lab in batches:
    im = to_rgb_uint8(im, what)
    if image_size is not None:
      im = np.stack([resize_image(x, image_size) for x in im])
    chunks.append((im, np.asarray(lab, np.int64).reshape(-1)))
  got = sum(c[1].shape[0] for c in chunks)
  if rows is not None and got != rows[1] - rows[0]:
    raise ValueError(f"rows [{rows[0]}, {rows[1]}) out of range for 'tfds:{spec}': it has "
                     f"fewer than {rows[1]} images (got {got} rows from {rows[0]} on)")
  if not chunks:
    return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0,), np.int64)
  labels = np.concatenate([c[1] for c in chunks])
  if len({c[0].shape[1:] for c in chunks}) == 1:
    return np.concatenate([c[0] for c in chunks]), labels
  return stack_images([x for c in chunks for x in c[0]], None, what), labels  # raises: sizes differ
