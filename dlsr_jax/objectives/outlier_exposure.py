"""Outlier Exposure (Hendrycks, Mazeika & Dietterich, ICLR 2019).

loss = CE(in) + weight * mean over the outlier batch of (logsumexp(logits) - mean(logits)),
the cross-entropy from the outlier's softmax to the uniform distribution (SPEC 4.4).

The outliers are a data stream of their own ("outliers": its source is the net block's
`outliers="npz:..."`, its batch size `outliers_batch_size`, 256 in the recipe) that cycles
through its own epochs; the auxiliary set must not be one of the test OOD sets. The recipe:
fine-tune a trained classifier 10 epochs, lr 0.001 cosine, 128 ID + 256 outlier images, weight
0.5. Both batches get the same augmentation (random crop, pad 4, and flip) with their own keys.
The ID and outlier batches go through the network in ONE train-mode forward pass (as the
paper's code does: BatchNorm statistics of the concatenated batch).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from dlsr_jax import augment as augment_lib
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base, cross_entropy

STREAMS = ("outliers",)


def uniform_cross_entropy(logits: jax.Array) -> jax.Array:
  """Mean cross-entropy from softmax(logits) to the uniform distribution.

  Args:
    logits: [B, K].

  Returns:
    Scalar mean over the batch of logsumexp(logits) - mean_k(logits)
    (= -(1/K) sum_k log softmax(logits)_k).
  """
  logits = logits.astype(jnp.float32)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1))


def loss(logits_in: jax.Array, labels: jax.Array, logits_out: jax.Array,
         weight: float = 0.5) -> jax.Array:
  """The OE loss: CE(in) + weight * uniform_cross_entropy(outliers).

  Args:
    logits_in: [B, K] logits of the ID batch.
    labels: [B] int class indices.
    logits_out: [B_out, K] logits of the outlier batch.
    weight: lambda (0.5 in the paper).

  Returns:
    Scalar loss.
  """
  return cross_entropy.loss(logits_in, labels) + weight * uniform_cross_entropy(logits_out)


def make(net: Net, tx: optax.GradientTransformation, *, augment: Optional[bool] = None,
         ema_decay: Optional[float] = None, weight: float = 0.5) -> base.Objective:
  """The Outlier Exposure objective for `net`, starting from `net.params`.

  Args:
    net: the classifier to fine-tune (an image net: the outliers are images).
    tx: the optimizer (the recipe: `training.optim.sgd` with lr 0.001 cosine).
    augment: random crop (pad 4) + flip of both batches (default True).
    ema_decay: keep an EMA of the params; None = no EMA.
    weight: lambda, the weight of the outlier term (>= 0).

  Returns:
    The `Objective` reading streams "in" ({"x", "y"}) and "outliers" ({"x"}); metrics
    "loss", "ce", "outlier_loss", "accuracy", "grad_norm".
  """
  if net.resolution is None:
    raise ValueError(f"outlier_exposure needs an image classifier; {net.name!r} is a head on "
                     "features (its outliers would have to be features too)")
  if not weight >= 0:
    raise ValueError(f"outlier_exposure weight must be >= 0, got {weight}")
  augment = True if augment is None else augment

  def augment_both(key, batch):
    k_in, k_out = jax.random.split(key)
    return {**batch,
            "in": {**batch["in"], "x": augment_lib.random_crop_flip(k_in, batch["in"]["x"])},
            "outliers": {**batch["outliers"],
                         "x": augment_lib.random_crop_flip(k_out, batch["outliers"]["x"])}}

  def loss_fn(variables, batch, key):
    x_in, y, x_out = batch["in"]["x"], batch["in"]["y"], batch["outliers"]["x"]
    n = x_in.shape[0]
    x = jnp.concatenate([net.preprocess(x_in), net.preprocess(x_out)])
    logits, _, batch_stats = base.apply_train(net.module, variables, x, key)
    ce = cross_entropy.loss(logits[:n], y)
    out = uniform_cross_entropy(logits[n:])
    acc = jnp.mean((jnp.argmax(logits[:n], -1) == y).astype(jnp.float32))
    return ce + weight * out, ({"ce": ce, "outlier_loss": out, "accuracy": acc}, batch_stats)

  return base.supervised("outlier_exposure", loss_fn, tx, net.params, streams=STREAMS,
                         ema_decay=ema_decay, augment=augment_both if augment else None)
