"""Training metrics on disk without TensorFlow (replaces clu.metric_writers, which imports it).

Every writer appends one JSON line per `write_scalars` call to <workdir>/metrics.jsonl
(`{"step": 100, "time": 1733550000.0, "loss": 0.12, ...}`), so a run without any extra
still keeps its curves. TensorBoard event files are written beside it according to the
mode (`--tensorboard` in the experiments):

  auto  when the `tensorboard` package is installed (the default),
  on    always; without the package `set_tensorboard("on")` raises `extras.MissingExtra`
        naming `pip install 'dlsr_jax[tensorboard]'` (call it before any work),
  off   never.

The event files are written with TensorBoard's own protos and record writer (no TensorFlow
import): scalars as `simple_value`, which TensorBoard's Scalars tab reads.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Mapping, Optional

import numpy as np

from dlsr_jax import extras

MODES = ("auto", "on", "off")
METRICS_FILE = "metrics.jsonl"
_mode = "auto"


def check_mode(mode: str) -> str:
  """`mode` if TensorBoard output can follow it; raises ValueError / extras.MissingExtra."""
  if mode not in MODES:
    raise ValueError(f"tensorboard mode must be one of {MODES}, got {mode!r}")
  if mode == "on":
    extras.require("tensorboard", "--tensorboard=on (TensorBoard event files)")
  return mode


def set_tensorboard(mode: str) -> None:
  """Sets the mode of the writers `create` makes later (the process's `--tensorboard`)."""
  global _mode
  _mode = check_mode(mode)


def get_tensorboard() -> str:
  return _mode


def wants_tensorboard(mode: Optional[str] = None) -> bool:
  """Whether a writer with `mode` (None: the process's) writes TensorBoard event files."""
  mode = check_mode(_mode if mode is None else mode)
  return mode == "on" or (mode == "auto" and extras.installed("tensorboard"))


class _EventFile:
  """One TensorBoard event file (TFRecord framing of `Event` protos), TensorFlow-free."""

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time()):010d}."
                                     f"{socket.gethostname()}.{os.getpid()}.dlsr_jax")
    self._writer = RecordWriter(open(self.path, "wb"))  # noqa: SIM115 (closed in close)
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    self._writer.write(event.SerializeToString())

  def scalars(self, step: int, scalars: Mapping[str, float], wall_time: float) -> None:
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
    self._write(self._event_pb2.Event(wall_time=wall_time, step=step,
                                      summary=self._summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _float(v) -> Optional[float]:
  x = float(np.asarray(v))
  return x if math.isfinite(x) else None   # JSON has no NaN / inf: null


class MetricsWriter:
  """Scalars per step -> <workdir>/metrics.jsonl (+ TensorBoard events per the mode).

  Args:
    workdir: the run's directory (made if missing).
    tensorboard: "auto", "on" or "off"; None: the process's mode (`set_tensorboard`).
    enabled: False writes nothing (the processes other than 0 of a multi-host job).
  """

  def __init__(self, workdir: str, *, tensorboard: Optional[str] = None, enabled: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._workdir = workdir
    self._jsonl = None
    self._events = None
    self._tensorboard = False
    if not enabled:
      return
    self._tensorboard = wants_tensorboard(tensorboard)   # raises before any file is made
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(self.path, "a")  # noqa: SIM115 (held until close)

  @property
  def event_file(self) -> Optional[str]:
    return self._events.path if self._events is not None else None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Appends one line {"step", "time", name: value...} (and one TensorBoard event)."""
    if self._jsonl is None:
      return
    now = time.time()
    values = {str(k): _float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "time": round(now, 3), **values}) + "\n")
    self._jsonl.flush()   # one short line per log step: a killed run keeps its curve
    if self._tensorboard and self._events is None:   # made at the first scalars: a restored
      self._events = _EventFile(self._workdir)        # run leaves no empty event file
    if self._events is not None:
      self._events.scalars(int(step), {k: float(np.asarray(v)) for k, v in scalars.items()},
                           now)

  def flush(self) -> None:
    if self._jsonl is None:   # disabled or closed
      return
    self._jsonl.flush()
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._events is not None:
      self._events.close()
    self._tensorboard = False

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def create(workdir: str, *, tensorboard: Optional[str] = None) -> MetricsWriter:
  """The writer of a training run: process 0 writes, the others are silent."""
  import jax  # pylint: disable=g-import-not-at-top
  return MetricsWriter(workdir, tensorboard=tensorboard, enabled=jax.process_index() == 0)
