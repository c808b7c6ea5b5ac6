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

Damage and divergence: `restore_latest` tries the newest step first and falls
back, with a warning, to the newest step that reads back completely and holds
only finite values (a damaged file, a deleted manifest or `_METADATA`, a NaN
state written by an older version). With `set_aside=True` (training) the
rejected steps are moved to `checkpoints_set_aside/` (never deleted), so the
run continues from the good step and numbers its new checkpoints after it. A
step that cannot be read raises `CheckpointError`, one message naming the
folder and the step, without orbax's traceback (nor the "Event loop is closed"
reports of the reads still in flight: `_quiet_closed_loop_callbacks`).

Legacy LFDN checkpoints: before the LFDN trained on the common `training.state.TrainState`,
it saved its own four-field state (step, params, opt_state, ema_params). Such a step restores
into a common `TrainState` target that keeps EMA params and has no BatchNorm statistics nor
method state (the LFDN's): the four saved fields are read into the target's and the rest
stay None / empty (`_legacy_lfdn_target`).
"""

from __future__ import annotations

import logging as logging_lib
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from dlsr_jax.training import state as state_lib

LATEST_DIR = "checkpoints"
REFERENCE_DIR = "checkpoints_lr_reference"
LEGACY_REFERENCE_DIR = "checkpoints_first_epoch"   # read only
SET_ASIDE_DIR = "checkpoints_set_aside"


class CheckpointError(RuntimeError):
  """A checkpoint step cannot be restored (damaged, incomplete or non-finite)."""


def _largest_is_finite(x: jax.Array) -> jax.Array:
  """Scalar bool: `x` (non-empty) holds no NaN/inf: its largest magnitude is finite.

  `jnp.max` propagates NaN, so one fused abs-max reduction per leaf decides. Written as
  `jnp.all(jnp.isfinite(x))`, XLA CPU wrote a bool array and reduced it in a second pass:
  3x the time when checked alone (paper-size LFDN state, 1.4 GB: 281 -> 91 ms; inside the
  train step 2 %; `benchmarks/RESULTS.md`, speed_lfdn_train_update). Complex leaves: the
  real and imaginary parts.
  """
  if jnp.iscomplexobj(x):
    return _largest_is_finite(x.real) & _largest_is_finite(x.imag)
  return jnp.isfinite(jnp.max(jnp.abs(x)))


def all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every floating leaf of `tree` is finite (no host sync; jit-friendly)."""
  leaves = [_largest_is_finite(x) for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact) and x.size]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _summary(e: BaseException) -> str:
  """The first line of an (orbax / TensorStore) error, for a one-line message."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


class _OrbaxTaskErrors(logging_lib.Filter):
  """Drops asyncio's "Task exception was never retrieved" for orbax's leftover reads."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    msg = record.getMessage()
    return not (msg.startswith("Task exception was never retrieved") and "orbax" in msg)


def _quiet_closed_loop_callbacks() -> None:
  """Drops the reports of a failed restore's leftover reads (the real error is raised).

  When one array of a checkpoint cannot be read, orbax's restore ends and closes its asyncio
  loop while TensorStore still completes the other reads; each completion calls back into the
  closed loop, and Python reports every one as an unraisable "Event loop is closed"
  RuntimeError (about a hundred tracebacks that bury the real error), and asyncio logs the
  other failed reads as "Task exception was never retrieved". Installed once, before the first
  restore (chained to the previous `sys.unraisablehook`); any other report passes through.
  """
  previous = sys.unraisablehook
  if getattr(previous, "quiets_closed_loop", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous(unraisable)

  hook.quiets_closed_loop = True
  sys.unraisablehook = hook
  logging_lib.getLogger("asyncio").addFilter(_OrbaxTaskErrors())


# The fields of the LFDN's own state before it moved onto `training.state.TrainState`.
LEGACY_LFDN_FIELDS = ("step", "params", "opt_state", "ema_params")


def _saved_fields(manager: ocp.CheckpointManager, step: int) -> Optional[set[str]]:
  """The top-level names of the tree saved at `step`, or None if they cannot be read.

  Read with a handler of its own: a manager that has not restored or saved yet has no
  handler for its item, and its `item_metadata` is None.
  """
  path = os.path.join(str(manager.directory), str(step), "default")
  if not os.path.isdir(path):
    return None
  try:
    return set(ocp.StandardCheckpointHandler().metadata(epath.Path(path)).keys())
  except Exception:  # pylint: disable=broad-except  # damaged: the restore reports it
    return None


def _legacy_lfdn_target(manager: ocp.CheckpointManager, step: int,
                        target: Any) -> Optional[dict]:
  """The four-field dict target of a legacy LFDN step restored into `target`, else None.

  Only where `target` is a common `TrainState` with EMA params, no BatchNorm statistics
  and empty `extra`, and the step saved exactly `LEGACY_LFDN_FIELDS`.
  """
  if not isinstance(target, state_lib.TrainState) or target.ema_params is None:
    return None
  if target.batch_stats is not None or jax.tree.leaves(target.extra):
    return None
  if _saved_fields(manager, step) != set(LEGACY_LFDN_FIELDS):
    return None
  return {k: getattr(target, k) for k in LEGACY_LFDN_FIELDS}


def _restore_step(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """`manager`'s `step` restored into `target`; `CheckpointError` if it cannot be read.

  A legacy LFDN step (four-field state) is read into a common `TrainState` target's fields.
  """
  _quiet_closed_loop_callbacks()
  try:
    legacy = _legacy_lfdn_target(manager, step, target)
    if legacy is not None:
      saved = manager.restore(step, args=ocp.args.StandardRestore(abstract_like(legacy)))
      return target.replace(**saved)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
    raise CheckpointError(
        f"checkpoint step {step} in {manager.directory} cannot be restored (damaged, "
        f"incomplete or from another model/optimizer: {_summary(e)})") from None


def abstract_like(state: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing `state`, for restoring."""
  def leaf(x):
    s = sharding if sharding is not None else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(leaf, state)


def _barriers(prefix: str):
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"dlsr_{prefix}")


class Checkpointer:
  """Latest + reference-step checkpoints of a training run in `workdir`."""

  def __init__(self, workdir: str, max_to_keep: int = 2, read_only: bool = False):
    """`read_only`: for evaluation: creates no folder and writes nothing (save is an error)."""
    workdir = os.path.abspath(workdir)
    self.workdir = workdir
    self.read_only = read_only
    # Each manager's finalize thread syncs the processes at a barrier whose name is fixed
    # unless prefixed; two managers finishing saves at once (a reference step) would meet at
    # the same barrier ("... is already ongoing" in a multi-process run), so each gets its own.
    # A read-only manager gets the settings orbax would force on it (it warns otherwise).
    opts = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep,
                                        save_interval_steps=0 if read_only else 1,
                                        create=not read_only, read_only=read_only,
                                        multiprocessing_options=_barriers("latest"))
    self.latest = ocp.CheckpointManager(os.path.join(workdir, LATEST_DIR), options=opts)
    ref_dir = os.path.join(workdir, REFERENCE_DIR)
    legacy = os.path.join(workdir, LEGACY_REFERENCE_DIR)
    if not os.path.isdir(ref_dir) and os.path.isdir(legacy):
      ref_dir = legacy
    self.reference = ocp.CheckpointManager(
        ref_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=None, save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only, multiprocessing_options=_barriers("reference")))

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

  def restore_latest(self, target: Any, set_aside: bool = False) -> Optional[Any]:
    """The newest good state restored into `target`'s structure; None if there is none.

    Steps are tried newest first; a step that cannot be read or holds NaN/inf
    is skipped with a warning naming it (and, with `set_aside`, moved to
    `checkpoints_set_aside/<step>` so that training can continue from the good
    step; collective in a multi-process job).

    Raises:
      CheckpointError: if there are steps and none of them is good.
    """
    steps = sorted(self.latest.all_steps(), reverse=True)
    problems = []
    for step in steps:
      try:
        state = _restore_step(self.latest, step, target)
      except CheckpointError as e:
        problem = str(e)
      else:
        if bool(jax.device_get(all_finite(state))):
          if problems:
            logging.warning("falling back to checkpoint step %d in %s", step,
                            self.latest.directory)
          if problems and set_aside and not self.read_only:
            self._set_aside([s for s in steps if s > step])
          return state
        problem = (f"checkpoint step {step} in {self.latest.directory} holds NaN/inf "
                   "values (a diverged run)")
      problems.append(problem)
      logging.warning("%s: trying an earlier step", problem)
    if not problems:
      return None
    raise CheckpointError(
        f"no usable checkpoint in {self.latest.directory}:\n  " + "\n  ".join(problems) +
        "\nMove that folder aside to start this run over, or train in a new --workdir.")

  def _set_aside(self, steps: list[int]) -> None:
    """Moves `steps` of `checkpoints/` to `checkpoints_set_aside/` (process 0 moves)."""
    dest = os.path.join(self.workdir, SET_ASIDE_DIR)
    src = str(self.latest.directory)
    if jax.process_index() == 0:
      os.makedirs(dest, exist_ok=True)
      for step in steps:
        to, i = os.path.join(dest, str(step)), 1
        while os.path.exists(to):
          to, i = os.path.join(dest, f"{step}.{i}"), i + 1
        os.replace(os.path.join(src, str(step)), to)
        logging.warning("moved the unusable checkpoint step %d to %s", step, to)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("checkpoint_set_aside")
    self.latest.reload()

  def restore_reference(self, target: Any, step: int) -> Any:
    """The reference checkpoint of `step` (e.g. the LR score's early model)."""
    steps = self.reference_steps()
    if step not in steps:
      raise FileNotFoundError(
          f"no reference checkpoint of step {step} in {self.reference.directory} (kept: "
          f"{steps or 'none'}): the LR score needs a run that trained past "
          f"train.lr_reference_steps with that setting; set it to one of the kept steps, "
          "retrain, or evaluate without the LR scores (--config.eval.lr=False)")
    return _restore_step(self.reference, step, target)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.reference.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.reference.close()
