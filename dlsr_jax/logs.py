"""A quiet console: the project's own log lines on the console, everyone's in <workdir>/log.txt.

`route(workdir)` (the experiments call it in `launch.setup`) adds a file handler to the root
logger, so every Python / absl log record at the active verbosity (INFO by default) of every
library (orbax, jax, absl, TensorFlow's Python side) and of ours goes to <workdir>/log.txt
(log.<process>.txt on the processes other than 0 of a multi-host job), and filters the
console (absl's stderr handler): it keeps the records of `dlsr_jax` and `experiments`
(stage lines such as "features of ...", "row dlsr: training ...") and WARNING or worse from
anyone, and drops third-party INFO / DEBUG lines (orbax writes about three per checkpoint).
Progress bars (tqdm), the final table and printed lines do not go through logging and are
untouched. `route(workdir, to_console=True)` (`--log_to_console`) keeps every line on the
console as before (and still writes log.txt).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from absl import logging as absl_logging

LOG_FILE = "log.txt"
# Where the project's code lives: records whose caller file is inside one of these stay on
# the console (absl's logger reports the real caller's path, whichever library logs).
_PROJECT_DIRS = tuple(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + d + os.sep
    for d in ("dlsr_jax", "experiments"))
_PROJECT_LOGGERS = ("dlsr_jax", "experiments")
# Third-party warnings that only restate what we asked for (an evaluation opens checkpoints
# read-only on purpose): kept in log.txt, not on the console.
_EXPECTED_WARNINGS = ("Given directory is read only",
                      "CheckpointManagerOptions.read_only=True")


class ConsoleFilter(logging.Filter):
  """Passes the project's records and WARNING+ from anyone; drops third-party INFO / DEBUG
  and the warnings that restate a setting we chose (`_EXPECTED_WARNINGS`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return (record.levelno > logging.WARNING
              or not record.getMessage().startswith(_EXPECTED_WARNINGS))
    if record.name.split(".")[0] in _PROJECT_LOGGERS:
      return True
    return os.path.abspath(record.pathname or "").startswith(_PROJECT_DIRS)


class _FileHandler(logging.FileHandler):
  """The log.txt handler (a class of its own so `route` can find and replace it)."""


def log_path(workdir: str, process_index: int = 0) -> str:
  name = LOG_FILE if process_index == 0 else f"log.{process_index}.txt"
  return os.path.join(workdir, name)


def route(workdir: str, *, to_console: bool = False,
          process_index: Optional[int] = None) -> str:
  """Sends every log record to <workdir>/log.txt and only the project's INFO to the console.

  Calling it again (another workdir, a test) replaces the previous file handler and filter.

  Args:
    workdir: the run's directory (made if missing).
    to_console: keep third-party INFO lines on the console too (`--log_to_console`).
    process_index: this process's index (None: `jax.process_index()`); process i > 0
      writes log.<i>.txt.

  Returns:
    The log file's path.
  """
  if process_index is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index()
  os.makedirs(workdir, exist_ok=True)
  path = log_path(workdir, process_index)
  root = logging.getLogger()
  for h in [h for h in root.handlers if isinstance(h, _FileHandler)]:
    root.removeHandler(h)
    h.close()
  handler = _FileHandler(path, mode="a", encoding="utf-8")
  handler.setFormatter(absl_logging.PythonFormatter())
  root.addHandler(handler)
  console = absl_logging.get_absl_handler()
  for f in [f for f in console.filters if isinstance(f, ConsoleFilter)]:
    console.removeFilter(f)
  if not to_console:
    console.addFilter(ConsoleFilter())
  if root.level == logging.NOTSET or root.level > logging.INFO:
    root.setLevel(logging.INFO)   # absl's default verbosity; --verbosity=1 lowers it to DEBUG
  return path
