"""The generic training state that every objective trains.

`TrainState` holds what a step updates and a checkpoint saves: the step count,
params, optimizer state and, where a method needs them, EMA params, BatchNorm
statistics and method state in `extra` (a pytree dict: a Lagrange multiplier,
masks, a second network). No apply_fn and no rng: the network is a static
argument of the objective's step and randomness comes from the step key.

The LFDN trains on this state too (`diffusion.make_x0_objective`: params, opt_state,
ema_params; no BatchNorm, empty `extra`). Its checkpoints written before, with its own
four-field state (step, params, opt_state, ema_params), restore into it
(`training.checkpoint`). The loop (`training.loop.fit`) trains any pytree state with a
`step` field.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from dlsr_jax.typedefs import Params

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """step, params, optimizer state and optional EMA / BatchNorm / method state.

  Attributes:
    step: int32 scalar, updates done so far.
    params: the trained Flax "params" collection.
    opt_state: the optax state of `params`.
    ema_params: EMA of `params`, or None (no EMA).
    batch_stats: the Flax "batch_stats" collection, or None (no BatchNorm).
    extra: method state (a dict pytree; empty for plain supervised training).
  """
  step: jax.Array
  params: Params
  opt_state: PyTree
  ema_params: Optional[Params] = None
  batch_stats: Optional[PyTree] = None
  extra: PyTree = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict[str, PyTree]:
    """Flax variables for `module.apply`: {"params": ...[, "batch_stats": ...]}."""
    if self.batch_stats is None:
      return {"params": self.params}
    return {"params": self.params, "batch_stats": self.batch_stats}

  def eval_variables(self) -> dict[str, PyTree]:
    """Variables for evaluation: the EMA params where there are some, else the params."""
    params = self.params if self.ema_params is None else self.ema_params
    if self.batch_stats is None:
      return {"params": params}
    return {"params": params, "batch_stats": self.batch_stats}


def create(variables: PyTree, opt_init, *, ema: bool = False,
           extra: Optional[PyTree] = None) -> TrainState:
  """A step-0 state from full Flax variables.

  Args:
    variables: {"params": ...[, "batch_stats": ...]} (e.g. `Net.params`); other
      collections are not supported.
    opt_init: the optimizer's `init` (`tx.init`).
    ema: keep an EMA copy of the params (starting at the params).
    extra: method state (default: an empty dict).

  Returns:
    The `TrainState` (arrays copied, so donating it leaves `variables` intact).
  """
  unknown = sorted(set(variables) - {"params", "batch_stats"})
  if unknown:
    raise ValueError(f"variables have collections {unknown} besides params/batch_stats")
  params = jax.tree.map(jnp.array, variables["params"])
  batch_stats = variables.get("batch_stats")
  if batch_stats is not None:
    batch_stats = jax.tree.map(jnp.array, batch_stats)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_init(params),
                    ema_params=jax.tree.map(jnp.copy, params) if ema else None,
                    batch_stats=batch_stats, extra={} if extra is None else extra)
