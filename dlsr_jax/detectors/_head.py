"""Shared helpers of the detectors that read the classifier's final dense layer (`Net.head`).

These detectors (GradNorm, ReAct, ASH, SCALE, DICE; SPEC-posthoc sections 2.7 and 3.1-3.4)
take the classifier `net` as a context argument and read only `net.head = (W [D, K], b [K])`,
with logits = pre_logits @ W + b. Their jitted kernels take W and b as arguments (never
closed-over constants) and are mapped over fixed-size row chunks, so every call has the same
shape (one compile for any set size) and a row's score never depends on the other rows.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.data import batching
from dlsr_jax.detectors import _features

__all__ = ["CHUNK", "check_percentile", "energy", "features", "kept_count", "read_head",
           "rowwise"]

CHUNK = 1024   # rows per jitted call (every call gets exactly this many; padding is stripped)


def read_head(net: Any, detector: str) -> tuple[np.ndarray, np.ndarray]:
  """The final dense layer of `net`, validated.

  Args:
    net: any object with `.head -> (W [D, K], b [K])` (the classifier `Net`).
    detector: the detector's name (for messages).

  Returns:
    (W [D, K] float32, b [K] float32) numpy copies.

  Raises:
    TypeError: `net` has no `.head`, or it is not a pair.
    ValueError: W, b of the wrong shapes, empty or not finite.
  """
  try:
    head = net.head
  except AttributeError:
    raise TypeError(f"{detector}: net must have .head -> (W [D, K], b [K]), the classifier's "
                    f"final dense layer (logits = pre_logits @ W + b); "
                    f"{type(net).__name__} has no .head") from None
  if not isinstance(head, (tuple, list)) or len(head) != 2:
    raise TypeError(f"{detector}: net.head must be a pair (W [D, K], b [K]), got "
                    f"{type(head).__name__}")
  try:
    w, b = (np.array(a, dtype=np.float32) for a in head)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{detector}: net.head must hold numeric arrays (W [D, K], b [K]): "
                     f"{e}") from e
  if w.ndim != 2 or b.ndim != 1 or w.shape[1] != b.shape[0] or 0 in w.shape:
    raise ValueError(f"{detector}: net.head must be (W [D, K], b [K]) with D, K >= 1 "
                     f"(logits = pre_logits @ W + b), got W {w.shape} and b {b.shape}")
  if not (np.isfinite(w).all() and np.isfinite(b).all()):
    raise ValueError(f"{detector}: net.head has non-finite weights or biases")
  return w, b


def check_percentile(value: Any, detector: str, name: str = "percentile") -> float:
  """`value` as a float in the open interval (0, 100), or ValueError naming the setting."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
      or not 0.0 < float(value) < 100.0:
    raise ValueError(f"{detector}: {name} must be a number in (0, 100), got {value!r}")
  return float(value)


def kept_count(dim: int, percentile: float, detector: str) -> int:
  """OpenOOD's top-k count k = D - round(D * percentile / 100) (round half to even), >= 1.

  Raises:
    ValueError: the percentile keeps no entry of a D-dimensional feature (k = 0).
  """
  k = dim - int(np.round(dim * percentile / 100.0))
  if k < 1:
    raise ValueError(f"{detector}: percentile={percentile!r} keeps no entry of the D={dim} "
                     f"pre-logits (k = D - round(D * percentile / 100) = {k}); use a lower "
                     f"percentile")
  return k


def features(z: ArrayLike, dim: int | None, detector: str,
             name: str = "pre_logits") -> np.ndarray:
  """A finite float32 [N, D] array whose D matches the head's W [D, K] (if dim), or ValueError."""
  x = _features.as_features(z, f"{detector}: {name}", dtype=np.float32)
  if dim is not None and x.shape[1] != dim:
    raise ValueError(f"{detector}: {name} has {x.shape[1]} features but the head's W is "
                     f"[{dim}, K] (D = {dim})")
  return x


def energy(w: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
  """Minus the energy confidence, -LSE(v @ W + b) (not jitted; used inside kernels).

  Args:
    w: [D, K] weights.
    b: [K] biases.
    v: [B, D] (modified) features.

  Returns:
    [B] float32 scores; higher = more OOD.
  """
  logits = jnp.matmul(v, w, precision=_features.HIGHEST) + b
  return -jax.nn.logsumexp(logits, axis=-1)


def rowwise(kernel: Callable[..., jax.Array], args: tuple, z: np.ndarray) -> np.ndarray:
  """Applies the jitted `kernel(*args, z_chunk [CHUNK, D]) -> [CHUNK]` over the rows of z.

  Every call has exactly CHUNK rows (the last chunk, or a smaller set, is padded by repeating
  its final row), so the kernel compiles once per D and each row's score is the same whatever
  the set's size or the row's neighbours.
  """
  out = batching.map_padded(lambda chunk: kernel(*args, chunk), z, CHUNK, full_batches=True)
  return np.asarray(out)
