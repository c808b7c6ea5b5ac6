"""Process setup shared by the entry points: JAX flags, TF without GPUs, logging."""

import sys

import jax
from absl import logging


def setup(multihost: bool = False) -> None:
  """Call first in every `main`. `multihost`: join a multi-process job."""
  jax.config.parse_flags_with_absl()
  jax.config.update("jax_threefry_partitionable", True)
  if multihost:
    jax.distributed.initialize()
  if "tensorflow" in sys.modules:  # TF only feeds TFDS input: keep it off accelerators
    sys.modules["tensorflow"].config.set_visible_devices([], "GPU")
  logging.info("JAX process %d / %d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
