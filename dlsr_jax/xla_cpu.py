"""XLA CPU compile options for the classifier train step (`training.loop`'s jit), ODIN and
the classifier forward pass (`evaluation.forward`).

jaxlib 0.10's CPU compiler hands convolutions to YNNPACK fusions by default. On the
CIFAR ResNets that path is slower than XLA's own convolution kernels: compiled with
`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE` (only reductions go
to YNNPACK) the ResNet-20 train step ran 1.13-1.21x faster and the ResNet-18 step about
1.75-2x faster, interleaved in one process on the 2-core benchmark machine
(`benchmarks/RESULTS.md`, speed_classifiers_wgrad); ODIN (forward and input gradient)
showed no gain under load, but on an idle machine it ran 1.21x (ResNet-20) and 1.65x
(ResNet-18) faster with it (speed_issue17_idle), so `detectors.odin` uses it too, and so
does `evaluation.forward` (idle: 1.15x / 1.49x faster). The option is given per jit
(`jax.jit(..., compiler_options=...)`), not through XLA_FLAGS, so it touches only those
jits and nothing else in the process; results change by float32
rounding only (the resume tests stay bitwise: the same compile before and after a
restart). Only convolutional nets get it: it made the LFDN's (dense) train step 1.27x
slower, so a state without a 4-D leaf keeps XLA's defaults.

Set DLSR_JAX_XLA_CPU_OPTIONS=0 to compile with XLA's defaults.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax

CLASSIFIER_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
ENV_VAR = "DLSR_JAX_XLA_CPU_OPTIONS"


def classifier_compiler_options(devices: Any | None = None,
                                init: Callable[[jax.Array], Any] | None = None,
                                params: Any | None = None) -> dict[str, str] | None:
  """`compiler_options` for a train-step jit that runs on `devices` (default: JAX's backend).

  Args:
    devices: a device, an iterable of devices or a `jax.sharding.Mesh`; their platform
      decides. None: `jax.default_backend()`.
    init: the step's `init(key) -> state`, if known: the options are given only when the
      state holds a convolution kernel (a 4-D leaf, found by `jax.eval_shape`, no compute).
      The option slows down dense nets (the LFDN's train step ran 1.27x slower with it).
    params: the net's parameters, if known (ODIN): the same rule on them, no tracing.

  Returns:
    `CLASSIFIER_CPU_OPTIONS` (a copy) on CPU for a convolutional net, None elsewhere, for
    a state without 4-D leaves, or when the environment variable
    DLSR_JAX_XLA_CPU_OPTIONS is "0".
  """
  if os.environ.get(ENV_VAR, "1").strip() == "0":
    return None
  if devices is None:
    platform = jax.default_backend()
  else:
    if isinstance(devices, jax.sharding.Mesh):
      devices = devices.devices.flat
    elif isinstance(devices, jax.Device):
      devices = [devices]
    platform = next(iter(devices)).platform
  if platform != "cpu":
    return None
  if init is not None and not has_conv_kernels(init):
    return None
  if params is not None and not any(getattr(leaf, "ndim", 0) == 4
                                     for leaf in jax.tree.leaves(params)):
    return None
  if not options_accepted():
    return None
  return dict(CLASSIFIER_CPU_OPTIONS)


@functools.lru_cache(maxsize=None)
def options_accepted() -> bool:
  """Whether this jaxlib's CPU compiler knows `CLASSIFIER_CPU_OPTIONS` (the option is
  experimental: a jaxlib that renamed or dropped it would fail every train-step compile).
  Probed once per process on a one-element function; if refused, XLA's defaults are used
  with a warning."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(CLASSIFIER_CPU_OPTIONS)).lower(
        jax.ShapeDtypeStruct((1,), "float32")).compile()
  except Exception as e:  # noqa: BLE001  # any refusal means: use the defaults
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger(__name__).warning(
        "this jaxlib refuses the XLA CPU option %s (%s): the classifier train step is "
        "compiled with XLA's defaults", CLASSIFIER_CPU_OPTIONS, str(e).splitlines()[0][:200])
    return False
  return True


def has_conv_kernels(init: Callable[[jax.Array], Any]) -> bool:
  """Whether `init(key)`'s state has a 4-D leaf (a conv kernel), by abstract evaluation."""
  try:
    shapes = jax.eval_shape(init, jax.random.key(0))
  except Exception:  # noqa: BLE001  # an init this cannot trace: keep XLA's defaults
    return False
  return any(getattr(leaf, "ndim", 0) == 4 for leaf in jax.tree.leaves(shapes))
