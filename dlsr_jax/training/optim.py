"""The optimizers: SGD (the classifiers) and AdamW (the LFDN).

`sgd`: SGD with (Nesterov) momentum, weight decay, cosine decay.

The CIFAR recipe (SPEC 4.2): lr 0.1 decayed to 0 by a cosine over the run,
momentum 0.9 (Nesterov), weight decay 5e-4, batch 128. Weight decay is applied
as torch's `SGD(weight_decay=...)` does: `wd * param` is added to the gradient
before the momentum, on every parameter (conv/dense kernels, biases and
BatchNorm scales/shifts alike), as the torch CIFAR recipes the pretrained
weights come from do (`SGD(model.parameters(), ...)`); `decay="kernels"`
restricts it to kernels. Nesterov momentum follows torch (dampening 0):
`buf = m * buf + g`, `update = g + m * buf`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import optax


@dataclasses.dataclass(frozen=True)
class SGDConfig:
  """SGD settings.

  Attributes:
    learning_rate: peak (initial) learning rate.
    momentum: momentum coefficient (0 = plain SGD).
    nesterov: Nesterov momentum.
    weight_decay: L2 coefficient added to the gradient (torch-style).
    decay: "all" params or "kernels" only.
    schedule: "cosine" (to 0 over the run) or "constant".
  """
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 5e-4
  decay: str = "all"
  schedule: str = "cosine"

  def __post_init__(self):
    if self.decay not in ("all", "kernels"):
      raise ValueError(f"SGDConfig.decay must be 'all' or 'kernels', got {self.decay!r}")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"SGDConfig.schedule must be 'cosine' or 'constant', "
                       f"got {self.schedule!r}")
    if self.learning_rate <= 0 or self.momentum < 0 or self.weight_decay < 0:
      raise ValueError(f"SGDConfig needs learning_rate > 0, momentum >= 0, weight_decay >= 0; "
                       f"got {self}")


def _kernels(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def sgd(cfg: SGDConfig, total_steps: int) -> optax.GradientTransformation:
  """The optimizer for a run of `total_steps` updates (the cosine's length).

  Args:
    cfg: settings.
    total_steps: number of updates of the whole run (>= 1).

  Returns:
    An optax transformation.
  """
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  lr = (optax.cosine_decay_schedule(cfg.learning_rate, total_steps)
        if cfg.schedule == "cosine" else cfg.learning_rate)
  parts = []
  if cfg.weight_decay:
    mask = _kernels if cfg.decay == "kernels" else None
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
  parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class AdamWConfig:
  """AdamW with optional warm-up and gradient clipping; the decay of the params' EMA.

  Paper (the LFDN): lr 1e-4 constant, weight decay 1e-4, batch 128, 150 epochs.
  The release's defaults: lr 1e-5, weight decay 0.02, batch 256.

  Attributes:
    learning_rate: the (peak) learning rate.
    weight_decay: AdamW's decoupled weight decay.
    b1, b2, eps: Adam's moment decays and epsilon.
    warmup_steps: linear warm-up from 0 over this many steps (0 = none).
    grad_clip_norm: clip the gradients' global norm to this (None / 0 = no clipping).
    ema_decay: the decay of the EMA params the objective's update keeps
      (`objectives.base.apply_gradients`, with the warm-up of `ema_decay_at`).
  """
  learning_rate: float = 1e-4
  weight_decay: float = 1e-4
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  warmup_steps: int = 0
  grad_clip_norm: Optional[float] = None
  ema_decay: float = 0.9999


def adamw(cfg: AdamWConfig) -> optax.GradientTransformation:
  """The AdamW optimizer of `cfg` (warm-up and clipping included; the EMA is not optax's)."""
  if cfg.warmup_steps > 0:
    lr = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  else:
    lr = cfg.learning_rate
  tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx
