"""The LFDN training loop over cached features: sharded, resumable, logged.

`fit` is a short composition of tested pieces: the pure step from
`dlsr_jax.train`, deterministic per-(seed, epoch) global batches from
`dlsr_jax.data`, shardings from `dlsr_jax.parallel` and orbax checkpoints
from `dlsr_jax.checkpoint`.

Exact resume: the step's randomness is `fold_in(key(seed), state.step)` and
global batch s of epoch e is a fixed function of (seed, e, s), so resuming
from any checkpoint (epoch end, every `checkpoint_every_steps`, or a
preemption) replays exactly what an uninterrupted run computes.

Preemption: while `fit` runs with a checkpointer, SIGTERM makes it finish the
current step, save a checkpoint and raise `Preempted`; re-running the same
training resumes from there. With one process a Python SIGTERM handler is
installed for the duration of `fit` (the previous handler is restored after).
In a multi-process job JAX's preemption service (on by default with
`jax.distributed`) catches SIGTERM on any host and
`reached_preemption_sync_point` makes every process save at the same step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from dlsr_jax import data, lfdn, parallel, schedule, train
from dlsr_jax.training.checkpoint import Checkpointer
from dlsr_jax.training.preemption import Preempted, _PreemptionWatch  # noqa: F401


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Loop settings.

  Attributes:
    batch_size: GLOBAL batch size (divisible by the number of devices).
    num_epochs: epochs over the training features.
    seed: init, shuffle and noise seed.
    log_every_steps: metrics interval (process 0 writes them).
    checkpoint_every_epochs: checkpoint at the end of every this many epochs
      (the first and the last epoch are always saved).
    checkpoint_every_steps: also checkpoint every this many steps, mid-epoch
      included (0 = only at epoch ends), so a killed run loses little.
    lr_reference_steps: the step whose state the LR score uses as its early
      model, kept apart and never pruned. Default 391: the paper's first epoch
      (50,000 CIFAR images at batch 128), whatever the size of this training
      set; 0 = the end of the first epoch of this set.
    keep_steps: further steps whose states are kept the same way (e.g. for an
      LR-against-reference-step table).
  """
  batch_size: int = 128
  num_epochs: int = 150
  seed: int = 0
  log_every_steps: int = 100
  checkpoint_every_epochs: int = 1
  checkpoint_every_steps: int = 0
  lr_reference_steps: int = 391
  keep_steps: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ("batch_size", "num_epochs", "log_every_steps", "checkpoint_every_epochs"):
      if getattr(self, name) < 1:
        raise ValueError(f"FitConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.checkpoint_every_steps < 0:
      raise ValueError("FitConfig.checkpoint_every_steps must be >= 0 (0 = epoch ends "
                       f"only), got {self.checkpoint_every_steps}")
    if self.lr_reference_steps < 0:
      raise ValueError("FitConfig.lr_reference_steps must be >= 0 (0 = one epoch of this "
                       f"training set), got {self.lr_reference_steps}")
    bad = [s for s in self.keep_steps if int(s) != s or s < 1]
    if bad:
      raise ValueError(f"FitConfig.keep_steps must be positive step counts, got {bad}")

  def reference_step(self, steps_per_epoch: int) -> int:
    """The LR reference step for a training set of `steps_per_epoch` steps an epoch."""
    return self.lr_reference_steps or steps_per_epoch

  def kept_steps(self, steps_per_epoch: int) -> frozenset[int]:
    """Every step whose checkpoint is kept apart: the LR reference and `keep_steps`."""
    return frozenset({self.reference_step(steps_per_epoch), *map(int, self.keep_steps)})


def _check_features(z: np.ndarray, batch_size: int) -> None:
  if z.ndim != 2:
    raise ValueError(f"training features must be [N, C], got shape {z.shape}")
  if z.shape[0] < batch_size:
    raise ValueError(f"{z.shape[0]} training examples are fewer than one batch "
                     f"({batch_size}); lower the batch size")
  bad = int(np.sum(~np.isfinite(z)))
  if bad:
    raise ValueError(f"training features contain {bad} NaN/inf values")


def make_jitted_step(model_cfg, tx, sched, ema_decay, mesh, state):
  """The train step jitted with replicated state and a data-sharded batch."""
  step = train.make_train_step(model_cfg, tx, sched.alphas_cumprod, ema_decay)
  return _jit_step(step, mesh, state)


def _jit_step(step: Callable, mesh, state) -> Callable:
  """`state` (arrays or shapes) only gives the state's tree structure."""
  rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
  state_sh = jax.tree.map(lambda _: rep, state)
  return jax.jit(step, in_shardings=(state_sh, dat, rep),
                 out_shardings=(state_sh, rep), donate_argnums=(0,))


def init_state(model_cfg: lfdn.LFDNConfig, tx, key: jax.Array, mesh) -> train.TrainState:
  rep = parallel.replicated(mesh)
  return jax.jit(lambda k: train.create_train_state(model_cfg, tx, k), out_shardings=rep)(key)


@functools.lru_cache(maxsize=8)
def _compiled(model_cfg: lfdn.LFDNConfig, optim_cfg: train.OptimConfig, abar: bytes,
              mesh) -> tuple[Callable, Callable]:
  """(jitted init, jitted step), reused (not re-compiled) by every `fit` with these settings."""
  tx = train.make_optimizer(optim_cfg)
  step = train.make_train_step(model_cfg, tx, np.frombuffer(abar, np.float32),
                               optim_cfg.ema_decay)
  shapes = jax.eval_shape(lambda: train.create_train_state(model_cfg, tx, jax.random.key(0)))
  init = jax.jit(lambda k: train.create_train_state(model_cfg, tx, k),
                 out_shardings=parallel.replicated(mesh))
  return init, _jit_step(step, mesh, shapes)


def _is_checkpoint_step(step: int, steps_per_epoch: int, cfg: FitConfig) -> bool:
  """Epoch ends per `checkpoint_every_epochs` (first and last always), every N steps."""
  if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
    return True
  if step % steps_per_epoch:
    return False
  epoch = step // steps_per_epoch      # epochs completed
  return epoch == 1 or epoch == cfg.num_epochs or epoch % cfg.checkpoint_every_epochs == 0


def _restore(checkpointer: Optional[Checkpointer], state: train.TrainState,
             kept: frozenset[int]) -> train.TrainState:
  """The latest checkpoint (if any); re-saves a lost reference checkpoint if it can."""
  if checkpointer is None:
    return state
  restored = checkpointer.restore_latest(state)
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


def fit(features: np.ndarray, model_cfg: lfdn.LFDNConfig, optim_cfg: train.OptimConfig,
        sched: schedule.NoiseSchedule, cfg: FitConfig, checkpointer: Optional[Checkpointer],
        mesh=None, write_metrics: Optional[Callable[[int, dict], Any]] = None,
        progress: bool = True) -> train.TrainState:
  """Trains the LFDN on `features` [N, C] (every process passes the full array).

  Each process feeds the rows of every global batch that its devices hold.
  Checkpoints (collective over processes) are written per `cfg`; the states
  at `cfg.kept_steps` (the LR reference first) are also kept apart. Training resumes from the
  latest checkpoint in `checkpointer`. Only process 0 calls `write_metrics`.

  Returns:
    The final `TrainState` (use `ema_params` for scoring).

  Raises:
    Preempted: on SIGTERM (with a checkpointer), after saving the current step.
    FloatingPointError: if a logged loss is not finite.
  """
  features = np.asarray(features, np.float32)
  _check_features(features, cfg.batch_size)
  mesh = mesh or parallel.make_mesh()
  rows = parallel.local_rows(mesh, cfg.batch_size)
  init_key, loop_key = jax.random.split(jax.random.key(cfg.seed))
  loop_key = parallel.global_to_sharded(loop_key, parallel.replicated(mesh))
  abar = np.asarray(sched.alphas_cumprod, np.float32).tobytes()
  init_fn, step_fn = _compiled(model_cfg, optim_cfg, abar, mesh)
  n = features.shape[0]
  steps_per_epoch = n // cfg.batch_size
  kept = cfg.kept_steps(steps_per_epoch)
  state = _restore(checkpointer, init_fn(init_key), kept)
  start = int(jax.device_get(state.step))       # one sync, before the loop
  total = steps_per_epoch * cfg.num_epochs
  if checkpointer is not None and cfg.reference_step(steps_per_epoch) > total:
    logging.warning("the LR reference step %d lies beyond this run's %d steps: no LR score "
                    "for it (set train.lr_reference_steps lower, or 0 for one epoch)",
                    cfg.reference_step(steps_per_epoch), total)
  if start:
    logging.info("resuming from step %d of %d", start, total)
  main = jax.process_index() == 0
  bar = None
  if progress and main:
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=start, desc="train LFDN", unit="step")
  step, t0, saved = start, time.time(), start
  try:
    with _PreemptionWatch(checkpointer is not None, start) as watch:
      for epoch in range(start // steps_per_epoch, cfg.num_epochs):
        idx = data.train_batch_indices(n, cfg.batch_size, epoch, cfg.seed)  # global batches
        for i in range(step - epoch * steps_per_epoch, steps_per_epoch):
          batch = parallel.host_to_global(features[idx[i][rows]], mesh)
          state, metrics = step_fn(state, batch, loop_key)
          step += 1
          if bar is not None:
            bar.update(1)
          if step % cfg.log_every_steps == 0 or step == total:
            _log_metrics(step, start, t0, metrics, write_metrics if main else None)
          preempted = watch.requested(step)
          if checkpointer is not None and step != saved and (  # preempted => checkpointer
              preempted or step in kept or _is_checkpoint_step(step, steps_per_epoch, cfg)):
            checkpointer.save(step, state, reference=step in kept)
            saved = step
          if preempted and step < total:
            checkpointer.wait()
            logging.warning("preempted: stopped at step %d of %d", step, total)
            raise Preempted(step)
  finally:
    if bar is not None:
      bar.close()
  if checkpointer is not None:
    checkpointer.wait()
  return state


def _log_metrics(step: int, start: int, t0: float, metrics: dict,
                 write_metrics: Optional[Callable[[int, dict], Any]]) -> None:
  """Fetches the (replicated) metrics on every process; NaN stops all of them."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not np.isfinite(m["loss"]):
    raise FloatingPointError(f"loss is {m['loss']} at step {step}")
  m["steps_per_sec"] = (step - start) / max(time.time() - t0, 1e-9)
  if write_metrics is not None:
    write_metrics(step, m)
