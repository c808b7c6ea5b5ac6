"""Preemption: stop training cleanly on SIGTERM after saving a checkpoint.

With one process a Python SIGTERM handler is installed while the loop runs
(the previous handler is restored after). In a multi-process job JAX's
preemption service (on by default with `jax.distributed`) catches SIGTERM on
any host and `reached_preemption_sync_point` makes every process stop at the
same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from absl import logging


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint at `step`."""

  def __init__(self, step: int):
    self.step = step
    super().__init__(f"preempted: checkpoint saved at step {step}; re-run the same "
                     "training to resume from it")


class _PreemptionWatch:
  """Context manager: did SIGTERM (or JAX's preemption service) ask us to stop?"""

  def __init__(self, enabled: bool, start_step: int):
    self.enabled = enabled
    self.start_step = start_step
    self.use_sync_point = False
    self._signalled = False
    self._old_handler: Any = None
    self._installed = False

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    if not self._signalled:
      logging.warning("SIGTERM received: checkpointing after this step, then stopping")
    self._signalled = True

  def _sync_point_available(self) -> bool:
    """Whether JAX's preemption service runs (it has its own SIGTERM handler)."""
    if not jax.distributed.is_initialized():
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      multihost_utils.reached_preemption_sync_point(self.start_step)
    except RuntimeError:   # jax_enable_preemption_service is off
      return False
    return True

  def __enter__(self) -> "_PreemptionWatch":
    if not self.enabled:
      return self
    if self._sync_point_available():
      self.use_sync_point = True
    elif jax.process_count() > 1:
      logging.warning("JAX's preemption service is off: SIGTERM will not checkpoint")
    elif threading.current_thread() is not threading.main_thread():
      logging.warning("fit runs outside the main thread: SIGTERM will not checkpoint")
    else:
      self._old_handler = signal.signal(signal.SIGTERM, self._handler)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:   # None: the old handler was not set from Python
      old = signal.SIG_DFL if self._old_handler is None else self._old_handler
      signal.signal(signal.SIGTERM, old)
      self._installed = False

  def requested(self, step: int) -> bool:
    """Call once per step, with the step count, on every process."""
    if self.use_sync_point:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
