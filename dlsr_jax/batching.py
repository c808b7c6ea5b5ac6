"""The one pad-the-last-batch loop: map a batched function over row-aligned arrays.

Every call sees the same batch shape (the last batch is padded by repeating its final row), so a
jitted `fn` compiles once per set of input shapes, and the padding is stripped from the outputs.
The batch is `min(batch_size, N)` rows, so a set smaller than one batch is never padded up.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, Union

import jax
import numpy as np

__all__ = ["map_padded"]

Arrays = Union[Mapping[str, np.ndarray], Sequence[np.ndarray], np.ndarray]
PyTree = Any


def _num_rows(arrays: list[np.ndarray], names: list[str]) -> int:
  """The common leading dimension of `arrays`, or ValueError naming the misfits."""
  if not arrays:
    raise ValueError("map_padded needs at least one array")
  for name, a in zip(names, arrays):
    if a.ndim == 0:
      raise ValueError(f"array {name} is a scalar; map_padded needs arrays [N, ...]")
  rows = {name: a.shape[0] for name, a in zip(names, arrays)}
  if len(set(rows.values())) != 1:
    raise ValueError(f"arrays are not row-aligned: leading dimensions {rows}")
  n = arrays[0].shape[0]
  if n == 0:
    raise ValueError("map_padded got arrays with no rows")
  return n


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
  """Pads `a` [n, ...] to [rows, ...] by repeating its last row."""
  if a.shape[0] == rows:
    return a
  return np.concatenate([a, np.repeat(a[-1:], rows - a.shape[0], axis=0)])


def map_padded(fn: Callable[..., PyTree], arrays: Arrays, batch_size: int) -> PyTree:
  """Applies `fn` batch by batch over the rows of `arrays` and concatenates the outputs.

  Args:
    fn: maps one batch to a pytree of arrays, each [B, ...] (row i of an output belongs to
      row i of the batch). Called as `fn(batch_dict)` for a mapping, `fn(*batch)` for a
      tuple/list and `fn(batch)` for a single array.
    arrays: a mapping or a tuple/list of arrays [N, ...] with the same N, or one array.
    batch_size: rows per call (positive int); every call gets exactly min(batch_size, N) rows.

  Returns:
    `fn`'s output pytree with numpy leaves [N, ...]: the batch outputs concatenated, padding
    stripped.

  Raises:
    ValueError: bad batch_size, no arrays, no rows, or arrays that are not row-aligned.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if isinstance(arrays, Mapping):
    names = list(arrays)
    values = [np.asarray(arrays[k]) for k in names]
    call = lambda batch: fn(dict(zip(names, batch)))
  elif isinstance(arrays, (tuple, list)):
    values = [np.asarray(a) for a in arrays]
    names = [f"#{i}" for i in range(len(values))]
    call = lambda batch: fn(*batch)
  else:
    values, names = [np.asarray(arrays)], ["#0"]
    call = lambda batch: fn(batch[0])
  n = _num_rows(values, names)
  b = min(int(batch_size), n)
  outs = []
  for start in range(0, n, b):
    outs.append(call([_pad(a[start:start + b], b) for a in values]))
  # One device -> host transfer at the end keeps the loop free of per-batch syncs.
  outs = jax.device_get(outs)
  last = n - (len(outs) - 1) * b
  return jax.tree.map(lambda *leaves: np.concatenate(leaves[:-1] + (leaves[-1][:last],)),
                      *outs)
