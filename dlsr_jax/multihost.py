"""Multi-process (multi-host) helpers: start-up, data shards, gathers, preemption.

A multi-process job runs the same program once per host (TPU pod workers,
GPU nodes, or several processes on one machine). `initialize` joins the job
through `jax.distributed.initialize`; afterwards `jax.devices()` lists every
device of every process and one global mesh spans them.

When to join (`initialize(enable=None)`, the default of the entry points):

  * ``enable=True``: always. Arguments left as None are auto-detected by JAX
    (Cloud TPU, Slurm, Open MPI, Kubernetes) or read from
    ``JAX_COORDINATOR_ADDRESS``.
  * ``enable=None`` (auto): only where a multi-process job is certain:
    ``JAX_COORDINATOR_ADDRESS`` is set, a coordinator address is given, or the
    process runs on a Cloud TPU VM (JAX detects pod slices itself, and a
    single-host TPU VM simply becomes a 1-process job). Slurm and MPI jobs are
    NOT auto-joined (an allocation's variables are also set for single
    processes started inside it): pass ``--multihost`` there.
  * ``enable=False``: never.

All processes must see the same files (the workdir: orbax checkpoints are
written collectively into it) and the same input data.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Optional

import jax
import numpy as np
from absl import logging

TPU_POD_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES")


# PCI ids of Cloud TPU chips (Google vendor id; device ids v3 .. TPU7x), as JAX's own
# Cloud TPU check reads them. A newer chip missing here is still found through the pod
# variables below; a single-host VM needs no job anyway.
_GOOGLE_PCI_VENDOR_ID = "0x1ae0"
_TPU_PCI_DEVICE_IDS = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def _tpu_chips_visible() -> bool:
  """Whether a Cloud TPU chip is attached through PCI (reads /sys; no backend start)."""
  for vendor_path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_path) as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR_ID:
          continue
      with open(os.path.join(os.path.dirname(vendor_path), "device")) as f:
        if f.read().strip() in _TPU_PCI_DEVICE_IDS:
          return True
    except OSError:
      continue
  return False


def _libtpu_installed() -> bool:
  path = os.environ.get("TPU_LIBRARY_PATH")
  return bool(path and os.path.isfile(path)) or importlib.util.find_spec("libtpu") is not None


def _on_cloud_tpu_vm() -> bool:
  """Whether this is a Cloud TPU VM (no backend start).

  The test JAX runs at import (libtpu installed and TPU chips on the PCI bus, or
  JAX_FORCE_TPU_INIT), made from public signals instead of JAX's private flag; then the
  pod-slice variables.
  """
  if "JAX_FORCE_TPU_INIT" in os.environ or (_libtpu_installed() and _tpu_chips_visible()):
    return True
  hosts = [h for var in TPU_POD_ENV_VARS for h in os.environ.get(var, "").split(",") if h]
  return len(hosts) > 1 or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def detect_cluster() -> Optional[str]:
  """Why this process should auto-join a multi-process job, or None."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS is set"
  if _on_cloud_tpu_vm():
    return "running on a Cloud TPU VM"
  return None


def initialize(enable: Optional[bool] = None, coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None,
               timeout_s: int = 300) -> bool:
  """Joins the multi-process job if asked to or if one is detected (see module doc).

  Must run before anything starts a JAX backend (`jax.devices()`, any
  computation). CPU processes use gloo collectives over TCP (JAX's default).

  Args:
    enable: True = join, False = never, None = auto-detect.
    coordinator_address: "host:port" of process 0 (None: auto / env).
    num_processes, process_id: None to auto-detect.
    timeout_s: how long to wait for all processes to connect.

  Returns:
    Whether `jax.distributed.initialize` was called.
  """
  if jax.distributed.is_initialized():
    return True
  if enable is None:
    reason = "a coordinator address was given" if coordinator_address else detect_cluster()
    if reason is None:
      return False
    logging.info("joining a multi-process JAX job: %s (--nomultihost to opt out)", reason)
  elif not enable:
    return False
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        "could not join the multi-process JAX job (coordinator "
        f"{coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or 'auto'}, "
        f"{num_processes or 'auto'} processes, process id {process_id}): {e}. Give "
        "--coordinator_address, --num_processes and --process_id, or run "
        "single-process with --nomultihost") from e
  return True


def shard_range(n: int, process_index: Optional[int] = None,
                process_count: Optional[int] = None) -> tuple[int, int]:
  """[lo, hi): this process's contiguous share of n examples (sizes differ by <= 1)."""
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= p < count:
    raise ValueError(f"process_index {p} must lie in [0, {count})")
  if n < count:
    raise ValueError(f"{n} examples cannot be split over {count} processes")
  return p * n // count, (p + 1) * n // count


def allgather_rows(local: np.ndarray, n: int) -> np.ndarray:
  """Concatenates every process's `shard_range(n)` rows into the full [n, ...] array.

  Collective: every process must call it, each with its own rows. With one
  process it returns `local` unchanged.
  """
  local = np.asarray(local)
  count = jax.process_count()
  lo, hi = shard_range(n)
  if local.shape[0] != hi - lo:
    raise ValueError(f"process {jax.process_index()} holds {local.shape[0]} rows, "
                     f"expected {hi - lo} (rows [{lo}, {hi}) of {n})")
  if count == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  width = -(-n // count)
  padded = np.zeros((width,) + local.shape[1:], local.dtype)
  padded[:local.shape[0]] = local
  stacked = np.asarray(multihost_utils.process_allgather(padded, tiled=False))
  parts = [stacked[p, :b - a] for p, (a, b) in
           enumerate(shard_range(n, p, count) for p in range(count))]
  return np.concatenate(parts, axis=0)



_CONNECTED: set[tuple[int, ...]] = set()
_BARRIERS = [0]    # barriers passed by this process (every process counts the same)


def connect_collectives(mesh, timeout_s: int = 300) -> None:
  """Connects the CPU collectives of `mesh` while all processes are in step.

  On CPU, JAX's gloo collectives connect the processes of a device group at
  the first collective over that group, with a fixed deadline of 30 s: a
  process that reaches its first training step more than 30 s after another
  (slower data loading, a compilation on a busy host) fails with "Gloo context
  initialization failed". So, once per device group: a barrier of the
  coordination service (waits up to `timeout_s`), then one tiny reduction over
  every device of `mesh` and one `sync_global_devices` (the one-device-per-
  process group of orbax's barriers and `process_allgather`), compiled before
  the barrier. Later collectives of a connected group wait as long as needed.
  No-op with one process or off CPU (TPU / GPU collectives have no such
  deadline).
  """
  devices = tuple(sorted(d.id for d in mesh.devices.flat))
  if jax.process_count() == 1 or mesh.devices.flat[0].platform != "cpu" \
      or devices in _CONNECTED:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint import multihost as ocp_multihost  # pylint: disable=g-import-not-at-top
  spec = PartitionSpec(mesh.axis_names)
  local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  ones = jax.make_array_from_process_local_data(NamedSharding(mesh, spec),
                                                np.ones(local, np.int32))
  total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))
  compiled = total.lower(ones).compile()
  _BARRIERS[0] += 1
  ocp_multihost.sync_global_processes(f"dlsr_connect_collectives_{_BARRIERS[0]}",
                                      timeout=timeout_s,
                                      processes=set(range(jax.process_count())))
  got = int(jax.device_get(compiled(ones)))
  if got != mesh.devices.size:
    raise RuntimeError(f"the collectives of {mesh.devices.size} devices summed {got} ones")
  multihost_utils.sync_global_devices(f"dlsr_connect_collectives_{_BARRIERS[0]}")
  _CONNECTED.add(devices)
