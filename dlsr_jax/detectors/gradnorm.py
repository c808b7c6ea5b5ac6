"""GradNorm (Huang, Geng & Li, NeurIPS 2021), OpenOOD v1.5's form, in closed form.

SPEC-posthoc section 2.7. OpenOOD's per-sample loss is -sum_c log softmax(l)_c (all-ones
targets, summed over the K classes) with l = z @ W + b, and its confidence is the L1 norm of
the loss's gradient with respect to the WEIGHTS W only. Since dLoss/dl_k = K p_k - 1 and
dLoss/dW_dk = z_d (K p_k - 1), the norm factorises:
  conf = (sum_k |K p_k - 1|) * (sum_d |z_d|),  score = -conf  (higher = more OOD);
no autodiff is needed. The logits are recomputed from the pre-logits and `net.head` (jitted,
float32); the softmax factor and the product are taken in float64 on the host, because in
float32 sum_k |K p_k - 1| rounds to exactly 2 (K - 1) once the top logit leads the others by
more than about 17, which would make confident inputs tie on it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from dlsr_jax.detectors import _features, _head, base

__all__ = ["gradnorm_score", "head_logits", "make"]


@jax.jit
def head_logits(w: jax.Array, b: jax.Array, z: jax.Array) -> jax.Array:
  """[B, D] pre-logits -> [B, K] float32 logits z @ W + b (full-precision matmul)."""
  return jnp.matmul(z, w, precision=_features.HIGHEST) + b


def gradnorm_score(logits: ArrayLike, z: ArrayLike) -> np.ndarray:
  """Minus the closed-form L1 norm of OpenOOD's GradNorm weight gradient, in float64.

  Args:
    logits: [N, K] logits z @ W + b, K >= 2.
    z: [N, D] the pre-logits they come from.

  Returns:
    [N] float64 scores -(sum_k |K p_k - 1|) * (sum_d |z_d|); higher = more OOD.
  """
  logits = np.asarray(logits, np.float64)
  p = special.softmax(logits, axis=-1)
  spread = np.sum(np.abs(logits.shape[-1] * p - 1.0), axis=-1)
  return -spread * np.sum(np.abs(np.asarray(z, np.float64)), axis=-1)


def make(net: Any) -> base.Detector:
  """GradNorm on the classifier's pre-logits and final layer (no settings, nothing to fit).

  Args:
    net: the classifier; only `net.head -> (W [D, K], b [K])` is read (K >= 2).

  Returns:
    A `Detector` reading ("pre_logits",) with score {"gradnorm": [N] float64}.
  """
  w, b = _head.read_head(net, "gradnorm")
  if w.shape[1] < 2:
    raise ValueError(f"gradnorm: needs a head with K >= 2 classes (K = 1 gives a zero "
                     f"gradient for every input), got W {w.shape}")
  dim, args = w.shape[0], (jnp.asarray(w), jnp.asarray(b))

  def fit(arrays: base.SetArrays, key: jax.Array) -> None:
    del arrays, key   # nothing to fit
    return None

  def score(state: None, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    del state, key
    z = _head.features(arrays["pre_logits"], dim, "gradnorm")
    return {"gradnorm": gradnorm_score(_head.rowwise(head_logits, args, z), z)}

  return base.Detector(name="gradnorm", reads=("pre_logits",), fit=fit, score=score,
                       fit_reads=())
