"""Shared helpers of the detectors that read the classifier's final dense layer `Net.head`.

`Net.head` is `(W [D, K], b [K])` with logits = pre_logits @ W + b (the spec's W is [K, D], the
transpose). These helpers read and check it, validate the arrays scored against it, check
settings, and hold the jitted energy kernel `LSE(v @ W + b)` that VRA and ViM share.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.data import batching
from dlsr_jax.detectors import _features

CHUNK = 4096   # rows per jitted scoring call (the last chunk is padded: one compile per shape)
NORM_FLOOR = 1e-12   # fDBD / NCI: a normaliser ||.|| of exactly 0 is taken as this (finite scores)


def read_head(net: Any, detector: str) -> tuple[np.ndarray, np.ndarray]:
  """The final dense layer of `net`, checked: (W [D, K] float32, b [K] float32).

  Args:
    net: any object with a `.head` property returning (W [D, K], b [K]).
    detector: the detector's name (for the messages).

  Raises:
    TypeError: `net` has no `.head`, or it is not a pair (W, b).
    ValueError: `net.head` raised it (no final dense layer; re-raised naming the detector),
      shapes that do not fit (W 2-D, b 1-D with K entries) or non-finite values.
  """
  try:
    head = net.head
  except AttributeError:
    raise TypeError(f"{detector}: net must have .head -> (W [D, K], b [K]), the final dense "
                    f"layer with logits = pre_logits @ W + b; {type(net).__name__} has no .head"
                    ) from None
  except ValueError as e:   # Net.head: a net that names no final dense layer
    raise ValueError(f"{detector}: {e}") from e
  if not isinstance(head, (tuple, list)) or len(head) != 2:
    raise TypeError(f"{detector}: net.head must be a pair (W [D, K], b [K]), got "
                    f"{type(head).__name__}")
  w = _features.as_features(head[0], f"{detector}: net.head's W [D, K]", dtype=np.float32)
  b = np.asarray(head[1], np.float32)
  if b.shape != (w.shape[1],):
    raise ValueError(f"{detector}: net.head's b must have shape [K] = ({w.shape[1]},) to match "
                     f"W {w.shape}, got {b.shape}")
  if not np.all(np.isfinite(b)):
    raise ValueError(f"{detector}: net.head's b contains non-finite values")
  return w, b


def rows(a: ArrayLike, name: str, detector: str, cols: int, what: str,
         dtype=np.float32) -> np.ndarray:
  """A finite [N, cols] array of `dtype`, or ValueError naming `name` and `what` fixes cols."""
  x = _features.as_features(a, f"{detector}: {name}", dtype=dtype)
  if x.shape[1] != cols:
    raise ValueError(f"{detector}: {name} has {x.shape[1]} columns, but {what} needs {cols}")
  return x


def number(detector: str, name: str, value: Any, low: float, high: float = np.inf) -> float:
  """`value` as a float in [low, high], or ValueError naming the setting."""
  ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
        and np.isfinite(value) and low <= value <= high)
  if not ok:
    bounds = f">= {low}" if high == np.inf else f"in [{low}, {high}]"
    raise ValueError(f"{detector}: {name} must be a finite number {bounds}, got {value!r}")
  return float(value)


def map_rows(kernel: Callable[..., jax.Array], args: tuple, arrays: tuple[np.ndarray, ...]
             ) -> np.ndarray:
  """`kernel(*args, *chunks)` over fixed-size row chunks of `arrays`; [N] float32 numpy."""
  args = tuple(jnp.asarray(a) for a in args)   # on the device once, traced arguments
  out = batching.map_padded(lambda *chunk: kernel(*args, *chunk), arrays, CHUNK)
  return np.asarray(out, np.float32)


@jax.jit
def energy(w: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
  """[B] float32 LSE(v @ W + b) of features v [B, D] (full-precision matmul)."""
  return jax.nn.logsumexp(jnp.matmul(v, w, precision=_features.HIGHEST) + b, axis=-1)
