"""Orbax checkpoints of a training state (the LFDN's or any `TrainState`).

Two managers under a workdir: `checkpoints/` keeps the latest `max_to_keep`
states, `checkpoints_lr_reference/` keeps the states at the reference steps the
caller names (the LR score's early checkpoint, by default after 391 steps, the
paper's first epoch; plus any extra steps asked for) and is never pruned.
Workdirs written before the reference was counted in steps hold it in
`checkpoints_first_epoch/`; it is still read. Saves are asynchronous; call
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
REFERENCE_DIR = "checkpoints_lr_reference"
LEGACY_REFERENCE_DIR = "checkpoints_first_epoch"   # read only


def abstract_like(state: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing `state`, for restoring."""
  def leaf(x):
    s = sharding if sharding is not None else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(leaf, state)


class Checkpointer:
  """Latest + reference-step checkpoints of a training run in `workdir`."""

  def __init__(self, workdir: str, max_to_keep: int = 1):
    workdir = os.path.abspath(workdir)
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self.latest = ocp.CheckpointManager(os.path.join(workdir, LATEST_DIR), options=opts)
    ref_dir = os.path.join(workdir, REFERENCE_DIR)
    legacy = os.path.join(workdir, LEGACY_REFERENCE_DIR)
    if not os.path.isdir(ref_dir) and os.path.isdir(legacy):
      ref_dir = legacy
    self.reference = ocp.CheckpointManager(
        ref_dir, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))

  def save(self, step: int, state: Any, *, reference: bool = False,
           force: bool = True) -> None:
    """Saves `state` at `step` (collectively on all hosts; async); `reference`: keep it."""
    self.latest.save(step, args=ocp.args.StandardSave(state), force=force)
    if reference:
      self.reference.save(step, args=ocp.args.StandardSave(state), force=force)

  def save_reference(self, step: int, state: Any) -> None:
    """Saves `state` as a reference checkpoint only (collective; async)."""
    self.reference.save(step, args=ocp.args.StandardSave(state), force=True)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def reference_steps(self) -> list[int]:
    """Steps of the kept reference checkpoints, ascending."""
    return sorted(self.reference.all_steps())

  def restore_latest(self, target: Any) -> Optional[Any]:
    """Latest state restored into `target`'s structure, or None if there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    return self.latest.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def restore_reference(self, target: Any, step: int) -> Any:
    """The reference checkpoint of `step` (e.g. the LR score's early model)."""
    steps = self.reference_steps()
    if step not in steps:
      raise FileNotFoundError(
          f"no reference checkpoint of step {step} in {self.reference.directory} (kept: "
          f"{steps or 'none'}): the LR score needs a run that trained past "
          f"train.lr_reference_steps with that setting; set it to one of the kept steps "
          "or retrain")
    return self.reference.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.reference.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.reference.close()
