"""LFDN training: state, optimizer, EMA and the pure train step.

`make_x0_step` returns the pure `step(state, batch, step_key) -> (state,
metrics)` that `dlsr_jax.training.loop.fit` jits and runs (`dlsr_jax.trainer`
composes the two); `make_train_step` is the same step on a bare [B, C] batch
with the loop key.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlsr_jax import diffusion, lfdn
from dlsr_jax.objectives import base as objectives_base
from dlsr_jax.training import optim
from dlsr_jax.typedefs import Params


class TrainState(flax.struct.PyTreeNode):
  """step, params, optimizer state and EMA params. No apply_fn, no rng."""
  step: jax.Array
  params: Params
  opt_state: Any
  ema_params: Params


# Moved: the optimizer to `training.optim`, the EMA warm-up to `objectives.base`.
OptimConfig = optim.AdamWConfig
make_optimizer = optim.adamw
ema_decay_at = objectives_base.ema_decay_at


def create_train_state(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                       key: jax.Array) -> TrainState:
  params = lfdn.init_params(model_cfg, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params))


def lfdn_apply_fn(model_cfg: lfdn.LFDNConfig, train: bool = False) -> Callable[..., jax.Array]:
  """`(params, z_t, t[, dropout_key]) -> z0_hat` for an LFDN config (`lfdn.apply_fn`)."""
  return lfdn.apply_fn(model_cfg, train=train)


def make_x0_step(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                 alphas_cumprod: np.ndarray, ema_decay: float) -> Callable[..., tuple]:
  """The LFDN's step for `training.loop.fit`: x0-prediction loss, AdamW, EMA.

  Returns:
    `step(state, batch, step_key) -> (new_state, {"loss", "grad_norm"})` with
    `batch["in"]["z"]` the [B, C] clean features; `step_key` (the loop's
    `fold_in(loop_key, state.step)`) draws the timesteps, noise and dropout.
  """
  apply = lfdn.apply_fn(model_cfg, train=True)
  abar = jnp.asarray(alphas_cumprod, jnp.float32)

  def step(state: TrainState, batch: dict, step_key: jax.Array):
    z0 = batch["in"]["z"]
    loss_fn = lambda p: diffusion.x0_loss(apply, p, z0, step_key, abar)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay_at(state.step, ema_decay)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return step


def make_train_step(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                    alphas_cumprod: np.ndarray,
                    ema_decay: float) -> Callable[..., tuple]:
  """Builds `step(state, z0 [B, C], loop_key) -> (new_state, {"loss", "grad_norm"})`.

  `make_x0_step` on a bare feature batch: the step's randomness is
  `fold_in(loop_key, state.step)`, so a resumed run draws exactly what an
  uninterrupted run draws, and `training.loop.fit` computes the same numbers.
  """
  x0_step = make_x0_step(model_cfg, tx, alphas_cumprod, ema_decay)

  def step(state: TrainState, z0: jax.Array, key: jax.Array):
    return x0_step(state, {"in": {"z": z0}}, jax.random.fold_in(key, state.step))

  return step
