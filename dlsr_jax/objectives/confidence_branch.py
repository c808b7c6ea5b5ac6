"""Confidence branch (DeVries & Taylor 2018, "Learning Confidence for OOD Detection").

The net gets a confidence head (`models.confidence.with_confidence_head`): a
sigmoid unit c on the penultimate features. Each training sample gets a
"hint" with probability `hint_probability` (drawn from the step key); a hinted
sample's prediction is pulled towards its label by the confidence it lacks,

  p' = c' p + (1 - c') onehot(y),   c' = c if hinted else 1,

and the loss is -log p'_y + lambda * mean(-log c) (the second term over the
whole batch). After each step lambda /= 1.01 if that step's mean(-log c) <
beta, else lambda /= 0.99. Lambda lives in the train state
(`state.extra["lambda"]`, float32), so checkpoints carry it and a resumed run
continues exactly. The OOD score of the trained net is -c (`detectors.confidence`).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlsr_jax.models.confidence import CONFIDENCE, with_confidence_head
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base
from dlsr_jax.objectives.cross_entropy import crop_flip_in, network_input
from dlsr_jax.training import state as state_lib
from dlsr_jax.training.state import TrainState

__all__ = ["ARRAYS", "loss", "make", "update_lambda"]

ARRAYS = (CONFIDENCE,)
LAMBDA = "lambda"    # the key of lambda in `TrainState.extra`


def loss(logits: jax.Array, confidence_logit: jax.Array, labels: jax.Array,
         hint: jax.Array, lam: float | jax.Array, eps: float = 1e-12
         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The confidence-branch loss of one batch.

  Args:
    logits: [B, K] classifier logits.
    confidence_logit: [B] pre-sigmoid confidence (c = sigmoid of it).
    labels: [B] int class indices.
    hint: [B] bool or 0/1: the samples that get a hint (c' = c), the others
      use c' = 1 (their task loss is plain cross-entropy).
    lam: the weight of the confidence loss.
    eps: floor of p'_y inside the log.

  Returns:
    (total, task_loss, confidence_loss), scalars: task_loss = mean over the
    batch of -log max(p'_y, eps); confidence_loss = mean of -log c over the
    whole batch (computed as softplus(-logit)); total = task_loss + lam *
    confidence_loss.
  """
  logits = logits.astype(jnp.float32)
  confidence_logit = confidence_logit.astype(jnp.float32)
  p = jax.nn.softmax(logits, axis=-1)
  c = jax.nn.sigmoid(confidence_logit)
  c_used = jnp.where(jnp.asarray(hint).astype(bool), c, 1.0)[:, None]
  p_hinted = c_used * p + (1.0 - c_used) * jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)
  p_y = jnp.take_along_axis(p_hinted, labels[:, None], axis=-1)[:, 0]
  task = jnp.mean(-jnp.log(jnp.maximum(p_y, eps)))
  confidence = jnp.mean(jax.nn.softplus(-confidence_logit))
  return task + lam * confidence, task, confidence


def update_lambda(lam: jax.Array, confidence_loss: jax.Array, beta: float) -> jax.Array:
  """lam / 1.01 if confidence_loss < beta, else lam / 0.99 (the paper's budget rule).

  A true division also under jit: XLA turns a division by a constant into a
  multiplication by its rounded reciprocal (1 ulp off in float32), so the
  divisor is selected first.
  """
  lam = jnp.asarray(lam)
  divisor = jnp.where(confidence_loss < beta, jnp.asarray(1.01, lam.dtype),
                      jnp.asarray(0.99, lam.dtype))
  return lam / divisor


def _number(name: str, value, ok, what: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
      or not math.isfinite(value) or not ok(value):
    raise ValueError(f"confidence_branch: {name} must be {what}, got {value!r}")
  return float(value)


def make(net: Net, tx: optax.GradientTransformation, *, augment: Optional[bool] = None,
         ema_decay: Optional[float] = None, seed: int = 0, lambda0: float = 0.1,
         beta: float = 0.3, hint_probability: float = 0.5,
         name: str = "confidence_branch") -> base.Objective:
  """The confidence-branch objective for `net`.

  Args:
    net: the classifier (or head on features) and its initial variables; a
      net without a "confidence" output is wrapped with a fresh confidence head
      (`with_confidence_head`, key from `seed`), one that has it (a resumed or
      fine-tuned confidence net) is trained as it is.
    tx: the optimizer (over the wrapped net's params, head included).
    augment: random crop (pad 4) + horizontal flip; default: True for image
      nets, False for heads on features (where it is an error).
    ema_decay: keep an EMA of the params; None = no EMA.
    seed: the seed of the confidence head's init.
    lambda0: the initial lambda (> 0; the paper: 0.1).
    beta: the confidence budget (> 0; the paper: 0.3).
    hint_probability: the probability that a sample gets a hint, in [0, 1]
      (the paper: 0.5).
    name: objective name.

  Returns:
    The `Objective` (its `net` is the wrapped net; its state's `extra` is
    {"lambda": float32 scalar}). Step metrics: "loss", "task_loss",
    "confidence_loss", "lambda" (the lambda this step's loss used; the state
    holds the updated one), "accuracy" (of the training batch), "grad_norm".

  Raises:
    ValueError: a setting out of range, or augmentation asked for a head.
  """
  lambda0 = _number("lambda0", lambda0, lambda v: v > 0, "a number > 0")
  beta = _number("beta", beta, lambda v: v > 0, "a number > 0")
  hint_probability = _number("hint_probability", hint_probability, lambda v: 0 <= v <= 1,
                             "a probability in [0, 1]")
  if CONFIDENCE not in net.outputs:
    net = with_confidence_head(net, jax.random.key(seed))
  image_net = net.resolution is not None
  if augment is None:
    augment = image_net
  if augment and not image_net:
    raise ValueError(f"{net.name!r} is a head on features: no image augmentation")
  augment_fn = crop_flip_in() if augment else None
  variables = net.params

  def init(key: jax.Array) -> TrainState:
    del key  # the weights are `variables`
    return state_lib.create(variables, tx.init, ema=ema_decay is not None,
                            extra={LAMBDA: jnp.asarray(lambda0, jnp.float32)})

  def step(state: TrainState, batch: base.Batch, key: jax.Array):
    k_aug, k_loss = jax.random.split(key)
    k_hint, k_dropout = jax.random.split(k_loss)
    if augment_fn is not None:
      batch = augment_fn(k_aug, batch)
    x, y = batch["in"]["x"], batch["in"]["y"]
    hint = jax.random.bernoulli(k_hint, hint_probability, y.shape)
    lam = state.extra[LAMBDA]

    def loss_of(params):
      logits, out, batch_stats = base.apply_train(
          net.module, {**state.variables, "params": params}, network_input(net, x), k_dropout)
      total, task, conf = loss(logits, out[CONFIDENCE], y, hint, lam)
      acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
      return total, (task, conf, acc, batch_stats)

    (total, (task, conf, acc, batch_stats)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    new = base.apply_gradients(state, grads, tx, ema_decay=ema_decay, batch_stats=batch_stats)
    new = new.replace(extra={**state.extra, LAMBDA: update_lambda(lam, conf, beta)})
    return new, {"loss": total, "task_loss": task, "confidence_loss": conf, "lambda": lam,
                 "accuracy": acc, "grad_norm": optax.tree.norm(grads)}

  return base.Objective(name=name, streams=(), init=init, step=step, net=net)
