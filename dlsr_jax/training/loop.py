"""The one training loop: sharded, resumable, preemptible, for any objective.

`fit(init, step, streams, cfg, checkpointer)` trains whatever `init` builds
with the pure `step(state, batch, key) -> (state, metrics)`: the LFDN on
cached features, a classifier on images, a head on features. The loop jits
`init` and `step` with replicated state and data-sharded batches (donating the
state), feeds deterministic global batches of every data stream, logs,
checkpoints and stops cleanly on SIGTERM.

Streams: `streams` maps a name to row-aligned host arrays, e.g.
`{"in": {"x": images, "y": labels}, "outliers": {"x": images}}`. Epochs count
over "in"; every other stream cycles through its own epochs with its own batch
size (`FitConfig.stream_batch_sizes`). The step receives `batch[name][array]`,
each a global array [B_name, ...] sharded on its batch axis.

Exact resume: the step key is `fold_in(loop_key, state.step)` (loop_key from
`key(seed)`, computed inside the jitted step), and global batch i of epoch e of
a stream is a fixed function of (seed, stream, e, i) (`data.train_batch_indices`;
"in" uses `seed` itself, other streams a seed derived from their name), so
resuming from any checkpoint (epoch end, every `checkpoint_every_steps`, a
preemption) replays exactly what an uninterrupted run computes.

Preemption: while `fit` runs with a checkpointer, SIGTERM (or a first Ctrl-C)
makes it finish the current step, save a checkpoint and raise `Preempted` (see
`training.preemption`); re-running the same training resumes from there.

Divergence: the jitted step also carries an on-device int32, the first step
whose loss or updated state holds a NaN/inf (0 while all is finite), so no step
syncs with the host. The loop reads it at every log and checkpoint boundary:
a non-finite state is never saved, and `fit` raises `Diverged` naming that step
and the last good checkpoint (the checkpointer keeps the last two, plus the
reference steps). A resume restores the newest finite, readable checkpoint.
By default the guard reads every leaf of the new state; a step that can tell
more cheaply whether its new state is finite returns that scalar bool as the
metric `STATE_FINITE` (taken out of the metrics, never logged), e.g. the LFDN's
`objectives.base.update_is_finite` (the gradients' norm and the new params stand
for the optimizer state and EMA: 11-15 % of the paper-size step's time on a CPU).

Benchmarks and tools that time or drive the step get exactly what `fit` runs
from `jitted_step(init, step, mesh)` and `step_inputs(seed, mesh)`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dlsr_jax import data, multihost, parallel, xla_cpu
from dlsr_jax.training.checkpoint import Checkpointer, all_finite
from dlsr_jax.training.preemption import Preempted, _PreemptionWatch

PyTree = Any
Streams = Mapping[str, Mapping[str, np.ndarray]]
InitFn = Callable[[jax.Array], PyTree]
StepFn = Callable[[PyTree, dict, jax.Array], tuple[PyTree, dict]]
IN = "in"
# A step's own verdict on its new state (a scalar bool in its metrics, e.g.
# `objectives.base.update_is_finite`): used by the divergence guard instead of
# reading every leaf of the state, and removed from the metrics.
STATE_FINITE = "state_finite"
_MAX_STEPS_IN_FLIGHT = 32   # dispatched steps before the loop waits for one


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Loop settings.

  Attributes:
    batch_size: GLOBAL batch size of the "in" stream (divisible by the number
      of devices).
    num_epochs: epochs over the "in" stream.
    seed: init, shuffle and step-key seed.
    log_every_steps: metrics interval (process 0 writes them).
    checkpoint_every_epochs: checkpoint at the end of every this many epochs
      (the first and the last epoch are always saved).
    checkpoint_every_steps: also checkpoint every this many steps, mid-epoch
      included (0 = only at epoch ends), so a killed run loses little.
    lr_reference_steps: the step whose state the LR score uses as its early
      model, kept apart and never pruned. Default 391: the paper's first epoch
      (50,000 CIFAR images at batch 128), whatever the size of this training
      set; 0 = the end of the first epoch of this set; None = no reference
      (classifiers).
    keep_steps: further steps whose states are kept the same way.
    stream_batch_sizes: GLOBAL batch size of each stream besides "in", as
      (name, size) pairs or a dict (stored as sorted pairs); a stream not named
      here uses `batch_size`.
  """
  batch_size: int = 128
  num_epochs: int = 150
  seed: int = 0
  log_every_steps: int = 100
  checkpoint_every_epochs: int = 1
  checkpoint_every_steps: int = 0
  lr_reference_steps: Optional[int] = 391
  keep_steps: tuple[int, ...] = ()
  stream_batch_sizes: Union[tuple[tuple[str, int], ...], Mapping[str, int]] = ()

  def __post_init__(self):
    for name in ("batch_size", "num_epochs", "log_every_steps", "checkpoint_every_epochs"):
      if getattr(self, name) < 1:
        raise ValueError(f"FitConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.checkpoint_every_steps < 0:
      raise ValueError("FitConfig.checkpoint_every_steps must be >= 0 (0 = epoch ends "
                       f"only), got {self.checkpoint_every_steps}")
    if self.lr_reference_steps is not None and self.lr_reference_steps < 0:
      raise ValueError("FitConfig.lr_reference_steps must be >= 0 (0 = one epoch of this "
                       f"training set) or None, got {self.lr_reference_steps}")
    bad = [s for s in self.keep_steps if int(s) != s or s < 1]
    if bad:
      raise ValueError(f"FitConfig.keep_steps must be positive step counts, got {bad}")
    sizes = tuple(sorted(dict(self.stream_batch_sizes).items()))
    bad = [(k, v) for k, v in sizes if k == IN or int(v) != v or v < 1]
    if bad:
      raise ValueError(f"FitConfig.stream_batch_sizes: positive sizes of streams other than "
                       f"'in' (set its size with batch_size), got {bad}")
    object.__setattr__(self, "stream_batch_sizes", sizes)

  def batch_size_of(self, stream: str) -> int:
    """The global batch size of `stream`."""
    return self.batch_size if stream == IN else dict(self.stream_batch_sizes).get(
        stream, self.batch_size)

  def reference_step(self, steps_per_epoch: int) -> Optional[int]:
    """The LR reference step for a training set of `steps_per_epoch` steps an epoch."""
    if self.lr_reference_steps is None:
      return None
    return self.lr_reference_steps or steps_per_epoch

  def kept_steps(self, steps_per_epoch: int) -> frozenset[int]:
    """Every step whose checkpoint is kept apart: the LR reference and `keep_steps`."""
    ref = self.reference_step(steps_per_epoch)
    return frozenset({*([] if ref is None else [ref]), *map(int, self.keep_steps)})


class Diverged(FloatingPointError):
  """The loss or the training state became NaN/inf; nothing non-finite was saved.

  Attributes:
    step: the first step (update count) whose loss or state was not finite.
    last_good_step: the newest checkpoint (all finite), or None.
    advice: the message's last sentence: which setting to change (`with_advice` replaces it,
      e.g. with the classifier net's own key).
  """
  ADVICE = "Lower optim.learning_rate or set optim.grad_clip_norm before re-running."

  def __init__(self, step: int, seen_at: int, checkpointer: Optional[Checkpointer],
               advice: str = ADVICE):
    self.step, self.seen_at, self.advice = step, seen_at, advice
    self.last_good_step = None if checkpointer is None else checkpointer.latest_step()
    if checkpointer is None:
      where = "no checkpoints are written by this run"
    elif self.last_good_step is None:
      where = f"there is no checkpoint yet in {checkpointer.latest.directory}"
    else:
      where = (f"the last good checkpoint is step {self.last_good_step} in "
               f"{checkpointer.latest.directory}; re-running resumes from it")
    self.where = where
    super().__init__(self._text())

  def _text(self) -> str:
    return (f"training diverged: the loss or the training state became NaN/inf at step "
            f"{self.step} (seen at step {self.seen_at}); no non-finite state was saved and "
            f"{self.where}. {self.advice}")

  def with_advice(self, advice: str) -> "Diverged":
    """The same error with another last sentence (what to change)."""
    new = Diverged.__new__(Diverged)
    new.__dict__.update(self.__dict__)
    new.advice = advice
    new.args = (new._text(),)
    return new


class NotFinished(ValueError):
  """A run's latest usable checkpoint is short of (or beyond) the configured steps."""


class _Stream:
  """One stream's deterministic, per-process batches (permutations cached per epoch)."""

  def __init__(self, name: str, arrays: Mapping[str, np.ndarray], batch_size: int,
               seed: int, mesh):
    self.name, self.batch_size, self.mesh = name, batch_size, mesh
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    _check_stream(name, self.arrays, batch_size)
    self.n = next(iter(self.arrays.values())).shape[0]
    self.steps_per_epoch = self.n // batch_size
    # "in" keeps `seed` (the batches of every existing run); others get their own.
    self.seed = seed if name == IN else zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF
    self.rows = parallel.local_rows(mesh, batch_size)
    self._epoch, self._idx = -1, None

  def batch(self, step: int) -> dict[str, jax.Array]:
    """The global batch this stream feeds at (0-based) loop step `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      self._idx = data.train_batch_indices(self.n, self.batch_size, epoch, self.seed)
    take = self._idx[i][self.rows]
    return {k: parallel.host_to_global(v[take], self.mesh) for k, v in self.arrays.items()}


def _check_stream(name: str, arrays: Mapping[str, np.ndarray], batch_size: int) -> None:
  if not arrays:
    raise ValueError(f"training stream {name!r} has no arrays")
  sizes = {k: v.shape[0] if v.ndim else None for k, v in arrays.items()}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise ValueError(f"training stream {name!r}: arrays must be row-aligned, got rows {sizes}")
  n = next(iter(sizes.values()))
  if n < batch_size:
    raise ValueError(f"training stream {name!r}: {n} examples are fewer than one batch "
                     f"({batch_size}); lower the batch size")
  for k, v in arrays.items():
    if np.issubdtype(v.dtype, np.floating):
      bad = int(np.sum(~np.isfinite(v)))
      if bad:
        raise ValueError(f"training stream {name!r} array {k!r} contains {bad} NaN/inf values")


@functools.lru_cache(maxsize=8)
def _jitted(init: InitFn, step: StepFn, mesh) -> tuple[Callable, Callable]:
  """(jitted init, jitted keyed step); reused by every `fit` with the same functions."""
  rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)

  def keyed_step(state, batch, loop_key, bad_step):
    new, metrics = step(state, batch, jax.random.fold_in(loop_key, state.step))
    metrics = dict(metrics)
    verdict = metrics.pop(STATE_FINITE, None)
    state_finite = all_finite(new) if verdict is None else verdict
    finite = state_finite & all_finite(metrics.get("loss", 0.0))
    bad_step = jnp.where((bad_step == 0) & ~finite, state.step + 1, bad_step)
    return new, metrics, bad_step

  return (jax.jit(init, out_shardings=rep),
          jax.jit(keyed_step, in_shardings=(rep, dat, rep, rep),
                  out_shardings=(rep, rep, rep), donate_argnums=(0,),
                  compiler_options=xla_cpu.classifier_compiler_options(mesh, init)))


def jitted_step(init: InitFn, step: StepFn, mesh=None) -> tuple[Callable, Callable]:
  """The compiled functions `fit` runs, for benchmarks and tools that time or drive them.

  Args:
    init: `init(key) -> state`, as given to `fit`.
    step: pure `step(state, batch, key) -> (state, metrics)`, as given to `fit`.
    mesh: 1-D data mesh (default: every device).

  Returns:
    (`init_fn(init_key) -> state`, replicated; `step_fn(state, batch, loop_key,
    bad_step) -> (state, metrics, bad_step)`): the step key is
    `fold_in(loop_key, state.step)`, `bad_step` the divergence guard's on-device
    int32 (see the module docstring), the state donated. The same cached
    objects `fit` calls for these (init, step, mesh); inputs: `step_inputs`.
  """
  return _jitted(init, step, mesh or parallel.make_mesh())


def step_inputs(seed: int, mesh=None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init_key, loop_key, bad_step) as `fit` makes them for `FitConfig.seed` = `seed`.

  loop_key and bad_step (0: all finite so far) are replicated over `mesh`
  (default: every device), ready for `jitted_step`'s `step_fn`.
  """
  mesh = mesh or parallel.make_mesh()
  rep = parallel.replicated(mesh)
  init_key, loop_key = jax.random.split(jax.random.key(seed))
  return (init_key, parallel.global_to_sharded(loop_key, rep),
          parallel.global_to_sharded(jnp.zeros((), jnp.int32), rep))


def _is_checkpoint_step(step: int, steps_per_epoch: int, cfg: FitConfig) -> bool:
  """Epoch ends per `checkpoint_every_epochs` (first and last always), every N steps."""
  if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
    return True
  if step % steps_per_epoch:
    return False
  epoch = step // steps_per_epoch      # epochs completed
  return epoch == 1 or epoch == cfg.num_epochs or epoch % cfg.checkpoint_every_epochs == 0


def _restore(checkpointer: Optional[Checkpointer], state: PyTree,
             kept: frozenset[int]) -> PyTree:
  """The latest checkpoint (if any); re-saves a lost reference checkpoint if it can."""
  if checkpointer is None:
    return state
  restored = checkpointer.restore_latest(state, set_aside=True)
  if restored is None:
    return state
  step = int(jax.device_get(restored.step))
  have = set(checkpointer.reference_steps())
  if step in kept and step not in have:
    checkpointer.save_reference(step, restored)
  lost = sorted(s for s in kept if s < step and s not in have)
  if lost:
    logging.warning("no reference checkpoint of steps %s next to the latest one (step %d): "
                    "the LR score needs one of them", lost, step)
  return restored


def restore_finished(init: InitFn, streams: Streams, cfg: FitConfig,
                     checkpointer: Checkpointer, mesh=None) -> PyTree:
  """The final state of a finished run, restored read-only (for evaluation).

  Nothing is trained, moved or written: a damaged or non-finite latest step is skipped for the
  newest good one (`restore_latest` without set_aside), which must be the run's last step.

  Raises:
    FileNotFoundError: no checkpoint.
    NotFinished: the newest good checkpoint is short of the configured steps ("run
      experiments.train to finish: step 8 of 24") or beyond them.
    CheckpointError: checkpoints exist and none can be restored.
  """
  mesh = mesh or parallel.make_mesh()
  rep = parallel.replicated(mesh)
  n = next(iter(streams[IN].values())).shape[0]
  total = (n // cfg.batch_size) * cfg.num_epochs
  target = jax.eval_shape(init, jax.random.key(cfg.seed))
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), target)
  state = checkpointer.restore_latest(target)
  where = checkpointer.latest.directory
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {where}: run experiments.train with this "
                            "--workdir first")
  step = int(jax.device_get(state.step))
  if step < total:
    raise NotFinished(f"the run in {checkpointer.workdir} is not finished (newest usable "
                      f"checkpoint in {where}): run experiments.train to finish: step {step} "
                      f"of {total}")
  if step > total:
    raise NotFinished(beyond_message(step, total, checkpointer.workdir))
  return state


def beyond_message(step: int, total: int, workdir: str) -> str:
  return (f"the checkpoint in {workdir} is at step {step}, beyond this config's {total} "
          "steps: set the epochs back to (at least) the run's own, or use a new --workdir")


def _log_metrics(step: int, start: int, t0: float, metrics: dict,
                 write_metrics: Optional[Callable[[int, dict], Any]]) -> None:
  """Fetches the (replicated) metrics on every process; a NaN loss stops all of them."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not np.isfinite(m.get("loss", 0.0)):
    raise FloatingPointError(f"loss is {m['loss']} at step {step}")
  m["steps_per_sec"] = (step - start) / max(time.time() - t0, 1e-9)
  if write_metrics is not None:
    write_metrics(step, m)


def _check_finite(bad_step: jax.Array, done: int,
                  checkpointer: Optional[Checkpointer]) -> None:
  """Raises `Diverged` if the on-device flag names a non-finite step (one host sync)."""
  bad = int(jax.device_get(bad_step))
  if bad:
    if checkpointer is not None:
      checkpointer.wait()
    raise Diverged(bad, done, checkpointer)


def fit(init: InitFn, step: StepFn, streams: Streams, cfg: FitConfig,
        checkpointer: Optional[Checkpointer], mesh=None,
        write_metrics: Optional[Callable[[int, dict], Any]] = None,
        progress: Union[bool, str] = True) -> PyTree:
  """Trains `init(key)`'s state with `step` over `streams` (full arrays on every process).

  Each process feeds the rows of every global batch that its devices hold.
  Checkpoints (collective over processes) are written per `cfg`; the states at
  `cfg.kept_steps` are also kept apart. Training resumes from the latest
  checkpoint in `checkpointer`. Only process 0 calls `write_metrics`.

  Args:
    init: `init(key) -> state`, a pytree with an int32 `step` field; jitted.
    step: pure `step(state, batch, key) -> (state, metrics)`; `batch[stream][name]`
      is a global [B_stream, ...] array, `key` the step key; metrics are scalars
      (a "loss" is checked for finiteness when logged; `STATE_FINITE`, if given,
      replaces the guard's check of the new state). Jitted, state donated.
    streams: {stream: {name: host array [N_stream, ...]}}; "in" is required.
    cfg: loop settings.
    checkpointer: where to resume from and save to; None = no checkpoints.
    mesh: 1-D data mesh (default: every device).
    write_metrics: `(step, {name: float})`, called on log steps by process 0.
    progress: a progress bar (a string names it).

  Returns:
    The final state.

  Raises:
    Preempted: on SIGTERM or a first Ctrl-C (with a checkpointer), after saving
      the current step.
    Diverged: (a FloatingPointError) if the loss or the state became NaN/inf,
      raised at the next log or checkpoint boundary, before any save.
    CheckpointError: if the workdir's checkpoints exist and none can be restored.
  """
  if IN not in streams:
    raise ValueError(f"fit needs an {IN!r} stream, got {sorted(streams)}")
  mesh = mesh or parallel.make_mesh()
  multihost.connect_collectives(mesh)   # CPU processes in step at the first collective
  feeds = [_Stream(name, arrays, cfg.batch_size_of(name), cfg.seed, mesh)
           for name, arrays in sorted(streams.items())]
  steps_per_epoch = next(f for f in feeds if f.name == IN).steps_per_epoch
  init_key, loop_key, bad_step = step_inputs(cfg.seed, mesh)
  init_fn, step_fn = jitted_step(init, step, mesh)
  kept = cfg.kept_steps(steps_per_epoch)
  state = _restore(checkpointer, init_fn(init_key), kept)
  start = int(jax.device_get(state.step))       # one sync, before the loop
  total = steps_per_epoch * cfg.num_epochs
  ref = cfg.reference_step(steps_per_epoch)
  if checkpointer is not None and ref is not None and ref > total:
    logging.warning("the LR reference step %d lies beyond this run's %d steps: no LR score "
                    "for it (set train.lr_reference_steps lower, or 0 for one epoch)",
                    ref, total)
  if start > total:
    raise NotFinished(beyond_message(start, total, checkpointer.workdir))
  if start:
    logging.info("resuming from step %d of %d", start, total)
  main = jax.process_index() == 0
  bar = None
  if progress and main:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total, initial=start, unit="step",
               desc=progress if isinstance(progress, str) else "train")
  t0, saved = time.time(), start
  try:
    with _PreemptionWatch(checkpointer is not None, start) as watch:
      for s in range(start, total):
        batch = {f.name: f.batch(s) for f in feeds}
        state, metrics, bad_step = step_fn(state, batch, loop_key, bad_step)
        done = s + 1
        if done % _MAX_STEPS_IN_FLIGHT == 0:
          # Bound the queue of dispatched steps: hundreds of queued steps with donated
          # buffers on XLA CPU aborted the process (SIGABRT) in about half the runs of a
          # tiny-model test; one wait every N steps is not a per-step sync.
          jax.block_until_ready(bad_step)
        if bar is not None:
          bar.update(1)
        log = done % cfg.log_every_steps == 0 or done == total
        if log:
          _check_finite(bad_step, done, checkpointer)
          _log_metrics(done, start, t0, metrics, write_metrics if main else None)
        preempted = watch.requested(done)
        if checkpointer is not None and done != saved and (  # preempted => checkpointer
            preempted or done in kept or _is_checkpoint_step(done, steps_per_epoch, cfg)):
          if not log:
            _check_finite(bad_step, done, checkpointer)
          checkpointer.save(done, state, reference=done in kept)
          saved = done
        if preempted and done < total:
          checkpointer.wait()
          logging.warning("preempted (%s): stopped at step %d of %d", watch.reason, done,
                          total)
          raise Preempted(done, watch.reason)
  finally:
    if bar is not None:
      bar.close()
  if checkpointer is not None:
    checkpointer.wait()
  return state
