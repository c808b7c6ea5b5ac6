"""``folder:PATH`` sources: image files, flat or in class sub-folders."""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

from dlsr_jax.data._checks import check_rows
from dlsr_jax.data.image_set import resize_image, stack_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


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
      if im.mode.startswith("I"):     # 16-bit (or 32-bit int) grayscale: scale, not clip
        return _scale_to_uint8(np.asarray(im), im.mode, path)
      return np.asarray(im.convert("RGB"), dtype=np.uint8)
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"cannot read image file {path}: {e}") from e


def _scale_to_uint8(a: np.ndarray, mode: str, path: str) -> np.ndarray:
  """A 16-bit grayscale image [H, W] (PIL mode I;16* or I) as [H, W, 3] uint8."""
  a = a.astype(np.int64)
  if a.min() < 0 or a.max() > 65535:
    raise ValueError(f"image file {path}: mode {mode} values outside 0..65535 "
                     f"({a.min()}..{a.max()}); convert it to 8 or 16 bits first")
  gray = ((a * 255 + 32767) // 65535).astype(np.uint8)    # 65535 -> 255, rounded
  return np.repeat(gray[..., None], 3, axis=-1)


def load(path: str, image_size: Optional[int], limit: Optional[int],
                 rows: Optional[Tuple[int, int]]) -> Tuple[np.ndarray, np.ndarray]:
  files, labels, _ = list_folder(path)
  if limit is not None:
    files, labels = files[:limit], labels[:limit]
  if rows is not None:  # read only these files
    check_rows(rows, len(files), f"folder:{path}")
    files, labels = files[rows[0]:rows[1]], labels[rows[0]:rows[1]]
  # Resize as each file is read: only S x S copies are held, never the native sizes.
  images = [_read_image(f) if image_size is None else resize_image(_read_image(f), image_size)
            for f in files]
  return stack_images(images, None, f"image folder {path}"), np.asarray(labels, np.int64)
