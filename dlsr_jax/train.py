"""The LFDN's training under its former names (compatibility; new code uses the sources).

The LFDN trains on the common stack: `diffusion.make_x0_objective` (the x0 loss with the
shared AdamW / EMA update `objectives.base.apply_gradients`) on the common
`training.state.TrainState`, run by `training.loop.fit` (`dlsr_jax.trainer.fit`). The
names here build on that path only:

  TrainState          = training.state.TrainState
  OptimConfig         = training.optim.AdamWConfig
  make_optimizer      = training.optim.adamw
  ema_decay_at        = objectives.base.ema_decay_at
  lfdn_apply_fn       = lfdn.apply_fn
  create_train_state  = diffusion.init_x0_state (the objective's init)
  make_x0_step        = the objective's step (`step(state, batch, step_key)`)
  make_train_step     = that step on a bare [B, C] batch with the loop key

Checkpoints written when the LFDN had its own four-field state (step, params, opt_state,
ema_params) restore into the common state (`training.checkpoint`).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax

from dlsr_jax import diffusion, lfdn
from dlsr_jax.objectives.base import ema_decay_at
from dlsr_jax.training import loop
from dlsr_jax.training.optim import AdamWConfig as OptimConfig
from dlsr_jax.training.optim import adamw as make_optimizer
from dlsr_jax.training.state import TrainState

__all__ = ["OptimConfig", "TrainState", "create_train_state", "ema_decay_at", "lfdn_apply_fn",
           "make_optimizer", "make_train_step", "make_x0_step"]


def create_train_state(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                       key: jax.Array) -> TrainState:
  """A step-0 LFDN state (`diffusion.init_x0_state`)."""
  return diffusion.init_x0_state(model_cfg, tx, key)


def lfdn_apply_fn(model_cfg: lfdn.LFDNConfig, train: bool = False) -> Callable[..., jax.Array]:
  """`(params, z_t, t[, dropout_key]) -> z0_hat` for an LFDN config (`lfdn.apply_fn`)."""
  return lfdn.apply_fn(model_cfg, train=train)


def make_x0_step(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                 alphas_cumprod: np.ndarray, ema_decay: float) -> Callable[..., tuple]:
  """`diffusion.make_x0_objective(...).step`: `step(state, batch, step_key)`."""
  return diffusion.make_x0_objective(model_cfg, tx, alphas_cumprod, ema_decay).step


def make_train_step(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                    alphas_cumprod: np.ndarray,
                    ema_decay: float) -> Callable[..., tuple]:
  """Builds `step(state, z0 [B, C], loop_key) -> (new_state, {"loss", "grad_norm"})`.

  The x0 objective's step on a bare feature batch: the step's randomness is
  `fold_in(loop_key, state.step)`, so a resumed run draws exactly what an
  uninterrupted run draws, and `training.loop.fit` computes the same numbers.
  """
  x0_step = make_x0_step(model_cfg, tx, alphas_cumprod, ema_decay)

  def step(state: TrainState, z0: jax.Array, key: jax.Array):
    new, metrics = x0_step(state, {"in": {"z": z0}}, jax.random.fold_in(key, state.step))
    return new, {k: v for k, v in metrics.items() if k != loop.STATE_FINITE}

  return step
