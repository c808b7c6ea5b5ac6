"""Process setup shared by the entry points: JAX flags, multi-host, TF without GPUs, logging.

Multi-host flags (defined here, so every entry point that imports this module
accepts them):

  --multihost / --nomultihost   join a multi-process JAX job (default: auto,
                                see `dlsr_jax.multihost`: on Cloud TPU VMs or
                                when JAX_COORDINATOR_ADDRESS is set)
  --coordinator_address=H:P     process 0's address (default: auto-detected)
  --num_processes=N --process_id=I

Example, two processes on one machine (CPU, gloo collectives):

  python -m experiments.train --config=... --workdir=wd --multihost \
      --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0 &
  python -m experiments.train --config=... --workdir=wd --multihost \
      --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=1
"""

import sys
from typing import Optional

import jax
from absl import flags, logging

from dlsr_jax import multihost as multihost_lib

# SIGTERM's conventional status (128 + 15): "stopped by the scheduler", so
# job systems restart the command, which then resumes from the checkpoint.
PREEMPTED_EXIT_CODE = 143

_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Join a multi-process JAX job via jax.distributed.initialize(). "
    "Default: auto (Cloud TPU VMs, or JAX_COORDINATOR_ADDRESS set).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host; default auto).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (multi-host; default auto).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (multi-host; default auto).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "multihost_timeout_s", 300, "Seconds to wait for every process to join.")


def setup(multihost: Optional[bool] = None) -> None:
  """Call first in every `main`, before any JAX computation.

  Args:
    multihost: join a multi-process job (True), never (False), or follow
      --multihost / auto-detection (None).
  """
  jax.config.parse_flags_with_absl()
  jax.config.update("jax_threefry_partitionable", True)
  if flags.FLAGS.is_parsed():
    if multihost is None:
      multihost = _MULTIHOST.value
    multihost_lib.initialize(multihost, coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                             timeout_s=_INIT_TIMEOUT.value)
  else:
    multihost_lib.initialize(multihost)
  hide_accelerators_from_tf()
  logging.info("JAX process %d / %d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)


def hide_accelerators_from_tf() -> None:
  """TF only feeds input (TFDS) and writes summaries (clu): keep it off GPUs so it
  cannot take accelerator memory JAX needs. Imported here, before clu/TFDS do it."""
  if jax.default_backend() == "cpu" and "tensorflow" not in sys.modules:
    return   # nothing to protect; skip the TF import (seconds) on CPU-only runs
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")


def preempted_message(step: int, workdir: str, reason: str = "SIGTERM") -> str:
  return (f"PREEMPTED: training stopped on {reason} at step {step}; a checkpoint was saved "
          f"in {workdir}. Re-run the same command to resume from it.")


def exit_preempted(step: int, workdir: str, reason: str = "SIGTERM") -> None:
  """Reports a preemption (process 0 prints) and exits with PREEMPTED_EXIT_CODE.

  Args:
    step: the step of the saved checkpoint.
    workdir: where it was saved.
    reason: what stopped the run ("SIGTERM" or "Ctrl-C": `Preempted.reason`).
  """
  msg = preempted_message(step, workdir, reason)
  logging.warning(msg)
  if jax.process_index() == 0:
    print(msg, flush=True)
  sys.exit(PREEMPTED_EXIT_CODE)
