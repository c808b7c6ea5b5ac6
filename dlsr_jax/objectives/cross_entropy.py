"""Plain classifier training: softmax cross-entropy on the logits.

`make(net, tx)` trains a `models.Net` from its current variables (a random
init from scratch, or pretrained weights to fine-tune). Image nets read
`batch["in"]["x"]` uint8 [B, H, W, 3] (augmented with a random crop and flip
inside the step, then `net.preprocess`ed); heads read features [B, C] as they
are. Labels are `batch["in"]["y"]` int [B].
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from dlsr_jax import augment as augment_lib
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base


def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy.

  Args:
    logits: [B, K].
    labels: [B] int class indices.

  Returns:
    Scalar mean of -log softmax(logits)[label].
  """
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def crop_flip_in(pad: int = 4) -> base.AugmentFn:
  """Augmentation of `batch["in"]["x"]`: random crop (zero padding `pad`) and flip."""

  def augment(key: jax.Array, batch: base.Batch) -> base.Batch:
    stream = {**batch["in"], "x": augment_lib.random_crop_flip(key, batch["in"]["x"], pad)}
    return {**batch, "in": stream}

  return augment


def network_input(net: Net, x: jax.Array) -> jax.Array:
  """Images -> `net.preprocess(x)` (uint8, [0, 255]); features pass as float32."""
  return net.preprocess(x) if net.resolution is not None else x.astype(jnp.float32)


def make(net: Net, tx: optax.GradientTransformation, *, augment: Optional[bool] = None,
         ema_decay: Optional[float] = None, name: str = "cross_entropy") -> base.Objective:
  """The cross-entropy objective for `net`, starting from `net.params`.

  Args:
    net: the classifier (or head) and its initial variables.
    tx: the optimizer (e.g. `training.optim.sgd`).
    augment: random crop (pad 4) + horizontal flip; default: True for image
      nets, False for heads on features (where it is an error).
    ema_decay: keep an EMA of the params; None = no EMA.
    name: objective name.

  Returns:
    The `Objective`; metrics "loss", "accuracy" (of the training batch), "grad_norm".
  """
  image_net = net.resolution is not None
  if augment is None:
    augment = image_net
  if augment and not image_net:
    raise ValueError(f"{net.name!r} is a head on features: no image augmentation")

  def loss_fn(variables, batch, key):
    x, y = batch["in"]["x"], batch["in"]["y"]
    logits, _, batch_stats = base.apply_train(net.module, variables, network_input(net, x),
                                              key)
    acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    return loss(logits, y), ({"accuracy": acc}, batch_stats)

  return base.supervised(name, loss_fn, tx, net.params, ema_decay=ema_decay,
                         augment=crop_flip_in() if augment else None)
