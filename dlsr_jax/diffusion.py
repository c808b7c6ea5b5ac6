"""x0-prediction training loss and DDIM reconstruction over feature vectors.

Everything here is a pure function of explicit arguments; the caller jits and
shards. `apply_fn(params, z_t [B, C], t [B]) -> z0_hat [B, C]` is the denoiser
(e.g. `lambda p, z, t: LFDN(cfg).apply({"params": p}, z, t)`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dlsr_jax.schedule import q_sample

ApplyFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
  """How a feature vector is reconstructed from noise level k.

  Attributes:
    stride: DDIM step size (timesteps k, k - stride, ..., > 0, then 0).
    eta: 1.0 = stochastic DDPM-like steps (paper/release), 0.0 = deterministic.
    release_compat: reproduce the official release, which indexes abar one
      step lower inside the DDIM update than in the forward noising (so the
      last step lands on abar = 1).
  """
  stride: int = 1
  eta: float = 1.0
  release_compat: bool = False

  def __post_init__(self):
    if self.stride < 1:
      raise ValueError(f"DDIM stride must be >= 1, got {self.stride}")
    if self.eta < 0:
      raise ValueError(f"DDIM eta must be >= 0, got {self.eta}")


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


def _abar_at(alphas_cumprod: jax.Array, t: jax.Array, shift: int) -> jax.Array:
  """abar[t - shift], with abar[-1] := 1 (no noise)."""
  idx = t - shift
  return jnp.where(idx >= 0, alphas_cumprod[jnp.maximum(idx, 0)], 1.0)


def ddim_reconstruct(apply_fn: ApplyFn, params, z0: jax.Array, k: jax.Array,
                     eps: jax.Array, step_keys: jax.Array, alphas_cumprod: jax.Array,
                     cfg: DDIMConfig = DDIMConfig()) -> jax.Array:
  """Noises z0 to level k and denoises it back with DDIM.

  z_k = sqrt(abar[k]) z0 + sqrt(1 - abar[k]) eps; then for t = k, k - s, ...
  while t > 0: x0_hat = f(z, t), eps_hat = (z - sqrt(abar_t) x0_hat) /
  sqrt(1 - abar_t), and the DDIM update to t_prev = max(t - s, 0) with noise
  scale sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) *
  sqrt(1 - abar_t / abar_prev). The reconstruction is the final state.

  `k` may be a traced scalar: the loop is a `while_loop`, so `jax.vmap` over
  an array of k values compiles once.

  Args:
    apply_fn: `(params, z_t [B, C], t [B]) -> z0_hat [B, C]`.
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
  shift = 1 if cfg.release_compat else 0
  z = q_sample(z0, k, eps, abar)
  batch = z0.shape[0]

  def step_noise(t):
    draw = lambda key: jax.random.normal(jax.random.fold_in(key, t), z0.shape[1:], z0.dtype)
    return jax.vmap(draw)(step_keys)

  def body(state):
    t, z = state
    t_prev = jnp.maximum(t - cfg.stride, 0)
    x0_hat = apply_fn(params, z, jnp.full((batch,), t, jnp.int32))
    a_t = _abar_at(abar, t, shift)
    a_prev = _abar_at(abar, t_prev, shift)
    eps_hat = (z - jnp.sqrt(a_t) * x0_hat) / jnp.sqrt(1.0 - a_t)
    sigma = cfg.eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t)) * jnp.sqrt(1.0 - a_t / a_prev)
    dir_coef = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0))
    z = jnp.sqrt(a_prev) * x0_hat + dir_coef * eps_hat
    if cfg.eta > 0:
      z = z + sigma * step_noise(t)
    return t_prev, z

  _, z = jax.lax.while_loop(lambda s: s[0] > 0, body, (k, z))
  return z
