"""`ImageSet` (images + labels held in host memory) and image-array helpers."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


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


def stack_images(images: Sequence[np.ndarray], image_size: Optional[int], what: str) -> np.ndarray:
  """Stacks [H, W, 3] images, resizing to image_size (None: sizes must agree)."""
  if not len(images):
    raise ValueError(f"{what}: no images")
  if image_size is not None:
    return np.stack([resize_image(im, image_size) for im in images])
  shapes = sorted({im.shape[:2] for im in images})
  if len(shapes) > 1:
    raise ValueError(
        f"{what}: images have different sizes (e.g. {shapes[0]} and {shapes[-1]}); "
        "pass image_size=S to resize them all to S x S")
  return np.stack(images)
