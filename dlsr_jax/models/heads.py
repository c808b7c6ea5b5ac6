"""Classifier heads on cached features [N, C] (the frozen-backbone setting).

Both follow the classifier contract `__call__(x, train) -> (logits, out)` with
out["pre_logits"]: the input features for the linear head, the hidden
activations for the MLP head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _check_features(x: jax.Array) -> None:
  if x.ndim != 2:
    raise ValueError(f"expected features of shape [N, C], got {x.shape}")


class LinearHead(nn.Module):
  """Logits = x W + b (`fc`).

  Attributes:
    num_classes: outputs.
    dtype: compute dtype.
  """
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """[N, C] features -> (logits [N, num_classes], {"pre_logits": [N, C]})."""
    del train  # no train-time behaviour
    _check_features(x)
    x = x.astype(self.dtype)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      name="fc")(x)
    return logits, {"pre_logits": x}


class MLPHead(nn.Module):
  """Dense(hidden) `fc1` - ReLU - (dropout) - Dense(num_classes) `fc2`.

  Attributes:
    num_classes: outputs.
    hidden: hidden width.
    dropout: dropout rate on the hidden layer (needs a "dropout" rng when
      training).
    dtype: compute dtype.
  """
  num_classes: int = 10
  hidden: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """[N, C] features -> (logits [N, num_classes], {"pre_logits": [N, hidden]})."""
    _check_features(x)
    h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                         name="fc1")(x.astype(self.dtype)))
    out = {"pre_logits": h}
    if self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      name="fc2")(h)
    return logits, out
