"""NNGuide, nearest-neighbour guidance (Park, Jung & Teoh, ICCV 2023), OpenOOD's form.

Fit: the bank is the first `bank` fit samples, in order: G_j = normalize(z_j) * LSE(l_j), each
unit feature scaled by its own energy confidence. Score: with q = normalize(z) and s_K the mean
of the K largest inner products <q, G_j>, conf = s_K * LSE(l) and score = -conf; higher = more
OOD. `normalize(z) = z / ||z|| + 1e-10` (the 1e-10 added to every entry after the division, as
OpenOOD's helper does; a zero row gives 1e-10 everywhere instead of 0/0).

OpenOOD's bank is the first whole loader batches (of 200) past 1 % of the training set: 600 of
CIFAR-10's 50 000. `bank=None` takes that size, 200 * (int(0.01 N) // 200 + 1) capped at N.
Scoring is jitted, float32 with full-precision matmuls, in fixed-size chunks of query rows
(memory ~ chunk_size * bank floats).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from dlsr_jax.data import batching
from dlsr_jax.detectors import _features, base

__all__ = ["NNGuideModel", "NORMALIZE_EPS", "fit_nnguide", "make", "nnguide_score",
           "openood_bank_size"]

NORMALIZE_EPS = 1e-10


@flax.struct.dataclass
class NNGuideModel:
  """The guided bank (a frozen pytree).

  Attributes:
    bank: [B, D] float32 rows normalize(z_j) * LSE(l_j).
    k: how many nearest bank rows are averaged (static; 1 <= k <= B).
  """
  bank: jax.Array
  k: int = flax.struct.field(pytree_node=False, default=100)


def openood_bank_size(n: int, alpha: float = 0.01, batch: int = 200) -> int:
  """OpenOOD's bank: whole batches until more than int(alpha n) rows, at most n."""
  return min(int(n), batch * (int(n * alpha) // batch + 1))


def _normalize(z: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(z, axis=-1, keepdims=True)
  return np.divide(z, norm, out=np.zeros_like(z), where=norm > 0) + NORMALIZE_EPS


def _lse(l: np.ndarray) -> np.ndarray:
  top = l.max(axis=1)
  return top + np.log(np.sum(np.exp(l - top[:, None]), axis=1))


def fit_nnguide(z_train: ArrayLike, logits: ArrayLike, k: int = 100,
                bank: int | None = None) -> NNGuideModel:
  """Builds the bank from the first `bank` fit rows.

  Args:
    z_train: [N, D] pooled fit features (finite), in the fit set's order.
    logits: [N, K] their logits.
    k: the number of nearest bank rows averaged, 1 <= k <= bank.
    bank: how many of the first fit rows form the bank, k <= bank <= N; None: OpenOOD's size
      (`openood_bank_size(N)`).

  Returns:
    An `NNGuideModel`.

  Raises:
    ValueError: bad arrays, a bank larger than the fit set, or a bank smaller than k.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"nnguide: k must be a positive int, got {k!r}")
  z_all, l_all = np.asarray(z_train), np.asarray(logits)
  n = z_all.shape[0] if z_all.ndim else 0
  if z_all.ndim != 2 or l_all.ndim != 2 or l_all.shape[0] != n:
    raise ValueError(f"nnguide: pre_logits [N, D] and logits [N, K] must be row-aligned 2-D "
                     f"arrays, got shapes {z_all.shape} and {l_all.shape}")
  size = openood_bank_size(n) if bank is None else int(bank)
  if size > n:
    raise ValueError(f"nnguide: bank = {size} exceeds the {n} fit samples")
  if size < k:
    how = f"OpenOOD's bank size for N = {n} is {size}" if bank is None else f"bank = {size}"
    raise ValueError(f"nnguide: {how} < k = {k}: the k nearest bank rows do not exist; lower k "
                     "or pass a larger bank")
  z = _features.as_features(z_all[:size], "nnguide: pre_logits")   # only the bank's rows
  l = _features.as_features(l_all[:size], "nnguide: logits")
  rows = _normalize(z) * _lse(l)[:, None]
  return NNGuideModel(bank=jnp.asarray(rows, jnp.float32), k=int(k))


@functools.partial(jax.jit, static_argnames=("k",))
def _nnguide_chunk(bank: jax.Array, logits: jax.Array, z: jax.Array, *, k: int) -> jax.Array:
  norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
  q = jnp.where(norm > 0, z / jnp.where(norm > 0, norm, 1.0), 0.0) + NORMALIZE_EPS
  sims = jnp.matmul(q, bank.T, precision=_features.HIGHEST)        # [B, bank]
  top, _ = jax.lax.top_k(sims, k)
  return -jnp.mean(top, axis=-1) * jax.nn.logsumexp(logits, axis=-1)


def nnguide_score(model: NNGuideModel, logits: ArrayLike, z: ArrayLike,
                  chunk_size: int = 512) -> np.ndarray:
  """Minus the guided confidence s_K(z) * LSE(l).

  Args:
    model: from `fit_nnguide`.
    logits: [M, K] logits.
    z: [M, D] pooled features.
    chunk_size: query rows per jitted call.

  Returns:
    [M] float32 numpy scores; higher = more OOD.
  """
  if not isinstance(model, NNGuideModel):
    raise TypeError(f"model must be an NNGuideModel, got {type(model).__name__}")
  l = _features.as_features(logits, "logits", dtype=np.float32)
  x = _features.as_features(z, "pre_logits", dim=model.bank.shape[1], dtype=np.float32)
  _features.check_chunk_size(chunk_size)
  fn = functools.partial(_nnguide_chunk, model.bank, k=model.k)
  return np.asarray(batching.map_padded(fn, (l, x), chunk_size), np.float32)


def make(k: int = 100, bank: int | None = None, chunk_size: int = 512) -> base.Detector:
  """NNGuide on the logits and the pooled features ("pre_logits").

  Args:
    k: the number of nearest bank rows averaged (OpenOOD: 100).
    bank: how many of the first fit samples form the bank (>= k); None: OpenOOD's size (600
      for a 50 000-image training set; the reference uses 600 of 5170).
    chunk_size: query rows per jitted call.

  Returns:
    A `Detector` reading ("logits", "pre_logits") with score {"nnguide": [N] float32}.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"nnguide: k must be a positive int, got {k!r}")
  if bank is not None:
    if isinstance(bank, bool) or not isinstance(bank, (int, np.integer)) or bank < 1:
      raise ValueError(f"nnguide: bank must be a positive int (how many fit samples) or None, "
                       f"got {bank!r}")
    if bank < k:
      raise ValueError(f"nnguide: bank = {bank} < k = {k}; the bank must hold at least k rows")
  _features.check_chunk_size(chunk_size)

  def fit(arrays: base.SetArrays, key: jax.Array) -> NNGuideModel:
    del key   # deterministic
    return fit_nnguide(arrays["pre_logits"], arrays["logits"], k, bank)

  def score(state: NNGuideModel, arrays: base.SetArrays,
            key: jax.Array) -> dict[str, np.ndarray]:
    del key
    return {"nnguide": nnguide_score(state, arrays["logits"], arrays["pre_logits"], chunk_size)}

  return base.Detector(name="nnguide", reads=("logits", "pre_logits"), fit=fit, score=score)
