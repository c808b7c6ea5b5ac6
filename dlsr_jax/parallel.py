"""Device mesh and shardings for data-parallel training and scoring.

Params are replicated, batches are sharded along the leading axis over the
"data" mesh axis. The same code runs on 1 CPU, N fake CPU devices, GPUs, TPUs
and several processes: each process feeds the rows of a global batch that
its own devices hold (`local_rows`), whatever the mesh's device order.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

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


def local_rows(mesh: Mesh, global_batch: int) -> np.ndarray:
  """Rows of a global [global_batch, ...] batch that this process must feed.

  In the order `host_to_global` expects them: the row blocks of this
  process's devices, by increasing start row (blocks of replicated devices
  counted once). For the default mesh over `jax.devices()`, process p of P
  gets the contiguous rows [p * B / P, (p + 1) * B / P).

  Args:
    mesh: the 1-D data mesh.
    global_batch: global batch size (divisible by the mesh size).

  Returns:
    [global_batch * local devices / mesh size] int64 row indices.
  """
  check_divisible(global_batch, mesh)
  index_map = data_sharded(mesh).addressable_devices_indices_map((global_batch,))
  starts = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
  if not starts:
    raise ValueError("this process owns no device of the mesh")
  rows = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in starts])
  n_local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  if rows.size != global_batch * n_local // mesh.devices.size:
    raise ValueError(f"this process's devices hold {rows.size} rows of a batch of "
                     f"{global_batch}, expected {global_batch * n_local // mesh.devices.size}")
  return rows


def host_to_global(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """Host-local rows -> global [global_B, ...] array sharded on data.

  `local` holds this process's rows of the global batch, i.e.
  `global_batch[local_rows(mesh, global_B)]`.
  """
  return jax.make_array_from_process_local_data(data_sharded(mesh), np.asarray(local))


def replicate(tree, mesh: Mesh):
  """Puts a pytree on every device of the mesh (replicated)."""
  return jax.device_put(tree, replicated(mesh))


def global_to_sharded(x: Any, sharding: NamedSharding) -> jax.Array:
  """A full host value (identical on every process) as a global array with `sharding`.

  Accepts numpy arrays, jax arrays (PRNG key arrays included) and scalars;
  arrays that already have `sharding` pass through unchanged.
  """
  if isinstance(x, jax.Array):
    if x.sharding == sharding:
      return x
    if sharding.is_fully_addressable or not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = global_to_sharded(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  elif sharding.is_fully_addressable:
    return jax.device_put(np.asarray(x), sharding)
  x = np.asarray(x)
  return jax.make_array_from_process_local_data(sharding, x, x.shape)


def shard_score_fn(score_fn: Callable[..., dict], mesh: Mesh) -> Callable[..., dict]:
  """Jits a `scoring.make_score_fn` function data-parallel over `mesh`.

  `score(params, z0 [B, C], sample_ids [B], ks [K], key)`: params, ks and key
  are replicated, z0 and sample_ids are sharded on their batch axis (B must
  be divisible by the mesh size), the {type: [K, B]} outputs are replicated so
  every process can read them (`np.asarray`). Inputs are the full host values,
  identical on every process; results equal the single-device ones up to
  float round-off (noise comes from per-example keys).
  """
  rep, dat = replicated(mesh), data_sharded(mesh)
  jitted = jax.jit(score_fn, in_shardings=(rep, dat, dat, rep, rep), out_shardings=rep)

  def score(params, z0, sample_ids, ks, key):
    check_divisible(int(np.shape(z0)[0]), mesh)
    params = jax.tree.map(lambda p: global_to_sharded(p, rep), params)
    return jitted(params, global_to_sharded(z0, dat), global_to_sharded(sample_ids, dat),
                  global_to_sharded(ks, rep), global_to_sharded(key, rep))

  return score
