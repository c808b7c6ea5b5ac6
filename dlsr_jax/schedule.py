"""Noise schedules and the forward (noising) process.

The DLSR schedule ("scaled linear"): T = 100 steps,
betas = linspace(sqrt(0.0015), sqrt(0.0195), T) ** 2, abar = cumprod(1 - beta).
Timesteps are indexed 0..T-1; abar[t] is the signal level *after* step t.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """Hashable description of a schedule (safe as a static jit argument)."""
  kind: str = "scaled_linear"   # "scaled_linear" | "linear" | "cosine"
  num_steps: int = 100
  beta_start: float = 0.0015
  beta_end: float = 0.0195
  cosine_s: float = 0.008


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """Numpy arrays of a discrete schedule. Use `jnp.asarray` inside jit."""
  betas: np.ndarray            # [T]
  alphas_cumprod: np.ndarray   # [T]

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])


def _betas(cfg: ScheduleConfig) -> np.ndarray:
  t = cfg.num_steps
  if t < 2:
    raise ValueError(f"a schedule needs at least 2 steps, got num_steps={t}")
  if cfg.kind == "scaled_linear":
    return np.linspace(math.sqrt(cfg.beta_start), math.sqrt(cfg.beta_end), t,
                       dtype=np.float64) ** 2
  if cfg.kind == "linear":
    return np.linspace(cfg.beta_start, cfg.beta_end, t, dtype=np.float64)
  if cfg.kind == "cosine":
    # Nichol & Dhariwal (2021), betas clipped at 0.999.
    steps = np.arange(t + 1, dtype=np.float64) / t
    f = np.cos((steps + cfg.cosine_s) / (1 + cfg.cosine_s) * math.pi / 2) ** 2
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
  raise ValueError(f"unknown schedule kind {cfg.kind!r}; "
                   "expected 'scaled_linear', 'linear' or 'cosine'")


def make_schedule(cfg: ScheduleConfig = ScheduleConfig()) -> NoiseSchedule:
  """Builds the schedule arrays (float32) from a config."""
  betas = _betas(cfg)
  abar = np.cumprod(1.0 - betas)
  return NoiseSchedule(betas=betas.astype(np.float32),
                       alphas_cumprod=abar.astype(np.float32))


def q_sample(z0: jax.Array, t: jax.Array, noise: jax.Array,
             alphas_cumprod: jax.Array) -> jax.Array:
  """Forward process: z_t = sqrt(abar[t]) z0 + sqrt(1 - abar[t]) eps.

  Args:
    z0: [B, C] clean features.
    t: [B] or scalar int timesteps in 0..T-1.
    noise: [B, C] standard normal noise.
    alphas_cumprod: [T] abar.

  Returns:
    [B, C] noised features.
  """
  abar = jnp.asarray(alphas_cumprod)[t]
  abar = jnp.reshape(abar, jnp.shape(abar) + (1,) * (z0.ndim - jnp.ndim(abar)))
  return jnp.sqrt(abar) * z0 + jnp.sqrt(1.0 - abar) * noise
