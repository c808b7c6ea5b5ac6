"""Command-line failure handling shared by the entry points: exit codes, one-line reports.

Config-free: `experiments/launch.py` defines the flags and calls these.

- `reported_failures` wraps a main's work: a preemption exits 143 (re-run to resume), a
  failure the user can fix (`KNOWN_FAILURES`, a full disk / read-only file system / denied
  permission: `environment_error`) prints one line and exits 1, a Ctrl-C exits 130; a bug
  keeps its traceback.
- `parse_flags` is `absl.app.run`'s flags parser with one-line errors for a config file's own
  error and for an override of a key the config lacks.
"""

import contextlib
import errno
import sys
import traceback
from collections.abc import Iterator

import jax
from absl import flags, logging

from dlsr_jax import extras
from dlsr_jax.training.checkpoint import CheckpointError
from dlsr_jax.training.loop import Diverged
from dlsr_jax.training.preemption import Preempted
from dlsr_jax.training.workdir import WorkdirConfigError, WorkdirLocked

# SIGTERM's conventional status (128 + 15): "stopped by the scheduler", so
# job systems restart the command, which then resumes from the checkpoint.
PREEMPTED_EXIT_CODE = 143
FAILED_EXIT_CODE = 1
INTERRUPTED_EXIT_CODE = 130   # 128 + SIGINT: a Ctrl-C outside the training loop
# The failures a user can cause and fix (bad config or data, a damaged checkpoint, a busy
# workdir, a diverged run): one line each, no traceback (`reported_failures`).
KNOWN_FAILURES = (Diverged, CheckpointError, WorkdirLocked, WorkdirConfigError, ValueError,
                  FileNotFoundError, extras.MissingExtra)


def hide_accelerators_from_tf() -> None:
  """TF only feeds input (TFDS, the [tfds] extra): keep it off GPUs so it
  cannot take accelerator memory JAX needs. Imported here, before TFDS does it."""
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


def failure_message(e: BaseException) -> str:
  return f"FAILED ({type(e).__name__}): {e}"


@contextlib.contextmanager
def reported_failures(workdir: str) -> Iterator[None]:
  """Wraps a main's work: the known failures end the process with one message, no traceback.

  `Preempted` (SIGTERM, a first Ctrl-C in training): `exit_preempted`, status 143.
  `KNOWN_FAILURES`: their message on stderr, status 1 (the traceback is logged at debug
  level: `--verbosity=1` shows it). A Ctrl-C elsewhere: a line saying so, status 130.
  Anything else keeps its traceback (a bug).
  """
  try:
    yield
  except Preempted as e:
    exit_preempted(e.step, workdir, e.reason)
  except KNOWN_FAILURES as e:
    logging.debug("%s", traceback.format_exc())
    print(failure_message(e), file=sys.stderr, flush=True)
    sys.exit(FAILED_EXIT_CODE)
  except Exception as e:  # pylint: disable=broad-except
    env = environment_error(e)
    if env is None:
      raise
    logging.debug("%s", traceback.format_exc())
    print(f"FAILED ({type(env).__name__}): {env}", file=sys.stderr, flush=True)
    sys.exit(FAILED_EXIT_CODE)
  except KeyboardInterrupt as e:
    print(f"INTERRUPTED (Ctrl-C){': ' + str(e) if str(e) else ''}; nothing was saved after "
          f"the last checkpoint in {workdir}", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_EXIT_CODE)


_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)


def environment_error(e: BaseException) -> OSError | None:
  """The OSError of a full disk, a read-only file system or a denied permission behind `e`
  (itself, or its cause / context chain, e.g. inside an orbax error); None if there is none.
  Such a failure is the machine's, not a bug: one line, not a traceback."""
  seen = 0
  while e is not None and seen < 20:
    if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
      return e
    if "No space left on device" in str(e):
      return OSError(errno.ENOSPC, f"No space left on device ({str(e).splitlines()[0][:300]})")
    e, seen = e.__cause__ or e.__context__, seen + 1
  return None


def _load_config(argv: list[str]):
  """The config that `--config=path[:arg]` in `argv` names (None if there is none)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  if not spec:
    return None
  path, _, arg = spec[-1].partition(":")
  module_spec = importlib.util.spec_from_file_location("_launch_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _missing_overrides(argv: list[str]) -> list[str]:
  """The `--config.a.b=...` arguments whose key the config lacks."""
  config = _load_config(argv)
  missing = []
  for arg in argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if not name.startswith("config.") or config is None:
      continue
    node = config
    for part in name.split(".")[1:]:
      if not hasattr(node, "keys") or part not in node:
        missing.append(f"--{name}")
        break
      node = node[part]
  return missing


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags parser: a config file's own error (e.g. an unknown variant) is shown
  as its last line, not as the traceback `ml_collections.config_flags` embeds in it; an
  override of a key the config lacks is named, not a KeyError traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    message = str(error)
    if "Traceback (most recent call last)" in message:
      head = message.split("Error whilst parsing config file", 1)[0].rstrip()
      last = [line.strip() for line in message.splitlines() if line.strip()][-1]
      message = f"{head} {last}"
  except (AttributeError, KeyError) as error:   # an override of a key the config lacks
    try:
      missing = _missing_overrides(argv)
    except Exception:  # pylint: disable=broad-except
      missing = []
    inner = error
    while inner.args and isinstance(inner.args[0], BaseException):
      inner = inner.args[0]
    text = str(inner.args[0] if inner.args else inner)
    hint = f" ({text.splitlines()[-1]})" if "Did you mean" in text else ""
    message = (f"the config has no key {', '.join(missing)}{hint}" if missing else
               f"a --config.* override names a key the config does not have: {text}")
  sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                   "Pass --helpshort or --helpfull to see help on flags.\n")
  sys.exit(FAILED_EXIT_CODE)
