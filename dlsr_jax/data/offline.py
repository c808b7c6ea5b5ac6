"""Small image sets built from files that installed packages ship (no network).

For the offline quickstart and tests.  Every set is [N, 32, 32, 3] uint8 RGB,
deterministic (fixed seeds) and built in well under a second or two:

  * ``digits`` -- scikit-learn's handwritten digits (``load_digits``: 1797 8x8
    images, values 0..16, labels 0..9), scaled to 0..255, upscaled to 24x24
    with PIL bicubic and zero-padded by 4 pixels to 32x32 (bright ink on a dark
    background with a margin, like MNIST); grey repeated to 3 channels.
    Splits: per class, a seeded permutation (seed 0) of that class's indices;
    the first ``round(0.7 * n_class)`` go to ``train``, the rest to ``test``
    (1258 train / 539 test, both in increasing original index order);
    ``all`` = all 1797 in original order.
  * ``digits04`` / ``digits59`` -- the same images and splits restricted to the classes
    0-4 / 5-9 (labels kept: 0..4 / 5..9); e.g. ID = ``offline:digits04:train|test`` and
    near-OOD = ``offline:digits59:test`` (the quickstart).
  * ``letters`` -- NotMNIST-style letters A-J (labels 0..9) rendered with PIL from
    the TrueType fonts matplotlib ships (DejaVu Sans/Serif/Mono in all their
    variants, STIX General, Computer Modern), random font, size 20..33 px,
    offset up to +-3 px and ink 170..255, light ink on a dark background.
  * ``photos`` -- random square crops (side 32..192 px, capped by the photo
    size), resized to 32x32 with PIL bicubic and randomly flipped, from the
    photographs bundled with scikit-image (read straight from its package
    folder, so pooch is never asked to download) and scikit-learn
    (``load_sample_images``: china, flower).  Labels are the photo index.
  * ``noise`` -- four kinds cycled in order (label = kind): 0 iid uniform RGB,
    1 iid Gaussian RGB (mean 128, std 64, clipped), 2 smooth colour blobs
    (uniform noise at 2..8 px resolution upsampled bicubically), 3 iid
    uniform grey.

The synthetic sets (``letters``, ``photos``, ``noise``) have ``train`` and
``test`` splits that are independent seeded draws (500 images each by
default; not guaranteed disjoint).  The default split of every set is ``test``.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from dlsr_jax.data.image_set import ImageSet

SIZE = 32
DEFAULT_NUM = 500
_SPLIT_IDS = {"train": 1, "test": 2}

_FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf",
    "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf", "cmsy10.ttf")
# Natural photographs bundled in skimage/data (no pooch download needed).
_SKIMAGE_PHOTOS = (
    "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg",
    "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png", "camera.png",
    "coins.png", "moon.png", "grass.png", "gravel.png", "brick.png")


def _grey_to_rgb(x: np.ndarray) -> np.ndarray:
  """[N, H, W] uint8 -> [N, H, W, 3]."""
  return np.repeat(x[..., None], 3, axis=-1)


def _rng(name: str, split: str) -> np.random.Generator:
  return np.random.default_rng([sum(map(ord, name)), _SPLIT_IDS[split]])


def digits_split_indices() -> Dict[str, np.ndarray]:
  """Indices of the ``digits`` splits into ``load_digits()`` order.

  Returns:
    {"train": [1258] int64, "test": [539] int64, "all": [1797] int64}, sorted.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  y = load_digits().target
  rng = np.random.default_rng(0)
  train = []
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(y == c))
    train.append(idx[:int(round(0.7 * idx.size))])
  train = np.sort(np.concatenate(train)).astype(np.int64)
  test = np.setdiff1d(np.arange(y.size), train).astype(np.int64)
  return {"train": train, "test": test, "all": np.arange(y.size, dtype=np.int64)}


def _digits(split: str, num: Optional[int],
            classes: Optional[Tuple[int, ...]] = None) -> Tuple[np.ndarray, np.ndarray]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  idx = digits_split_indices()[split]
  if classes is not None:
    idx = idx[np.isin(d.target[idx], classes)]
  if num is not None:
    idx = idx[:num]
  small = np.clip(np.round(d.images[idx] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
  inner, pad = 24, (SIZE - 24) // 2
  out = np.zeros((idx.size, SIZE, SIZE), np.uint8)
  for i, im in enumerate(small):
    big = Image.fromarray(im).resize((inner, inner), Image.Resampling.BICUBIC)
    out[i, pad:pad + inner, pad:pad + inner] = np.asarray(big)
  return _grey_to_rgb(out), d.target[idx].astype(np.int64)


def _font_paths():
  import matplotlib  # pylint: disable=g-import-not-at-top
  font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
  paths = [os.path.join(font_dir, f) for f in _FONT_FILES
           if os.path.isfile(os.path.join(font_dir, f))]
  if not paths:
    raise FileNotFoundError(f"no usable TrueType fonts found in {font_dir}")
  return paths


def _letters(split: str, num: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  n = DEFAULT_NUM if num is None else num
  rng = _rng("letters", split)
  paths = _font_paths()
  fonts = {}
  out = np.zeros((n, SIZE, SIZE), np.uint8)
  labels = rng.integers(0, 10, size=n)
  for i in range(n):
    key = (int(rng.integers(len(paths))), int(rng.integers(20, 34)))
    if key not in fonts:
      fonts[key] = ImageFont.truetype(paths[key[0]], key[1])
    ch = "ABCDEFGHIJ"[labels[i]]
    im = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(im)
    x0, y0, x1, y1 = draw.textbbox((0, 0), ch, font=fonts[key])
    dx, dy = rng.integers(-3, 4, size=2)
    pos = ((SIZE - (x1 - x0)) / 2 - x0 + dx, (SIZE - (y1 - y0)) / 2 - y0 + dy)
    draw.text(pos, ch, fill=int(rng.integers(170, 256)), font=fonts[key])
    out[i] = np.asarray(im)
  return _grey_to_rgb(out), labels.astype(np.int64)


def _load_photos():
  """List of [H, W, 3] uint8 photographs shipped with skimage and sklearn."""
  import skimage  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photo_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
  photos = []
  for f in _SKIMAGE_PHOTOS:
    p = os.path.join(photo_dir, f)
    if os.path.isfile(p):
      with Image.open(p) as im:
        photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
  photos.extend(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)
  return photos


def _photos(split: str, num: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n = DEFAULT_NUM if num is None else num
  rng = _rng("photos", split)
  photos = _load_photos()
  out = np.zeros((n, SIZE, SIZE, 3), np.uint8)
  labels = rng.integers(0, len(photos), size=n)
  for i in range(n):
    ph = photos[labels[i]]
    h, w = ph.shape[:2]
    side = int(min(rng.integers(SIZE, 193), h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(ph[top:top + side, left:left + side])
    crop = np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
  return out, labels.astype(np.int64)


def _noise(split: str, num: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n = DEFAULT_NUM if num is None else num
  rng = _rng("noise", split)
  out = np.zeros((n, SIZE, SIZE, 3), np.uint8)
  labels = np.arange(n, dtype=np.int64) % 4
  for i, kind in enumerate(labels):
    if kind == 0:
      out[i] = rng.integers(0, 256, size=(SIZE, SIZE, 3))
    elif kind == 1:
      out[i] = np.clip(np.round(rng.normal(128.0, 64.0, size=(SIZE, SIZE, 3))), 0, 255)
    elif kind == 2:
      r = int(rng.integers(2, 9))
      low = rng.integers(0, 256, size=(r, r, 3)).astype(np.uint8)
      out[i] = np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    else:
      out[i] = rng.integers(0, 256, size=(SIZE, SIZE, 1))
  return out, labels


# name -> (builder(split, num) -> (images, labels), valid splits).
NAMES: Dict[str, Tuple[Callable[[str, Optional[int]], Tuple[np.ndarray, np.ndarray]],
                       Tuple[str, ...]]] = {
    "digits": (_digits, ("train", "test", "all")),
    "digits04": (functools.partial(_digits, classes=(0, 1, 2, 3, 4)), ("train", "test", "all")),
    "digits59": (functools.partial(_digits, classes=(5, 6, 7, 8, 9)), ("train", "test", "all")),
    "letters": (_letters, ("train", "test")),
    "photos": (_photos, ("train", "test")),
    "noise": (_noise, ("train", "test")),
}


def load(name: str, split: Optional[str] = None, *, num: Optional[int] = None) -> ImageSet:
  """Builds one offline image set.

  Args:
    name: one of `NAMES` ("digits", "digits04", "digits59", "letters", "photos", "noise").
    split: a split of that set (see the module docstring); None = "test".
    num: number of images (synthetic sets: how many to draw, default 500;
      digits: keep the first `num` of the split).

  Returns:
    An `ImageSet` with images [N, 32, 32, 3] uint8, labels [N] int64 and name
    ``offline:NAME:SPLIT``.
  """
  if name not in NAMES:
    raise ValueError(f"unknown offline data set {name!r}; valid names: {', '.join(NAMES)}")
  split = "test" if split is None else split
  build, splits = NAMES[name]
  if split not in splits:
    raise ValueError(f"unknown split {split!r} of offline data set {name!r}; "
                     f"valid splits: {', '.join(splits)}")
  if num is not None and (isinstance(num, bool) or not isinstance(num, (int, np.integer))
                          or num < 1):
    raise ValueError(f"num must be a positive int or None, got {num!r}")
  images, labels = build(split, num)
  return ImageSet(images=images, labels=labels, name=f"offline:{name}:{split}")
