"""Preemption: stop training cleanly on SIGTERM or Ctrl-C after saving a checkpoint.

With one process Python handlers for SIGTERM and SIGINT are installed while the
loop runs (the previous handlers are restored after): the first signal makes
the loop save the current step and raise `Preempted`; a second Ctrl-C raises
`KeyboardInterrupt` at once (no save). In a multi-process job JAX's
preemption service (on by default with `jax.distributed`) catches SIGTERM on
any host and `reached_preemption_sync_point` makes every process stop at the
same step (Ctrl-C there keeps Python's default: KeyboardInterrupt, no save).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from absl import logging


class Preempted(Exception):
  """Training stopped on SIGTERM or Ctrl-C (`reason`) after saving a checkpoint at `step`."""

  def __init__(self, step: int, reason: str = "SIGTERM"):
    self.step, self.reason = step, reason
    super().__init__(f"preempted ({reason}): checkpoint saved at step {step}; re-run the "
                     "same training to resume from it")


class _PreemptionWatch:
  """Context manager: did SIGTERM (or JAX's preemption service) ask us to stop?"""

  def __init__(self, enabled: bool, start_step: int):
    self.enabled = enabled
    self.start_step = start_step
    self.use_sync_point = False
    self._signalled = False
    self.reason = "SIGTERM"
    self._old_handlers: dict[int, Any] = {}

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    ctrl_c = signum == signal.SIGINT
    if ctrl_c and self._signalled:
      raise KeyboardInterrupt("second Ctrl-C: stopped at once, without a checkpoint")
    if not self._signalled:
      self.reason = "Ctrl-C" if ctrl_c else "SIGTERM"
      logging.warning("%s received: checkpointing after this step, then stopping%s",
                      self.reason, " (Ctrl-C again stops at once, without saving)"
                      if ctrl_c else "")
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
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old_handlers[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._old_handlers.items():   # None: not set from Python
      signal.signal(sig, signal.SIG_DFL if old is None else old)
    self._old_handlers = {}

  def requested(self, step: int) -> bool:
    """Call once per step, with the step count, on every process."""
    if self.use_sync_point:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
