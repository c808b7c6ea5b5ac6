"""The Objective interface: how a network is trained, as (init, pure step).

An `Objective` plugs straight into the loop:
`training.loop.fit(obj.init, obj.step, streams, cfg, checkpointer)`. Its step
reads `batch["in"]` and the streams it names (`obj.streams`, e.g.
("outliers",)) and gets the loop's step key.

`supervised` builds the objective of every loss-only method (cross-entropy,
outlier exposure, ...): the method supplies `loss_fn`; the optimizer update,
EMA, BatchNorm statistics and augmentation are done here.

An objective module (`dlsr_jax/objectives/<name>.py`, chosen by a net block's
`objective="<name>"`, found by module name like the detectors) provides:

  make(net, tx, *, <context>, **settings) -> Objective
      settings: the method's keyword arguments (set in the net block, e.g.
        `weight=0.5`); context (filled in by `experiments`, only those `make`
        names): `augment` (bool: crop + flip of image nets), `ema_decay`
        (float or None), `data` (the host streams {"in": {"x", "y"}, ...}),
        `workdir` (the run's folder), `seed` (int).
  STREAMS = ("outliers",)   optional: streams besides "in"; the net block gives
      each one's data source under the stream's name (`outliers="npz:..."`)
      and its batch size as `<stream>_batch_size`.
  ARRAYS = ("confidence",)  optional: arrays the trained net provides besides
      "logits" and "pre_logits" (its `Net.outputs`).

`init` starts from given Flax variables (a `Net`'s: fine-tuning, or a fresh
random init); the key is not used for the weights. The loop jits `init`, so
the variables become constants of that one compilation (about a second per
10M parameters on a CPU, once per run).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from dlsr_jax.models.net import Net
from dlsr_jax.training import state as state_lib
from dlsr_jax.training.checkpoint import all_finite
from dlsr_jax.training.state import TrainState

PyTree = Any
Batch = dict[str, dict[str, jax.Array]]
# loss_fn(variables, batch, key) -> (loss, (metrics, new batch_stats or None))
LossFn = Callable[[dict, Batch, jax.Array], tuple[jax.Array, tuple[dict, Optional[PyTree]]]]
AugmentFn = Callable[[jax.Array, Batch], Batch]
# The arguments of an objective module's `make` that the caller fills in (never settings).
CONTEXT_ARGS = ("net", "tx", "augment", "ema_decay", "data", "workdir", "seed")
_NOT_OBJECTIVES = ("base",)


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training-time method.

  Attributes:
    name: method name (e.g. "cross_entropy").
    streams: data streams it reads besides "in", e.g. ("outliers",).
    init: `init(key) -> TrainState` (the loop jits it).
    step: pure `step(state, batch, step_key) -> (state, metrics)`.
    net: the network the trained variables belong to (None = the net the
      objective was made for; a method that adds a head returns the new net).
    export: `export(state) -> Flax variables` of the trained net for
      evaluation (None = `state.eval_variables()`; UMAP returns the masked
      weights, the GAN objective the classifier's alone).
    finish: `finish(state, workdir)` writes the method's own outputs once
      training ends (the GAN's sample grid); None = nothing.
  """
  name: str
  streams: tuple[str, ...]
  init: Callable[[jax.Array], TrainState]
  step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]
  net: Optional[Net] = None
  export: Optional[Callable[[TrainState], dict]] = None
  finish: Optional[Callable[[TrainState, str], None]] = None

  def variables(self, state: TrainState) -> dict:
    """The evaluation variables of the trained net (`export`, or the EMA / params)."""
    return state.eval_variables() if self.export is None else self.export(state)


def apply_train(module, variables: dict, x: jax.Array, key: jax.Array
                ) -> tuple[jax.Array, dict, Optional[PyTree]]:
  """Train-mode forward pass: batch statistics, dropout keyed by `key`.

  Args:
    module: a classifier module, `__call__(x, train) -> (logits, out)`.
    variables: {"params": ...[, "batch_stats": ...]}.
    x: network input (e.g. [B, H, W, 3] normalised images or [B, C] features).
    key: dropout key.

  Returns:
    (logits [B, K], out, the updated batch_stats or None without BatchNorm).
  """
  rngs = {"dropout": key}
  if "batch_stats" in variables:
    (logits, out), new = module.apply(variables, x, train=True, rngs=rngs,
                                      mutable=["batch_stats"])
    return logits, out, new["batch_stats"]
  logits, out = module.apply(variables, x, train=True, rngs=rngs)
  return logits, out, None


def supervised(name: str, loss_fn: LossFn, tx: optax.GradientTransformation,
               variables: PyTree, *, streams: tuple[str, ...] = (),
               ema_decay: Optional[float] = None,
               augment: Optional[AugmentFn] = None) -> Objective:
  """The objective of a loss-only method.

  Args:
    name: method name.
    loss_fn: `loss_fn(variables, batch, key) -> (loss, (metrics, batch_stats))`;
      `variables["params"]` is differentiated, `variables["batch_stats"]` (if the
      state has some) is the current running statistics and the returned
      `batch_stats` (None without BatchNorm) replaces it.
    tx: the optimizer.
    variables: initial Flax variables {"params": ...[, "batch_stats": ...]}.
    streams: data streams read besides "in".
    ema_decay: keep an EMA of the params with this decay (with warm-up,
      `ema_decay_at`); None = no EMA.
    augment: `augment(key, batch) -> batch`, applied in the step before the loss.

  Returns:
    The `Objective`; its step's metrics are "loss", "grad_norm" and loss_fn's.
  """

  def init(key: jax.Array) -> TrainState:
    del key  # the weights are `variables`
    return state_lib.create(variables, tx.init, ema=ema_decay is not None)

  def step(state: TrainState, batch: Batch, key: jax.Array):
    k_aug, k_loss = jax.random.split(key)
    if augment is not None:
      batch = augment(k_aug, batch)

    def loss_of(params):
      return loss_fn({**state.variables, "params": params}, batch, k_loss)

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params)
    new = apply_gradients(state, grads, tx, ema_decay=ema_decay, batch_stats=batch_stats)
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

  return Objective(name=name, streams=tuple(streams), init=init, step=step)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with warm-up: min(decay, (1 + n) / (10 + n)) at update n.

  The early EMA follows the params closely, so it is usable long before 1 / (1 - decay)
  updates.
  """
  n = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def apply_gradients(state: TrainState, grads: PyTree, tx: optax.GradientTransformation, *,
                    ema_decay: Optional[float], batch_stats: Optional[PyTree]) -> TrainState:
  """One optimizer update of `state.params` (+ EMA, BatchNorm statistics, step + 1).

  The update of `supervised`'s step, for objectives that write their own step
  (method state in `state.extra` is left as it is).

  Args:
    state: the current state.
    grads: gradients of the loss with respect to `state.params`.
    tx: the optimizer.
    ema_decay: the EMA decay (with warm-up, `ema_decay_at`); used only
      when the state keeps EMA params.
    batch_stats: the new BatchNorm statistics, or None (keep the state's).

  Returns:
    The updated state.
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    d = ema_decay_at(state.step, ema_decay)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema,
                       batch_stats=state.batch_stats if batch_stats is None else batch_stats)


def update_is_finite(new: TrainState, grad_norm: jax.Array) -> jax.Array:
  """Whether `apply_gradients`'s new state is finite, read from the gradients and params alone.

  A step whose state changes only through `apply_gradients` (its `extra` untouched) with an
  optimizer of `training.optim` (AdamW or SGD, clipped or not) may return this as the loop's
  `training.loop.STATE_FINITE` metric instead of letting the guard read every leaf of the
  new state (at the LFDN's paper size the optimizer state and EMA are 3 x 347 MB: reading
  them took 11-15 % of the step's time on a CPU, `benchmarks/RESULTS.md`,
  speed_lfdn_train_update).

  Why it is the same verdict, given the state before the update was finite (the guard flags
  the first non-finite step and the loop stops there; a fresh or restored state is finite):

  - gradients: `grad_norm` (sqrt of the sum of every squared gradient) is finite exactly when
    every gradient is, and then every square g^2 is finite too (each is at most the sum);
  - AdamW's moments: mu' = b1 mu + (1 - b1) g and nu' = b2 nu + (1 - b2) g^2 are convex
    combinations of finite numbers, finite (SGD's momentum: m buf + g (+ wd p), finite for
    finite g, p); the step count is an integer;
  - the params are read directly (a single tree; the update's step can still overflow, e.g.
    with a learning rate of 1e30);
  - the EMA: d ema + (1 - d) params', a convex combination of finite numbers;
  - BatchNorm statistics (small) are read directly.

  The one case it flags and a full read would not: finite gradients whose squares sum past
  float32's range (|g| around 1e15 and more over 87 M params), which is divergence by any
  measure.

  Args:
    new: the state `apply_gradients` returned.
    grad_norm: the global norm of the gradients it was given (`optax.tree.norm`).

  Returns:
    A scalar bool.
  """
  return jnp.isfinite(grad_norm) & all_finite((new.params, new.batch_stats))


def available() -> list[str]:
  """The objective names: the public modules of `dlsr_jax.objectives` other than `base`."""
  package = importlib.import_module("dlsr_jax.objectives")
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                if not m.name.startswith("_") and m.name not in _NOT_OBJECTIVES)


def module(name: str) -> ModuleType:
  """The objective module `dlsr_jax.objectives.<name>` (ValueError naming the valid ones)."""
  if name not in available():
    raise ValueError(f"unknown objective {name!r}; available (modules of "
                     f"dlsr_jax.objectives): {', '.join(available())}")
  return importlib.import_module(f"dlsr_jax.objectives.{name}")


def settings_of(name: str) -> dict[str, Any]:
  """{setting: default (inspect.Parameter.empty if required)} of objective `name`'s `make`."""
  params = inspect.signature(module(name).make).parameters
  return {k: p.default for k, p in params.items()
          if k not in CONTEXT_ARGS and k != "name"
          and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def streams_of(name: str) -> tuple[str, ...]:
  """The data streams besides "in" that objective `name` reads (its module's STREAMS)."""
  return tuple(getattr(module(name), "STREAMS", ()))


def arrays_of(name: str) -> tuple[str, ...]:
  """The arrays a net trained with objective `name` adds to logits / pre_logits."""
  return tuple(getattr(module(name), "ARRAYS", ()))


def make(name: str, net: Net, tx: optax.GradientTransformation, settings: dict[str, Any],
         **context: Any) -> Objective:
  """`dlsr_jax.objectives.<name>.make(net, tx, **settings, **context)`.

  Args:
    name: objective module name.
    net, tx: the network to train and the optimizer.
    settings: the method's settings (keyword arguments of its `make`).
    **context: `CONTEXT_ARGS` values; only those the module's `make` names are passed.

  Returns:
    The `Objective`.
  """
  mod = module(name)
  params = inspect.signature(mod.make).parameters
  unknown = sorted(set(context) - set(CONTEXT_ARGS))
  if unknown:
    raise ValueError(f"unknown context arguments {unknown}; valid: {CONTEXT_ARGS}")
  passed = {k: v for k, v in context.items() if k in params}
  return mod.make(net, tx, **settings, **passed)
