"""ODIN (Liang et al., ICLR 2018): temperature scaling and a signed-gradient input step.

Per image, with f the classifier on normalised inputs and x the pixels in [0, 1]:
pseudo-label y = argmax f(normalise(x)) (unscaled logits); loss = CE(f(normalise(x)) / T, y);
x' = x - eps * sign(d loss / d x) with the gradient taken through the normalisation (so eps is
in [0, 1] pixel units) and a zero gradient counting as +1; score = -max softmax(f(x') / T).
x' is not clipped to [0, 1] unless `clip=True` (the paper's code does not clip).

`input="features"` runs ODIN on a head over cached backbone features: the same step is taken
on the head's input features (eps then in feature units, not pixels: the backbone is not
differentiated), reading "features" instead of "images".
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax import xla_cpu
from dlsr_jax.data import batching
from dlsr_jax.detectors import base

__all__ = ["Net", "make", "odin_features_score", "odin_score", "perturb"]

Params = Any


class Net(Protocol):
  """What ODIN needs of a classifier."""
  params: Params

  def normalise(self, x01: jax.Array) -> jax.Array:
    """[B, H, W, 3] float in [0, 1] -> the net's float NHWC input (jnp, differentiable)."""

  def apply(self, params: Params, x: jax.Array) -> tuple[jax.Array, Any]:
    """(params, normalised input) -> (logits [B, K], other outputs)."""


def _logits(net: Net, params: Params, x01: jax.Array) -> jax.Array:
  logits, _ = net.apply(params, net.normalise(x01))
  return logits.astype(jnp.float32)


def perturb(net: Net, params: Params, x01: jax.Array, temperature: float | jax.Array,
            eps: float | jax.Array, clip: bool = False) -> jax.Array:
  """ODIN's input step x - eps * sign(grad) (not jitted; callers jit).

  The loss is summed over the batch, so each image's gradient is its own loss's gradient (a
  mean would shrink it by 1/B and make more entries underflow to an exact zero).

  Args:
    net: the classifier (see `Net`).
    params: its variables (an argument, never closed over).
    x01: [B, H, W, 3] float pixels in [0, 1].
    temperature: T > 0.
    eps: the step size in [0, 1] pixel units.
    clip: clip x' to [0, 1].

  Returns:
    [B, H, W, 3] float32 perturbed pixels.
  """
  x01 = jnp.asarray(x01, jnp.float32)
  t = jnp.asarray(temperature, jnp.float32)

  def loss(x: jax.Array) -> jax.Array:
    logits = _logits(net, params, x)
    labels = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)   # unscaled: the pseudo-label
    logp = jax.nn.log_softmax(logits / t, axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

  grad = jax.grad(loss)(x01)
  x = x01 - jnp.asarray(eps, jnp.float32) * jnp.where(grad >= 0, 1.0, -1.0)
  return jnp.clip(x, 0.0, 1.0) if clip else x


def odin_score(net: Net, params: Params, images: jax.Array, temperature: float | jax.Array,
               eps: float | jax.Array, clip: bool = False) -> jax.Array:
  """ODIN scores of a batch of uint8 images (not jitted; `make` jits it per net).

  Args:
    net: the classifier (see `Net`).
    params: its variables.
    images: [B, H, W, 3] uint8.
    temperature: T > 0.
    eps: the step size in [0, 1] pixel units (0: temperature-scaled MSP).
    clip: clip the perturbed pixels to [0, 1].

  Returns:
    [B] float32 scores -max softmax(f(x') / T); higher = more OOD.
  """
  x = perturb(net, params, jnp.asarray(images, jnp.float32) / 255.0, temperature, eps, clip)
  t = jnp.asarray(temperature, jnp.float32)
  return -jnp.max(jax.nn.softmax(_logits(net, params, x) / t, axis=-1), axis=-1)


def odin_features_score(net: Net, params: Params, z: jax.Array,
                        temperature: float | jax.Array, eps: float | jax.Array) -> jax.Array:
  """ODIN on a head's input features [B, C] (eps in feature units); not jitted.

  Returns:
    [B] float32 scores -max softmax(head(z') / T), z' = z - eps * sign(grad_z loss).
  """
  z = perturb(net, params, jnp.asarray(z, jnp.float32), temperature, eps)
  t = jnp.asarray(temperature, jnp.float32)
  return -jnp.max(jax.nn.softmax(_logits(net, params, z) / t, axis=-1), axis=-1)


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
  ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating)) and (
      value >= 0 if allow_zero else value > 0)
  if not ok:
    kind = "a non-negative" if allow_zero else "a positive"
    raise ValueError(f"odin: {name} must be {kind} number, got {value!r}")
  return float(value)


def odin_kernel(net: Net, clip: bool = False) -> Callable[..., jax.Array]:
  """`odin_score` jitted with the net's functions bound (its params stay a traced argument:
  `kernel(params, images, temperature, eps)`). A convolutional net on CPU is compiled with
  the XLA CPU options of the classifier train step (`dlsr_jax.xla_cpu`): on an idle machine
  they made ODIN 1.21x faster on ResNet-20 and 1.65x on ResNet-18 (benchmarks/RESULTS.md,
  speed_issue17_idle)."""
  opts = xla_cpu.classifier_compiler_options(params=net.params)
  return jax.jit(functools.partial(odin_score, net, clip=clip), compiler_options=opts)


def make(net: Net, temperature: float = 1000.0, eps: float = 0.0014, batch_size: int = 256,
         clip: bool = False, input: str = "images") -> base.Detector:
  """ODIN on a classifier that reads images.

  Args:
    net: any object with `.params`, `.normalise(x01)` and `.apply(params, x) -> (logits, out)`.
    temperature: T > 0 (paper: 1000).
    eps: the input step in [0, 1] pixel units, >= 0 (paper, CIFAR-10: 0.0014).
    batch_size: images per jitted call (the last batch is padded).
    clip: clip the perturbed pixels to [0, 1] (default False, as in the paper's code).
    input: "images" (the net reads images) or "features" (a head on cached features: the
      step is taken on the features, eps in feature units; `clip` must be False).

  Returns:
    A `Detector` reading (input,) with score {"odin": [N]}.
  """
  for attr in ("params", "normalise", "apply"):
    if not hasattr(net, attr):
      raise TypeError(f"odin: net must have .params, .normalise and .apply; "
                      f"{type(net).__name__} has no .{attr}")
  t = _positive("temperature", temperature)
  step = _positive("eps", eps, allow_zero=True)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise ValueError(f"odin: batch_size must be a positive int, got {batch_size!r}")
  if not isinstance(clip, bool):
    raise ValueError(f"odin: clip must be a bool, got {clip!r}")
  if input not in ("images", "features") or (input == "features" and clip):
    raise ValueError(f"odin: input must be 'images' or 'features' (without clip), got "
                     f"{input!r}")
  kernel = odin_kernel(net, clip) if input == "images" else jax.jit(
      functools.partial(odin_features_score, net))

  def fit(arrays: base.SetArrays, key: jax.Array) -> None:
    del arrays, key   # nothing to fit
    return None

  def score(state: None, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del state, key
    images = np.asarray(arrays[input])
    if input == "features":
      images = images.astype(np.float32)
    elif images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"odin: images must be uint8 [N, H, W, 3], got {images.dtype} "
                       f"{images.shape}")
    params = jax.device_put(net.params)
    out = batching.map_padded(lambda x: kernel(params, x, t, step), images, batch_size)
    return {"odin": np.asarray(out, np.float32)}

  return base.Detector(name="odin", reads=(input,), fit=fit, score=score, fit_reads=())
