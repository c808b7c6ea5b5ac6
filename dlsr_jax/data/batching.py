"""Host-side batching: `map_padded` (the one pad-the-last-batch loop) and index batches.

`map_padded` maps a batched function over row-aligned arrays.

Every call sees the same batch shape (the last batch is padded by repeating its final row), so a
jitted `fn` compiles once per set of input shapes, and the padding is stripped from the outputs.
The batch is `min(batch_size, N)` rows, so a set smaller than one batch is never padded up
(unless `full_batches`: then every call has `batch_size` rows, one compile for any N).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence, Tuple, Union

import jax
import numpy as np

from dlsr_jax.data._checks import check_pos_int

__all__ = ["map_padded", "iterate_eval_batches", "pad_batch", "train_batch_indices"]

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


def map_padded(fn: Callable[..., PyTree], arrays: Arrays, batch_size: int, *,
               full_batches: bool = False, progress: bool = False,
               desc: str = "batches") -> PyTree:
  """Applies `fn` batch by batch over the rows of `arrays` and concatenates the outputs.

  Args:
    fn: maps one batch to a pytree of arrays, each [B, ...] (row i of an output belongs to
      row i of the batch). Called as `fn(batch_dict)` for a mapping, `fn(*batch)` for a
      tuple/list and `fn(batch)` for a single array.
    arrays: a mapping or a tuple/list of arrays [N, ...] with the same N, or one array.
    batch_size: rows per call (positive int); every call gets exactly min(batch_size, N) rows.
    full_batches: every call gets exactly `batch_size` rows, even when N < batch_size (a set
      smaller than one batch is padded up), so sets of any size share one compile.
    progress: show a tqdm bar; each batch's output is then fetched to the host as it is
      computed, so the bar counts finished batches (not dispatched ones).
    desc: the bar's label.

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
  b = int(batch_size) if full_batches else min(int(batch_size), n)
  starts = range(0, n, b)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    starts = tqdm(starts, desc=desc, unit="batch", total=-(-n // b))
  outs = []
  for start in starts:
    out = call([_pad(a[start:start + b], b) for a in values])
    outs.append(jax.device_get(out) if progress else out)
  # Without a bar, one device -> host transfer at the end keeps the loop free of per-batch syncs.
  outs = jax.device_get(outs)
  last = n - (len(outs) - 1) * b
  return jax.tree.map(lambda *leaves: np.concatenate(leaves[:-1] + (leaves[-1][:last],)),
                      *outs)


def iterate_eval_batches(n: int, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Fixed-size batches covering 0..n-1 once, in order, without dropping any.

  The last batch is padded by repeating its last valid index with mask False.

  Args:
    n: number of examples (0 yields nothing).
    batch_size: examples per batch.

  Yields:
    (indices [batch_size] int64, mask [batch_size] bool) with mask True for
    real examples.
  """
  check_pos_int(n, "n", allow_zero=True)
  check_pos_int(batch_size, "batch_size")
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n), dtype=np.int64)
    mask = np.zeros((batch_size,), bool)
    mask[:idx.size] = True
    idx = np.concatenate([idx, np.full((batch_size - idx.size,), idx[-1], np.int64)])
    yield idx, mask


def pad_batch(arrays: Any, batch_size: int) -> Tuple[Any, np.ndarray]:
  """Pads a (pytree of) arrays along axis 0 to batch_size by repeating the last row.

  Args:
    arrays: an array or a pytree (dict/list/tuple) of arrays, all with the same
      leading size m, 1 <= m <= batch_size.
    batch_size: target leading size.

  Returns:
    (padded, mask): the same structure with leading size batch_size, and a
    [batch_size] bool mask, True for the m real rows.
  """
  check_pos_int(batch_size, "batch_size")
  leaves = jax.tree_util.tree_leaves(arrays)
  if not leaves:
    raise ValueError("pad_batch got no arrays")
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError("pad_batch: all arrays need the same leading size, got "
                     f"{sorted(map(str, sizes))}")
  m = sizes.pop()
  if not 1 <= m <= batch_size:
    raise ValueError(f"pad_batch: leading size {m} must be in [1, batch_size={batch_size}]")

  def pad(x):
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[-1:], batch_size - m, axis=0)])

  mask = np.arange(batch_size) < m
  return jax.tree_util.tree_map(pad, arrays), mask


def train_batch_indices(n: int, batch_size: int, epoch: int, seed: int,
                        process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Shuffled training batches of one epoch, this process's part of each.

  The permutation is ``np.random.default_rng([seed, epoch]).permutation(n)``
  (deterministic per (seed, epoch), identical on every process); the last
  ``n % batch_size`` examples of it are dropped.  Global batch ``s`` is
  ``perm[s * batch_size:(s + 1) * batch_size]`` and process ``p`` gets its
  columns ``[p * local, (p + 1) * local)`` with ``local = batch_size //
  process_count``, so the processes' slices are disjoint and together form
  the global batch.

  Args:
    n: dataset size.
    batch_size: GLOBAL batch size (divisible by process_count).
    epoch: epoch number (>= 0).
    seed: shuffle seed (>= 0).
    process_index: this process, in [0, process_count).
    process_count: number of processes.

  Returns:
    [steps, batch_size // process_count] int64 indices, steps = n // batch_size.
  """
  for value, name in ((n, "n"), (batch_size, "batch_size"), (process_count, "process_count")):
    check_pos_int(value, name)
  for value, name in ((epoch, "epoch"), (seed, "seed"), (process_index, "process_index")):
    check_pos_int(value, name, allow_zero=True)
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by "
                     f"process_count {process_count}")
  if process_index >= process_count:
    raise ValueError(f"process_index {process_index} must be < process_count {process_count}")
  steps = n // batch_size
  if steps == 0:
    raise ValueError(f"dataset of {n} examples is smaller than one global batch "
                     f"({batch_size}); lower the batch size")
  perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
  local = batch_size // process_count
  batches = perm[:steps * batch_size].reshape(steps, batch_size)
  return batches[:, process_index * local:(process_index + 1) * local].astype(np.int64)
