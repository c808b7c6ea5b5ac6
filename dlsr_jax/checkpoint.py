"""Orbax checkpoints of the LFDN `TrainState`.

Two managers under a workdir: `checkpoints/` keeps the latest `max_to_keep`
states, `checkpoints_first_epoch/` keeps the state after the first epoch
(needed by the LR score) and is never pruned. Saves are asynchronous; call
`wait()` before reading them back or exiting. Only arrays are saved; restore
needs an abstract target (`jax.eval_shape` of the init + shardings).

A step becomes visible (`latest_step`) only once it is completely written
(orbax writes into a temporary directory and renames it), so a process killed
mid-save resumes from the previous step. In a multi-process job every process
constructs the `Checkpointer` and calls `save`/`restore_*` with the same
arguments (collectively) on a directory all of them can see.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
FIRST_EPOCH_DIR = "checkpoints_first_epoch"


def abstract_like(state: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing `state`, for restoring."""
  def leaf(x):
    s = sharding if sharding is not None else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(leaf, state)


class Checkpointer:
  """Latest + first-epoch checkpoints of a training run in `workdir`."""

  def __init__(self, workdir: str, max_to_keep: int = 1):
    workdir = os.path.abspath(workdir)
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self.latest = ocp.CheckpointManager(os.path.join(workdir, LATEST_DIR), options=opts)
    self.first = ocp.CheckpointManager(
        os.path.join(workdir, FIRST_EPOCH_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))

  def save(self, step: int, state: Any, *, first_epoch: bool = False,
           force: bool = True) -> None:
    """Saves `state` at `step` (collectively on all hosts; async)."""
    self.latest.save(step, args=ocp.args.StandardSave(state), force=force)
    if first_epoch:
      self.first.save(step, args=ocp.args.StandardSave(state), force=force)

  def save_first_epoch(self, step: int, state: Any) -> None:
    """Saves `state` as the first-epoch checkpoint only (collective; async)."""
    self.first.save(step, args=ocp.args.StandardSave(state), force=True)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def first_epoch_step(self) -> Optional[int]:
    return self.first.latest_step()

  def restore_latest(self, target: Any) -> Optional[Any]:
    """Latest state restored into `target`'s structure, or None if there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    return self.latest.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def restore_first_epoch(self, target: Any) -> Any:
    step = self.first.latest_step()
    if step is None:
      raise FileNotFoundError(
          f"no first-epoch checkpoint in {self.first.directory}: the LR score needs "
          "a run that completed at least one epoch")
    return self.first.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.first.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.first.close()
