"""Image data sources and host-side batching helpers.

Data sources are named by strings:

  * ``npz:PATH`` -- a ``.npz`` file with ``images`` (uint8, [N, H, W, 3];
    grayscale [N, H, W] or [N, H, W, 1] is repeated to 3 channels) and optional
    ``labels`` (integer [N]; default -1).
  * ``folder:PATH`` -- image files (png/jpg/jpeg/bmp/gif/webp, any case), either
    flat in PATH (labels -1) or in class sub-folders (labels = index of the
    class folder in sorted order; files inside a class folder are found
    recursively).  Files are read in sorted path order and decoded with PIL to
    RGB (alpha dropped, first frame of animations).
  * ``tfds:NAME:SPLIT`` -- a TensorFlow Datasets dataset that is ALREADY
    prepared in the data dir, e.g. ``tfds:cifar10:test``,
    ``tfds:svhn_cropped:test``, ``tfds:mnist:test[:50%]``,
    ``tfds:cifar10:3.0.2:test`` (with a version).  Never downloads.
  * ``offline:NAME[:SPLIT]`` -- the small offline sets of
    `dlsr_jax.offline_data` (``digits``, ``letters``, ``photos``, ``noise``).

Resizing (all schemes): with ``image_size=None`` images keep their native size,
which must then be the same for all images of a source (else a ValueError asks
for ``image_size``).  With ``image_size=S`` every image whose size is not
``S x S`` is resized to ``S x S`` with PIL bicubic resampling (a straight,
aspect-changing resize; no crop); images already ``S x S`` are untouched.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

SCHEMES = ("npz", "folder", "tfds", "offline")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """A set of images held in host memory.

  Attributes:
    images: [N, H, W, 3] uint8.
    labels: [N] int64 class labels, -1 where unknown.
    name: the source string the set was loaded from.
  """
  images: np.ndarray
  labels: np.ndarray
  name: str

  def __post_init__(self):
    if (not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8
        or self.images.ndim != 4 or self.images.shape[-1] != 3):
      raise ValueError(
          f"ImageSet {self.name!r}: images must be a uint8 array [N, H, W, 3], got "
          f"{getattr(self.images, 'dtype', type(self.images))} "
          f"{getattr(self.images, 'shape', '')}")
    if (not isinstance(self.labels, np.ndarray) or self.labels.dtype != np.int64
        or self.labels.shape != (self.images.shape[0],)):
      raise ValueError(
          f"ImageSet {self.name!r}: labels must be an int64 array "
          f"[{self.images.shape[0]}], got {getattr(self.labels, 'dtype', None)} "
          f"{getattr(self.labels, 'shape', None)}")

  def __len__(self) -> int:
    return int(self.images.shape[0])


def to_rgb_uint8(images: np.ndarray, what: str) -> np.ndarray:
  """Checks dtype/shape and repeats grayscale to 3 channels.

  Args:
    images: [N, H, W], [N, H, W, 1] or [N, H, W, 3] uint8.
    what: name used in error messages.

  Returns:
    [N, H, W, 3] uint8.
  """
  if images.dtype != np.uint8:
    raise ValueError(f"{what}: images must have dtype uint8, got {images.dtype}")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
        f"{what}: images must have shape [N, H, W], [N, H, W, 1] or [N, H, W, 3], "
        f"got {images.shape}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes one [H, W, 3] uint8 image to [size, size, 3] with PIL bicubic."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.shape[:2] == (size, size):
    return image
  out = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(out, dtype=np.uint8)


def _stack(images: Sequence[np.ndarray], image_size: Optional[int], what: str) -> np.ndarray:
  """Stacks [H, W, 3] images, resizing to image_size (None: sizes must agree)."""
  if image_size is not None:
    return np.stack([resize_image(im, image_size) for im in images])
  shapes = sorted({im.shape[:2] for im in images})
  if len(shapes) > 1:
    raise ValueError(
        f"{what}: images have different sizes (e.g. {shapes[0]} and {shapes[-1]}); "
        "pass image_size=S to resize them all to S x S")
  return np.stack(images)


def _load_npz(path: str, limit: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz file not found: {path}")
  with np.load(path, allow_pickle=False) as z:
    if "images" not in z.files:
      raise ValueError(f"npz file {path} has no 'images' array (keys: {sorted(z.files)})")
    images = z["images"] if limit is None else z["images"][:limit]
    labels = None
    if "labels" in z.files:
      labels = z["labels"] if limit is None else z["labels"][:limit]
  images = to_rgb_uint8(images, f"npz file {path}")
  if labels is None:
    labels = np.full((images.shape[0],), -1, np.int64)
  else:
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (images.shape[0],):
      raise ValueError(
          f"npz file {path}: 'labels' must be an integer array of shape "
          f"[{images.shape[0]}], got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
  return images, labels


def _is_image_file(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_below(root: str) -> List[str]:
  """Sorted image file paths under root (recursive, hidden entries skipped)."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_file(f))
  return sorted(out)


def list_folder(path: str) -> Tuple[List[str], List[int], List[str]]:
  """Lists the image files of a folder source.

  Args:
    path: the folder.

  Returns:
    (files, labels, class_names): sorted file paths, their labels (-1 for a
    flat folder) and the class folder names (empty for a flat folder).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"image folder not found: {path}")
  entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
  top_files = [os.path.join(path, e) for e in entries
               if _is_image_file(e) and os.path.isfile(os.path.join(path, e))]
  class_names, files, labels = [], [], []
  for e in entries:
    sub = os.path.join(path, e)
    if os.path.isdir(sub):
      found = _images_below(sub)
      if found:
        files.extend(found)
        labels.extend([len(class_names)] * len(found))
        class_names.append(e)
  if class_names and top_files:
    raise ValueError(
        f"image folder {path} mixes image files at the top level (e.g. "
        f"{os.path.basename(top_files[0])}) with class sub-folders (e.g. "
        f"{class_names[0]}/); use one layout")
  if not class_names:
    files, labels = top_files, [-1] * len(top_files)
  if not files:
    raise ValueError(
        f"image folder {path} contains no image files "
        f"(extensions {', '.join(IMAGE_EXTENSIONS)}, flat or in class sub-folders)")
  return files, labels, class_names


def _read_image(path: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"), dtype=np.uint8)
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"cannot read image file {path}: {e}") from e


def _load_folder(path: str, image_size: Optional[int], limit: Optional[int],
                 rows: Optional[Tuple[int, int]]) -> Tuple[np.ndarray, np.ndarray]:
  files, labels, _ = list_folder(path)
  if limit is not None:
    files, labels = files[:limit], labels[:limit]
  if rows is not None:  # read only these files
    _check_rows(rows, len(files), f"folder:{path}")
    files, labels = files[rows[0]:rows[1]], labels[rows[0]:rows[1]]
  # Resize as each file is read: only S x S copies are held, never the native sizes.
  images = [_read_image(f) if image_size is None else resize_image(_read_image(f), image_size)
            for f in files]
  return _stack(images, None, f"image folder {path}"), np.asarray(labels, np.int64)


def _parse_tfds(spec: str) -> Tuple[str, str]:
  """'NAME:SPLIT' or 'NAME:VERSION:SPLIT' -> (name, split); split may hold ':'."""
  m = re.fullmatch(r"([^:]+(?::\d+\.\d+\.\d+)?):(.+)", spec)
  if m is None:
    raise ValueError(
        f"tfds source must look like 'tfds:NAME:SPLIT' (e.g. 'tfds:cifar10:test'), "
        f"got 'tfds:{spec}'")
  return m.group(1), m.group(2)


def _tfds_dataset(spec: str, data_dir: Optional[str], image_key: str):
  """(tf.data.Dataset of examples, name, split, has_label); never downloads."""
  name, split = _parse_tfds(spec)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown TFDS dataset {name!r} (source 'tfds:{spec}')") from e
  where = data_dir if data_dir is not None else f"the default TFDS data dir ({builder.data_dir})"
  prepared = builder.is_prepared()
  try:
    # No download_and_prepare: tfds raises AssertionError immediately when the
    # data is missing.  The is_prepared() check alone is not used as the gate
    # because tfds.testing.mock_data serves mocked data for unprepared builders.
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:
    if prepared:
      raise
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {where}; this code never "
        f"downloads. On a machine with network access run `tfds build {name}` "
        f"(or tfds.load({name!r}) once) and copy the data dir here, then pass "
        f"tfds_data_dir (--tfds_data_dir) pointing to it") from e
  spec_el = ds.element_spec
  if image_key not in spec_el:
    raise ValueError(f"TFDS dataset {name!r} has no feature {image_key!r} "
                     f"(features: {sorted(spec_el)}); set image_key")
  return ds, name, split, "label" in spec_el


def _count_tfds(spec: str, data_dir: Optional[str], image_key: str) -> int:
  ds, _, _, _ = _tfds_dataset(spec, data_dir, image_key)
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.map(lambda ex: 0).reduce(0, lambda count, _: count + 1))


def _load_tfds(spec: str, image_size: Optional[int], data_dir: Optional[str],
               limit: Optional[int], image_key: str,
               rows: Optional[Tuple[int, int]]) -> Tuple[np.ndarray, np.ndarray]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds, name, split, has_label = _tfds_dataset(spec, data_dir, image_key)
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
  return _stack([x for c in chunks for x in c[0]], None, what), labels  # raises: sizes differ


def _check_rows(rows: Tuple[int, int], n: int, source: str) -> None:
  start, stop = rows
  if not 0 <= start < stop <= n:
    raise ValueError(f"rows [{start}, {stop}) out of range for {source!r} with {n} images "
                     "(need 0 <= start < stop <= N)")


def _take_rows(images: np.ndarray, labels: np.ndarray, rows: Optional[Tuple[int, int]],
               source: str) -> Tuple[np.ndarray, np.ndarray]:
  if rows is None:
    return images, labels
  _check_rows(rows, images.shape[0], source)
  return images[rows[0]:rows[1]], labels[rows[0]:rows[1]]


def _npz_count(path: str) -> int:
  """Rows of the 'images' array of an .npz file, from its header (no data read)."""
  import zipfile  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz file not found: {path}")
  with zipfile.ZipFile(path) as zf:
    if "images.npy" not in zf.namelist():
      raise ValueError(f"npz file {path} has no 'images' array")
    with zf.open("images.npy") as f:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape = read(f)[0]
  if not shape:
    raise ValueError(f"npz file {path}: 'images' is a scalar")
  return int(shape[0])


def count_images(source: str, *, tfds_data_dir: Optional[str] = None,
                 limit: Optional[int] = None, image_key: str = "image") -> int:
  """How many images `load_images(source, limit=limit)` returns, without decoding them.

  Lets each process of a multi-host job load only its `rows` of a set.
  """
  if not isinstance(source, str) or ":" not in source:
    raise ValueError(f"data source must be 'SCHEME:...' with SCHEME one of {SCHEMES}, "
                     f"got {source!r}")
  if limit is not None:
    _check_pos_int(limit, "limit")
  scheme, rest = source.split(":", 1)
  if scheme == "npz":
    n = _npz_count(rest)
  elif scheme == "folder":
    n = len(list_folder(rest)[0])
  elif scheme == "tfds":
    n = _count_tfds(rest, tfds_data_dir, image_key)
  elif scheme == "offline":
    n = len(load_images(source))
  else:
    raise ValueError(f"unknown data source scheme {scheme!r} in {source!r}; "
                     f"valid schemes: {', '.join(s + ':' for s in SCHEMES)}")
  return n if limit is None else min(n, limit)


def load_images(source: str, *, image_size: Optional[int] = None,
                tfds_data_dir: Optional[str] = None, limit: Optional[int] = None,
                image_key: str = "image", rows: Optional[Tuple[int, int]] = None) -> ImageSet:
  """Loads an image source into host memory.

  Args:
    source: ``npz:PATH``, ``folder:PATH``, ``tfds:NAME:SPLIT`` or
      ``offline:NAME[:SPLIT]`` (see the module docstring).
    image_size: None to keep native sizes (which must agree), or S to resize
      every image to S x S (PIL bicubic).
    tfds_data_dir: TFDS data dir for ``tfds:`` sources (None: TFDS default).
    limit: keep only the first `limit` examples (deterministic order).
    image_key: image feature name for ``tfds:`` sources.
    rows: (start, stop): keep only rows [start, stop) of the set (after
      `limit`); folder and TFDS sources then read (and resize) only those.
      Used by multi-host jobs, each process loading its own shard.

  Returns:
    An `ImageSet` with images [N, H, W, 3] uint8, labels [N] int64 (-1 if
    unknown) and name = `source`.
  """
  if not isinstance(source, str) or ":" not in source:
    raise ValueError(f"data source must be 'SCHEME:...' with SCHEME one of {SCHEMES}, "
                     f"got {source!r}")
  for value, arg in ((image_size, "image_size"), (limit, "limit")):
    if value is not None:
      _check_pos_int(value, arg)
  if rows is not None:
    rows = tuple(int(r) for r in rows)
    if len(rows) != 2 or not 0 <= rows[0] < rows[1]:
      raise ValueError(f"rows must be (start, stop) with 0 <= start < stop, got {rows}")
  scheme, rest = source.split(":", 1)
  if scheme == "npz":
    images, labels = _load_npz(rest, limit)
    images, labels = _take_rows(images, labels, rows, source)
    if image_size is not None:
      images = _stack(list(images), image_size, source)
  elif scheme == "folder":
    images, labels = _load_folder(rest, image_size, limit, rows)
  elif scheme == "tfds":
    images, labels = _load_tfds(rest, image_size, tfds_data_dir, limit, image_key, rows)
  elif scheme == "offline":
    from dlsr_jax import offline_data  # pylint: disable=g-import-not-at-top
    name, _, split = rest.partition(":")
    s = offline_data.load(name, split or None)
    images, labels = s.images, s.labels
    if limit is not None:
      images, labels = images[:limit], labels[:limit]
    images, labels = _take_rows(images, labels, rows, source)
    if image_size is not None:
      images = _stack(list(images), image_size, source)
  else:
    raise ValueError(f"unknown data source scheme {scheme!r} in {source!r}; "
                     f"valid schemes: {', '.join(s + ':' for s in SCHEMES)}")
  if images.shape[0] == 0:
    raise ValueError(f"data source {source!r} contains no images")
  return ImageSet(images=np.ascontiguousarray(images), labels=labels, name=source)


def _check_pos_int(value: Any, name: str, allow_zero: bool = False) -> None:
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  if not ok or value < (0 if allow_zero else 1):
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"{name} must be a {kind} int, got {value!r}")


def iterate_eval_batches(n: int, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Fixed-size batches covering 0..n-1 once, in order, without dropping any.

  The last batch is padded by repeating its last valid index with mask False.

  Args:
    n: number of examples (0 yields nothing).
    batch_size: examples per batch.

  Yields:
    (indices [batch_size] int64, mask [batch_size] bool) with mask True for
    real examples.
  """
  _check_pos_int(n, "n", allow_zero=True)
  _check_pos_int(batch_size, "batch_size")
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n), dtype=np.int64)
    mask = np.zeros((batch_size,), bool)
    mask[:idx.size] = True
    idx = np.concatenate([idx, np.full((batch_size - idx.size,), idx[-1], np.int64)])
    yield idx, mask


def pad_batch(arrays: Any, batch_size: int) -> Tuple[Any, np.ndarray]:
  """Pads a (pytree of) arrays along axis 0 to batch_size by repeating the last row.

  Args:
    arrays: an array or a pytree (dict/list/tuple) of arrays, all with the same
      leading size m, 1 <= m <= batch_size.
    batch_size: target leading size.

  Returns:
    (padded, mask): the same structure with leading size batch_size, and a
    [batch_size] bool mask, True for the m real rows.
  """
  import jax  # pylint: disable=g-import-not-at-top
  _check_pos_int(batch_size, "batch_size")
  leaves = jax.tree_util.tree_leaves(arrays)
  if not leaves:
    raise ValueError("pad_batch got no arrays")
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError("pad_batch: all arrays need the same leading size, got "
                     f"{sorted(map(str, sizes))}")
  m = sizes.pop()
  if not 1 <= m <= batch_size:
    raise ValueError(f"pad_batch: leading size {m} must be in [1, batch_size={batch_size}]")

  def pad(x):
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[-1:], batch_size - m, axis=0)])

  mask = np.arange(batch_size) < m
  return jax.tree_util.tree_map(pad, arrays), mask


def train_batch_indices(n: int, batch_size: int, epoch: int, seed: int,
                        process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Shuffled training batches of one epoch, this process's part of each.

  The permutation is ``np.random.default_rng([seed, epoch]).permutation(n)``
  (deterministic per (seed, epoch), identical on every process); the last
  ``n % batch_size`` examples of it are dropped.  Global batch ``s`` is
  ``perm[s * batch_size:(s + 1) * batch_size]`` and process ``p`` gets its
  columns ``[p * local, (p + 1) * local)`` with ``local = batch_size //
  process_count``, so the processes' slices are disjoint and together form
  the global batch.

  Args:
    n: dataset size.
    batch_size: GLOBAL batch size (divisible by process_count).
    epoch: epoch number (>= 0).
    seed: shuffle seed (>= 0).
    process_index: this process, in [0, process_count).
    process_count: number of processes.

  Returns:
    [steps, batch_size // process_count] int64 indices, steps = n // batch_size.
  """
  for value, name in ((n, "n"), (batch_size, "batch_size"), (process_count, "process_count")):
    _check_pos_int(value, name)
  for value, name in ((epoch, "epoch"), (seed, "seed"), (process_index, "process_index")):
    _check_pos_int(value, name, allow_zero=True)
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by "
                     f"process_count {process_count}")
  if process_index >= process_count:
    raise ValueError(f"process_index {process_index} must be < process_count {process_count}")
  steps = n // batch_size
  if steps == 0:
    raise ValueError(f"dataset of {n} examples is smaller than one global batch "
                     f"({batch_size}); lower the batch size")
  perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
  local = batch_size // process_count
  batches = perm[:steps * batch_size].reshape(steps, batch_size)
  return batches[:, process_index * local:(process_index + 1) * local].astype(np.int64)
