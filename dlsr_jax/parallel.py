"""Device mesh and shardings for data-parallel training and scoring.

Params are replicated, batches are sharded along the leading axis over the
"data" mesh axis. The same code runs on 1 CPU, N fake CPU devices, GPUs, TPUs
and several hosts (each host feeds its local slice of the global batch).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Shards the leading (batch) axis over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(global_batch: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"batch size {global_batch} is not divisible by the number of "
                     f"devices ({n}); pick a multiple of {n}")


def host_to_global(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """Host-local [local_B, ...] numpy -> global [global_B, ...] array sharded on data."""
  return jax.make_array_from_process_local_data(data_sharded(mesh), np.asarray(local))


def replicate(tree, mesh: Mesh):
  """Puts a pytree on every device of the mesh (replicated)."""
  return jax.device_put(tree, replicated(mesh))
