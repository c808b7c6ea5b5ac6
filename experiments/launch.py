"""Process setup shared by the entry points: JAX flags, multi-host, TF without GPUs, logging.

Console and metrics flags (every entry point that imports this module accepts them):

  --log_to_console          also show third-party INFO log lines (orbax, jax, absl) on the
                            console; by default they go only to <workdir>/log.txt, and the
                            console shows our stage lines, progress bars and results
                            (`dlsr_jax.logs`)
  --tensorboard=auto|on|off TensorBoard event files next to each run's metrics.jsonl: auto =
                            when the tensorboard package is installed; on without it fails
                            at once naming `pip install 'dlsr_jax[tensorboard]'`

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

import jax
from absl import flags, logging

from dlsr_jax import cli, extras, logs
from dlsr_jax import multihost as multihost_lib
from dlsr_jax.training import metrics_writer

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
_LOG_TO_CONSOLE = flags.DEFINE_bool(
    "log_to_console", False, "Also print third-party INFO log lines (orbax, jax, absl) on the "
    "console; by default they go only to <workdir>/log.txt.")
_TENSORBOARD = flags.DEFINE_enum(
    "tensorboard", "auto", list(metrics_writer.MODES),
    "TensorBoard event files beside each run's metrics.jsonl: auto = if the tensorboard "
    "package is installed; on = always (needs pip install 'dlsr_jax[tensorboard]').")


def setup(multihost: bool | None = None) -> None:
  """Call first in every `main`, before any JAX computation.

  Args:
    multihost: join a multi-process job (True), never (False), or follow
      --multihost / auto-detection (None).
  """
  jax.config.parse_flags_with_absl()
  jax.config.update("jax_threefry_partitionable", True)
  if flags.FLAGS.is_parsed():
    check_tensorboard()
    route_logs(_PROCESS_ID.value or 0)   # before JAX starts its backends (it logs then)
    if multihost is None:
      multihost = _MULTIHOST.value
    multihost_lib.initialize(multihost, coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                             timeout_s=_INIT_TIMEOUT.value)
  else:
    multihost_lib.initialize(multihost)
  if flags.FLAGS.is_parsed() and jax.process_index() != (_PROCESS_ID.value or 0):
    route_logs(jax.process_index())   # a multi-host process whose index was auto-detected
  cli.hide_accelerators_from_tf()
  logging.info("JAX process %d / %d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)


def check_tensorboard() -> None:
  """Applies --tensorboard before any work: `on` without the extra exits 1 naming it."""
  try:
    metrics_writer.set_tensorboard(_TENSORBOARD.value)
  except extras.MissingExtra as e:
    print(cli.failure_message(e), file=sys.stderr, flush=True)
    sys.exit(cli.FAILED_EXIT_CODE)


def route_logs(process_index: int) -> None:
  """Third-party INFO lines to log.txt (log.<i>.txt on process i > 0) only, unless
  --log_to_console (`dlsr_jax.logs.route`): in --outdir when the entry point has one and it
  is given (an evaluation with its own output folder writes nothing into the workdir), else
  in --workdir; an entry point without either keeps absl's console logging. A folder that
  cannot be written keeps the logs on the console (the entry point's own check then names
  the folder in one line)."""
  where = [flags.FLAGS[f].value for f in ("outdir", "workdir") if f in flags.FLAGS]
  folder = next((w for w in where if w), None)
  if not folder:
    return
  try:
    logs.route(folder, to_console=_LOG_TO_CONSOLE.value, process_index=process_index)
  except OSError as e:
    print(f"note: no log file in {folder} ({e.strerror or e}); library logs stay on the "
          "console", file=sys.stderr, flush=True)
