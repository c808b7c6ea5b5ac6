"""Max logit (Hendrycks et al., ICML 2022): score = -max_k logits_k.

The README's worked example of adding a detector: this file plus one config line,
`c.detectors.ce_maxlogit = dict(type="maxlogit", net="ce")`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.detectors import base

__all__ = ["make", "max_logit_score"]


@jax.jit
def max_logit_score(logits: jax.Array) -> jax.Array:
  """[N, K] logits -> [N] float32 minus the largest logit (higher = more OOD)."""
  return -jnp.max(logits.astype(jnp.float32), axis=-1)


def make() -> base.Detector:
  """Max logit on the classifier's logits (no settings, nothing to fit)."""
  fit = lambda arrays, key: None
  score = lambda state, arrays, key: {"maxlogit": np.asarray(max_logit_score(arrays["logits"]))}
  return base.Detector(name="maxlogit", reads=("logits",), fit=fit, score=score,
                       fit_reads=())
