"""Helpers of the detectors' optional `score_grid` hooks (used by `dlsr_jax.evaluation.tune`).

A detector module may define, next to `make`:

  GRID_SETTINGS = ("percentile",)          # the settings its hook scores in one call
  def score_grid(candidates, fit, arrays, *, net=None) -> np.ndarray [G, N]

`candidates` is a list of G complete settings dicts (every setting of `make` other than the
context arguments), which differ only in `GRID_SETTINGS`; the hook fits what each candidate
needs on `fit` (once per fit-dependent value, on the host) and scores the rows of `arrays` for
every candidate with ONE jitted kernel vmapped over the candidates' parameters, mapped over
fixed-size row chunks. Row g equals `make(**candidates[g])`'s fit-then-score on the same
arrays (to float32 rounding; tested in tests/tune_test.py).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from dlsr_jax.data import batching

__all__ = ["CHUNK", "column", "over_rows"]

CHUNK = 1024   # rows per jitted grid call (every call gets exactly this many)


def column(candidates: Sequence[Mapping[str, Any]], name: str) -> list:
  """The value of setting `name` in each candidate, in order."""
  return [c[name] for c in candidates]


def over_rows(kernel: Callable[..., Any], args: tuple, arrays: tuple[np.ndarray, ...],
              chunk: int = CHUNK) -> np.ndarray:
  """`kernel(*args, *row_chunks) -> [B, G]` over fixed-size row chunks; returns [G, N].

  Every call has exactly `chunk` rows (padding stripped), so the kernel compiles once per
  grid size and feature width, whatever the set's size.
  """
  args = tuple(jnp.asarray(a) for a in args)
  out = batching.map_padded(lambda *rows: kernel(*args, *rows), tuple(arrays), chunk,
                            full_batches=True)
  return np.ascontiguousarray(np.asarray(out).T)
