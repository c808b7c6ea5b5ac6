"""Training the LFDN on cached features through the generic loop.

`fit(features, model_cfg, optim_cfg, sched, cfg, checkpointer)` is
`training.loop.fit` with the LFDN's objective (`diffusion.make_x0_objective`: the common
`training.state.TrainState`, the shared AdamW / EMA update) on the one stream
{"in": {"z": features}}; exact
resume, mid-epoch and reference checkpoints and SIGTERM preemption are the
loop's (see `dlsr_jax.training.loop`), and so are the divergence checks.
`FitConfig`, `Diverged` and `Preempted` are re-exported from there.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import numpy as np

from dlsr_jax import diffusion, lfdn, parallel, schedule, train
from dlsr_jax.training import loop, optim
from dlsr_jax.training.checkpoint import Checkpointer
from dlsr_jax.training.loop import Diverged, FitConfig, _is_checkpoint_step  # noqa: F401
from dlsr_jax.training.preemption import Preempted, _PreemptionWatch  # noqa: F401
from dlsr_jax.training.state import TrainState


def _check_features(z: np.ndarray) -> None:
  if z.ndim != 2:
    raise ValueError(f"training features must be [N, C], got shape {z.shape}")


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


def init_state(model_cfg: lfdn.LFDNConfig, tx, key: jax.Array, mesh) -> TrainState:
  rep = parallel.replicated(mesh)
  return jax.jit(lambda k: diffusion.init_x0_state(model_cfg, tx, k), out_shardings=rep)(key)


@functools.lru_cache(maxsize=8)
def lfdn_init_and_step(model_cfg: lfdn.LFDNConfig, optim_cfg: optim.AdamWConfig,
                       abar: bytes) -> tuple[Callable, Callable]:
  """The LFDN's pure (init, step) for `loop.fit`; cached, so `fit` does not re-compile.

  Args:
    model_cfg: the LFDN.
    optim_cfg: its optimizer and EMA.
    abar: `alphas_cumprod` as float32 bytes (hashable).

  Returns:
    (`init(key) -> TrainState`, `step(state, batch, step_key)`) of
    `diffusion.make_x0_objective`.
  """
  obj = diffusion.make_x0_objective(model_cfg, optim.adamw(optim_cfg),
                                    np.frombuffer(abar, np.float32), optim_cfg.ema_decay)
  return obj.init, obj.step


def fit(features: np.ndarray, model_cfg: lfdn.LFDNConfig, optim_cfg: optim.AdamWConfig,
        sched: schedule.NoiseSchedule, cfg: FitConfig, checkpointer: Optional[Checkpointer],
        mesh=None, write_metrics: Optional[Callable[[int, dict], Any]] = None,
        progress: bool = True) -> TrainState:
  """Trains the LFDN on `features` [N, C] (every process passes the full array).

  See `training.loop.fit` for batches, checkpoints (the states at
  `cfg.kept_steps`, the LR reference first, are kept apart), resume and metrics.

  Returns:
    The final `TrainState` (use `ema_params` for scoring).

  Raises:
    Preempted: on SIGTERM or a first Ctrl-C (with a checkpointer), after saving the
      current step.
    Diverged: (a FloatingPointError) if the loss or the state became NaN/inf; the
      message names the step and the last good checkpoint (none non-finite is saved).
  """
  features = np.asarray(features, np.float32)
  _check_features(features)
  abar = np.asarray(sched.alphas_cumprod, np.float32).tobytes()
  init, step = lfdn_init_and_step(model_cfg, optim_cfg, abar)
  return loop.fit(init, step, {loop.IN: {"z": features}}, cfg, checkpointer, mesh=mesh,
                  write_metrics=write_metrics,
                  progress="train LFDN" if progress else False)


def restore_finished(features: np.ndarray, model_cfg: lfdn.LFDNConfig,
                     optim_cfg: train.OptimConfig, sched: schedule.NoiseSchedule,
                     cfg: FitConfig, checkpointer: Checkpointer, mesh=None) -> train.TrainState:
  """The final state of the finished LFDN run `fit` would train, restored without training or
  writing anything (`loop.restore_finished`: raises `NotFinished` for a run short of its
  steps)."""
  features = np.asarray(features, np.float32)
  _check_features(features)
  abar = np.asarray(sched.alphas_cumprod, np.float32).tobytes()
  init, _ = lfdn_init_and_step(model_cfg, optim_cfg, abar)
  return loop.restore_finished(init, {loop.IN: {"z": features}}, cfg, checkpointer, mesh=mesh)
