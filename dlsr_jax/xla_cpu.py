"""XLA CPU compile options for the classifier train step (`training.loop`'s jit).

jaxlib 0.10's CPU compiler hands convolutions to YNNPACK fusions by default. On the
CIFAR ResNets that path is slower than XLA's own convolution kernels: compiled with
`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE` (only reductions go
to YNNPACK) the ResNet-20 train step ran 1.13-1.21x faster and the ResNet-18 step about
1.75-2x faster, interleaved in one process on the 2-core benchmark machine
(`benchmarks/RESULTS.md`, speed_classifiers_wgrad); ODIN (forward and input gradient
only) showed no gain, so `detectors.odin` keeps XLA's defaults. The option is given per
jit (`jax.jit(..., compiler_options=...)`), not through XLA_FLAGS, so it touches only
the classifier train step and nothing else in the process; results change by float32
rounding only (the resume tests stay bitwise: the same compile before and after a
restart).

Set DLSR_JAX_XLA_CPU_OPTIONS=0 to compile with XLA's defaults.
"""

from __future__ import annotations

import os
from typing import Any

import jax

CLASSIFIER_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
ENV_VAR = "DLSR_JAX_XLA_CPU_OPTIONS"


def classifier_compiler_options(devices: Any | None = None) -> dict[str, str] | None:
  """`compiler_options` for a classifier jit that runs on `devices` (default: JAX's backend).

  Args:
    devices: a device, an iterable of devices or a `jax.sharding.Mesh`; their platform
      decides. None: `jax.default_backend()`.

  Returns:
    `CLASSIFIER_CPU_OPTIONS` (a copy) on CPU, None elsewhere or when the environment
    variable DLSR_JAX_XLA_CPU_OPTIONS is "0".
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
  return dict(CLASSIFIER_CPU_OPTIONS) if platform == "cpu" else None
