"""x0-prediction training loss and objective, DDIM reconstruction over feature vectors.

Everything here is a pure function of explicit arguments; the caller jits and
shards. `make_x0_objective` is the LFDN's training as an `objectives.base.Objective`
(the common `training.state.TrainState`, the shared AdamW / EMA update), which
`training.loop.fit` trains (`dlsr_jax.trainer.fit` on cached features). `apply_fn(params, z_t [B, C], t [B]) -> z0_hat [B, C]` is the denoiser
(e.g. `lambda p, z, t: LFDN(cfg).apply({"params": p}, z, t)`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlsr_jax import lfdn
from dlsr_jax.objectives import base as objectives_base
from dlsr_jax.schedule import q_sample
from dlsr_jax.training import loop
from dlsr_jax.training import state as state_lib

ApplyFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
  """How a feature vector is reconstructed from noise level k.

  Attributes:
    stride: DDIM step size (timesteps k, k - stride, ..., > 0, then 0).
    eta: 1.0 = stochastic DDPM-like steps (paper/release), 0.0 = deterministic.
    release_compat: reproduce the official release's test-time arithmetic
      exactly (SPEC 1.5; `release_step`): eps_hat from abar[t], x0 recomputed
      from eps_hat with abar[t - 1], the update to abar[t - 2], and a t = 1
      step that is the identity, so the reconstruction still carries noise.
      Stride 1 only.
  """
  stride: int = 1
  eta: float = 1.0
  release_compat: bool = False

  def __post_init__(self):
    if self.stride < 1:
      raise ValueError(f"DDIM stride must be >= 1, got {self.stride}")
    if self.eta < 0:
      raise ValueError(f"DDIM eta must be >= 0, got {self.eta}")
    if self.release_compat and self.stride != 1:
      raise ValueError(f"release_compat reproduces the release, which steps with stride 1; "
                       f"got stride {self.stride} (use release_compat=False for other strides)")


def x0_loss(apply_fn: ApplyFn, params, z0: jax.Array, key: jax.Array,
            alphas_cumprod: jax.Array) -> jax.Array:
  """Mean squared error of the x0 prediction at a uniformly drawn timestep.

  Args:
    apply_fn: `(params, z_t, t, rng) -> z0_hat`; `rng` feeds dropout.
    params: denoiser params.
    z0: [B, C] clean features.
    key: PRNG key for t, noise and dropout.
    alphas_cumprod: [T].

  Returns:
    Scalar loss.
  """
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  num_steps = alphas_cumprod.shape[0]
  t = jax.random.randint(k_t, (z0.shape[0],), 0, num_steps)
  eps = jax.random.normal(k_eps, z0.shape, z0.dtype)
  z_t = q_sample(z0, t, eps, alphas_cumprod)
  pred = apply_fn(params, z_t, t, k_drop)
  return jnp.mean(jnp.square(pred - z0))


def init_x0_state(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                  key: jax.Array) -> state_lib.TrainState:
  """A step-0 LFDN state: params drawn from `key`, `tx`'s state of them, an EMA copy."""
  return state_lib.create({"params": lfdn.init_params(model_cfg, key)}, tx.init, ema=True)


def make_x0_objective(model_cfg: lfdn.LFDNConfig, tx: optax.GradientTransformation,
                      alphas_cumprod: np.ndarray, ema_decay: float
                      ) -> objectives_base.Objective:
  """The LFDN's training as an Objective: x0-prediction loss, the shared AdamW / EMA update.

  Args:
    model_cfg: the LFDN.
    tx: its optimizer (`training.optim.adamw`; the step's divergence verdict,
      `objectives.base.update_is_finite`, relies on it).
    alphas_cumprod: [T] of the noise schedule.
    ema_decay: the EMA decay (with the warm-up of `objectives.base.ema_decay_at`).

  Returns:
    The `Objective` ("dlsr", no streams besides "in"): `init(key)` draws fresh LFDN
    params from `key` into a common `TrainState` with EMA params (no BatchNorm, empty
    `extra`); `step(state, batch, step_key) -> (state, {"loss", "grad_norm",
    loop.STATE_FINITE})` (the last: the loop's divergence guard's verdict) reads
    `batch["in"]["z"]` [B, C] clean features, and `step_key` (the loop's
    `fold_in(loop_key, state.step)`) draws the timesteps, noise and dropout; the update is
    `objectives.base.apply_gradients`, the one every objective uses.
  """
  apply = lfdn.apply_fn(model_cfg, train=True)
  abar = jnp.asarray(alphas_cumprod, jnp.float32)

  def init(key: jax.Array) -> state_lib.TrainState:
    return init_x0_state(model_cfg, tx, key)

  def step(state: state_lib.TrainState, batch: dict, step_key: jax.Array):
    z0 = batch["in"]["z"]
    loss, grads = jax.value_and_grad(
        lambda p: x0_loss(apply, p, z0, step_key, abar))(state.params)
    new = objectives_base.apply_gradients(state, grads, tx, ema_decay=ema_decay,
                                          batch_stats=None)
    grad_norm = optax.tree.norm(grads)
    return new, {"loss": loss, "grad_norm": grad_norm,
                 loop.STATE_FINITE: objectives_base.update_is_finite(new, grad_norm)}

  return objectives_base.Objective(name="dlsr", streams=(), init=init, step=step)


def ddim_step(z: jax.Array, x0_hat: jax.Array, a_t: jax.Array, a_prev: jax.Array,
              eta: float, noise: jax.Array | None) -> jax.Array:
  """One DDIM update from signal level a_t = abar[t] to a_prev (paper mode).

  eps_hat = (z - sqrt(a_t) x0_hat) / sqrt(1 - a_t);
  z' = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma noise,
  sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev).
  """
  eps_hat = (z - jnp.sqrt(a_t) * x0_hat) / jnp.sqrt(1.0 - a_t)
  sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t)) * jnp.sqrt(1.0 - a_t / a_prev)
  z = jnp.sqrt(a_prev) * x0_hat + jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)) * eps_hat
  return z if noise is None else z + sigma * noise


def release_step(z: jax.Array, x0_hat: jax.Array, abar: jax.Array, t: jax.Array,
                 eta: float, noise: jax.Array | None) -> jax.Array:
  """One step t -> t - 1 of the official release's arithmetic (SPEC 1.5, stride 1).

  eps_hat = (z / sqrt(abar[t]) - x0_hat) / sqrt(1 / abar[t] - 1);
  a = abar[t - 1], a_prev = abar[t - 2] (abar[0] when t = 1);
  sigma = eta sqrt((1 - a_prev) / (1 - a) (1 - a / a_prev));
  pred = (z - sqrt(1 - a) eps_hat) / sqrt(a)      (x0 recomputed, not x0_hat);
  z' = sqrt(a_prev) pred + sqrt(1 - a_prev - sigma^2) eps_hat + sigma noise.
  At t = 1, a = a_prev and sigma = 0: the step is the identity.
  """
  a_t = abar[t]
  a = abar[jnp.maximum(t - 1, 0)]
  a_prev = abar[jnp.maximum(t - 2, 0)]
  eps_hat = (z / jnp.sqrt(a_t) - x0_hat) / jnp.sqrt(1.0 / a_t - 1.0)
  sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
  pred = (z - jnp.sqrt(1.0 - a) * eps_hat) / jnp.sqrt(a)
  z = jnp.sqrt(a_prev) * pred + jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)) * eps_hat
  return z if noise is None else z + sigma * noise


def ddim_reconstruct(apply_fn: ApplyFn, params, z0: jax.Array, k: jax.Array,
                     eps: jax.Array, step_keys: jax.Array, alphas_cumprod: jax.Array,
                     cfg: DDIMConfig = DDIMConfig()) -> jax.Array:
  """Noises z0 to level k and denoises it back with DDIM.

  z_k = sqrt(abar[k]) z0 + sqrt(1 - abar[k]) eps; then for t = k, k - s, ...
  while t > 0: x0_hat = f(z, t) and the DDIM update (`ddim_step`) from
  abar[t] to abar[max(t - s, 0)]. The reconstruction is the final state.
  `cfg.release_compat` runs the release's steps (`release_step`) instead.

  `k` may be a traced scalar: the loop is a `while_loop`, so `jax.vmap` over
  an array of k values compiles once.

  Args:
    apply_fn: `(params, z_t [B, C], t) -> z0_hat [B, C]`; `t` is a scalar int32
      timestep shared by the batch (the LFDN broadcasts it).
    params: denoiser params.
    z0: [B, C] clean features.
    k: scalar int, start level (1..T-1).
    eps: [B, C] forward noise.
    step_keys: [B] PRNG keys, one per sample; step t draws its noise from
      `fold_in(step_keys[i], t)`, so it does not depend on the batch.
    alphas_cumprod: [T].
    cfg: stride / eta / release_compat.

  Returns:
    [B, C] reconstruction.
  """
  abar = jnp.asarray(alphas_cumprod)
  k = jnp.asarray(k, jnp.int32)
  z = q_sample(z0, k, eps, abar)

  def step_noise(t):
    draw = lambda key: jax.random.normal(jax.random.fold_in(key, t), z0.shape[1:], z0.dtype)
    return jax.vmap(draw)(step_keys)

  def body(state):
    t, z = state
    # One t for the whole batch, passed as a scalar: the LFDN embeds it once.
    x0_hat = apply_fn(params, z, t)
    noise = step_noise(t) if cfg.eta > 0 else None
    if cfg.release_compat:
      return t - 1, release_step(z, x0_hat, abar, t, cfg.eta, noise)
    t_prev = jnp.maximum(t - cfg.stride, 0)
    return t_prev, ddim_step(z, x0_hat, abar[t], abar[t_prev], cfg.eta, noise)

  # The release's t = 1 step is the identity (see `release_step`): skip its network call.
  last = 1 if cfg.release_compat else 0
  _, z = jax.lax.while_loop(lambda s: s[0] > last, body, (k, z))
  return z
