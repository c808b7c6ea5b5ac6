"""Optional dependencies ("extras"): a clear error naming the extra to install, before any work.

The base install (`pip install .`) has no TensorFlow, TensorFlow Datasets or TensorBoard.
`tfds:` data sources need `pip install 'dlsr_jax[tfds]'`; TensorBoard event files need
`pip install 'dlsr_jax[tensorboard]'` (`[all]` installs both).
"""

from __future__ import annotations

import importlib.util

# extra name -> the modules it provides (what `installed` looks for)
EXTRAS = {
    "tfds": ("tensorflow", "tensorflow_datasets"),
    "tensorboard": ("tensorboard",),
}


class MissingExtra(ImportError):
  """An optional dependency is not installed; the message names the pip command."""


def pip_command(extra: str) -> str:
  return f"pip install 'dlsr_jax[{extra}]'"


def _found(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):   # a parent package missing, or sys.modules[m] is None
    return False


def installed(extra: str) -> bool:
  """Whether every module of `extra` can be imported (nothing is imported)."""
  return all(_found(m) for m in EXTRAS[extra])


def missing_message(extra: str, what: str) -> str:
  modules = [m for m in EXTRAS[extra] if not _found(m)]
  return (f"{what} needs the optional '{extra}' dependencies ({', '.join(modules)} not "
          f"installed): {pip_command(extra)}")


def require(extra: str, what: str) -> None:
  """Raises MissingExtra naming `what` and the pip command if `extra` is not installed.

  Args:
    extra: a key of EXTRAS ("tfds", "tensorboard").
    what: what needs it, for the message (e.g. "data source 'tfds:cifar10:test'").
  """
  if not installed(extra):
    raise MissingExtra(missing_message(extra, what))
