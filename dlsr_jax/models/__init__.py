"""Classifier networks (Flax linen) and their loading API.

Usage:
  net = models.load("cifar_resnet20", "resnet20-12fca82f.th")   # or weights=None
  logits, out = jax.jit(net.apply)(net.params, net.preprocess(images_uint8))
  out["pre_logits"]                                           # [B, 64]
  head = models.load("mlp_head", num_features=720, hidden=512)  # on cached features
  conf = models.with_confidence_head(net, jax.random.key(0))  # + out["confidence"]
  W, b = net.head                                  # the final dense layer: [64, 10], [10]
  mine = models.wrap(apply_fn, params, head="head")  # any Flax / JAX classifier as a Net

Every module's `__call__(x, train)` returns `(logits, out)` with
out["pre_logits"]. Names are registered in the explicit dict `_REGISTRY`.
Weights files: PyTorch `.th`/`.pth`/`.pt` (zip or legacy pickle, read without torch
and without running code), torch-layout `.safetensors`, or native Flax
`.safetensors` written by `weights.convert.save_native`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.models.confidence import ConfidenceNet, with_confidence_head
from dlsr_jax.models.heads import LinearHead, MLPHead
from dlsr_jax.models.net import NORMALISATIONS, Net
from dlsr_jax.models.resnet_cifar import CifarResNet, ResNet18
from dlsr_jax.models.wrap import wrap
from dlsr_jax.models.wrn import WideResNet
from dlsr_jax.weights import (CheckpointMismatchError, convert, extract_state_dict,
                              read_safetensors, read_torch_checkpoint, weights_id_of)

__all__ = [
    "CheckpointMismatchError", "CifarResNet", "ConfidenceNet", "LinearHead", "MLPHead",
    "ModelConfig", "NORMALISATIONS", "Net", "ResNet18", "WideResNet", "expected_variables",
    "init_variables", "load", "load_variables", "names", "with_confidence_head", "wrap",
]

PathLike = Union[str, os.PathLike]
RESOLUTION = 32
_TRUNCATED_STD = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static description of one registry entry.

  Attributes:
    make: (num_classes, dtype, **settings) -> Flax module.
    settings: names of the extra keyword settings `load` accepts for it.
    normalisation: default key of `NORMALISATIONS` (None for heads on features).
    needs_features: heads: `load` requires `num_features` (the input width C).
    head: the name of the final `nn.Dense` in the module's params (`Net.head`).
  """
  make: Callable[..., nn.Module]
  settings: tuple[str, ...] = ()
  normalisation: Optional[str] = "cifar10"
  needs_features: bool = False
  head: str = "fc"


def _cifar_resnet(depth: int) -> ModelConfig:
  # The akamaster CIFAR-10 weights were trained on ImageNet-normalised inputs (SOURCES.md).
  return ModelConfig(lambda num_classes, dtype: CifarResNet(depth, num_classes, dtype),
                     normalisation="imagenet", head="linear")


# name -> config (explicit; nothing registers itself at import).
_REGISTRY: dict[str, ModelConfig] = {
    **{f"cifar_resnet{d}": _cifar_resnet(d) for d in (20, 32, 44, 56)},
    "resnet18_32x32": ModelConfig(lambda num_classes, dtype: ResNet18(num_classes, dtype)),
    "wrn40_2": ModelConfig(
        lambda num_classes, dtype, dropout=0.0: WideResNet(40, 2, num_classes, dropout, dtype),
        settings=("dropout",)),
    "linear_head": ModelConfig(lambda num_classes, dtype: LinearHead(num_classes, dtype),
                               normalisation=None, needs_features=True),
    "mlp_head": ModelConfig(
        lambda num_classes, dtype, hidden=512, dropout=0.0: MLPHead(num_classes, hidden,
                                                                    dropout, dtype),
        settings=("hidden", "dropout"), normalisation=None, needs_features=True, head="fc2"),
}


def names() -> tuple[str, ...]:
  """All registered model names."""
  return tuple(_REGISTRY)


def _config(name: str) -> ModelConfig:
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
  return _REGISTRY[name]


def _example_input(cfg: ModelConfig, num_features: Optional[int]) -> jax.ShapeDtypeStruct:
  if cfg.needs_features:
    if not num_features:
      raise ValueError("heads need num_features=C, the width of the features [N, C]")
    return jax.ShapeDtypeStruct((1, num_features), jnp.float32)
  return jax.ShapeDtypeStruct((1, RESOLUTION, RESOLUTION, 3), jnp.float32)


def init_variables(expected: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
  """Random Flax variables with the modules' initialiser distributions, drawn in numpy.

  Compiling `module.init` costs 10-20 s on a CPU for these networks (the random
  number generation, not the forward pass); drawing in numpy costs nothing.
  Kernels: 4-D (conv) He normal with fan-out, std sqrt(2 / (kh kw Cout)), as
  `layers.CONV_INIT`; 2-D (Dense) LeCun normal, std sqrt(1 / fan_in), as Flax's
  default; both truncated at 2 sigma with Flax's variance correction. Biases, BN
  shifts and means 0; BN scales and variances 1. Leaves are drawn in sorted-path
  order from PCG64(seed).

  Args:
    expected: the variable shapes (`jax.eval_shape` of `module.init`).
    seed: numpy seed.

  Returns:
    Nested float32 numpy variables.
  """
  rng = np.random.Generator(np.random.PCG64(seed))
  flat = {}
  for key, leaf in sorted(convert.flatten_variables(expected).items()):
    shape, name = tuple(leaf.shape), key.rsplit("/", 1)[1]
    if name == "kernel":
      fan = shape[0] * shape[1] * shape[3] / 2.0 if len(shape) == 4 else shape[0]
      w = rng.standard_normal(shape)
      while np.any(np.abs(w) > 2):
        bad = np.abs(w) > 2
        w[bad] = rng.standard_normal(int(bad.sum()))
      flat[key] = (w * np.sqrt(1.0 / fan) / _TRUNCATED_STD).astype(np.float32)
    elif name in ("scale", "var"):
      flat[key] = np.ones(shape, np.float32)
    else:
      flat[key] = np.zeros(shape, np.float32)
  return convert.unflatten_variables(flat)


def expected_variables(module: nn.Module, example: jax.ShapeDtypeStruct) -> dict[str, Any]:
  """Shapes of `module`'s variables for input `example`, via `jax.eval_shape` (nothing runs)."""
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), example)


def load_variables(name: str, path: PathLike, expected: Mapping[str, Any]) -> dict[str, Any]:
  """Reads, converts and validates a weights file for `module`.

  Torch keys map as `layer1.0.conv1.weight` -> `params/layer1_0/conv1/kernel`
  (conv OIHW -> HWIO, Linear [out, in] -> [in, out], BN weight/bias/running_mean/
  running_var -> scale/bias/mean/var); wrappers such as `state_dict` and a
  `module.` prefix are removed; non-tensor entries (`best_prec1`) and
  `num_batches_tracked` are ignored.

  Args:
    name: registry name (for messages).
    path: weights file.
    expected: the module's variable shapes (see `expected_variables`).

  Returns:
    numpy Flax variables `{"params": ..., "batch_stats": ...}`, float32.

  Raises:
    FileNotFoundError, CheckpointError (unsafe or corrupt file),
    CheckpointMismatchError: missing, unexpected or mis-shaped keys, all named.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file for model {name!r} not found: {path}")
  target = f"model {name!r}"
  if path.endswith(".safetensors"):
    tensors, metadata = read_safetensors(path)
    if convert.is_native(tensors, metadata):
      stored = metadata.get("backbone") or metadata.get("model")
      if stored and stored != name:
        raise CheckpointMismatchError(path, target,
                                      reason=f"the file was converted for {stored!r}")
      return convert.check_flax_variables(tensors, expected, source=path, target=target)
    state_dict = extract_state_dict(tensors, path)
  else:
    state_dict = read_torch_checkpoint(path)
  variables, _ = convert.torch_to_flax(state_dict, expected, source=path, target=target)
  return variables


def load(name: str, weights: Optional[PathLike] = None, *, num_classes: int = 10,
         seed: int = 0, num_features: Optional[int] = None, normalisation: str = "native",
         dtype: Any = jnp.float32, **settings: Any) -> Net:
  """Builds classifier `name` with random or stored weights.

  Args:
    name: one of `names()`: "cifar_resnet20/32/44/56" (option A, akamaster
      layout), "resnet18_32x32", "wrn40_2", "linear_head", "mlp_head".
    weights: None (random init from `seed`, see `init_variables`) or a weights
      file (see `load_variables`).
    num_classes: classifier outputs; must match the file's head.
    seed: init seed when `weights` is None.
    num_features: heads only: the feature width C of their [N, C] inputs.
    normalisation: "native" (what the weights expect: ImageNet mean/std for the
      cifar_resnet* family, CIFAR-10 mean/std for resnet18_32x32 and wrn40_2)
      or a key of `NORMALISATIONS` ("imagenet", "cifar10", "none").
    dtype: compute dtype; parameters stay float32.
    **settings: model settings, e.g. `hidden=` (mlp_head), `dropout=` (wrn40_2,
      mlp_head).

  Returns:
    A `Net` (resolution 32 for image models, None for heads).

  Raises:
    ValueError: unknown name, setting or normalisation.
    FileNotFoundError, CheckpointError, CheckpointMismatchError: see
      `load_variables`.
  """
  cfg = _config(name)
  unknown = sorted(set(settings) - set(cfg.settings))
  if unknown:
    raise ValueError(f"model {name!r} has no setting(s) {unknown}; valid: {list(cfg.settings)}")
  if num_features is not None and not cfg.needs_features:
    raise ValueError(f"num_features is only for heads, not for {name!r}")
  mean = std = None
  if cfg.normalisation is not None:
    key = cfg.normalisation if normalisation == "native" else normalisation
    if key not in NORMALISATIONS:
      raise ValueError(f"unknown normalisation {normalisation!r}; valid: 'native', "
                       + ", ".join(repr(k) for k in NORMALISATIONS))
    mean, std = NORMALISATIONS[key]
  module = cfg.make(num_classes, dtype, **settings)
  expected = expected_variables(module, _example_input(cfg, num_features))
  if weights is None:
    variables, wid = init_variables(expected, seed), f"random-seed{seed}"
  else:
    variables, wid = load_variables(name, weights, expected), weights_id_of(weights)
  params = jax.tree.map(jnp.asarray, dict(variables))
  return Net(name=name, module=module, params=params,
             resolution=None if cfg.needs_features else RESOLUTION, mean=mean, std=std,
             weights_id=wid, head_path=(cfg.head,))
