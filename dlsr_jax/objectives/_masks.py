"""Weight masks of conv / dense kernels: random drops, exact top-k masks, straight-through.

The mask arithmetic of Unleashing Mask (`objectives.unleashing_mask`): which params leaves are
layer weights (`is_kernel`), a random mask dropping an exact count per kernel (the copy that
estimates b), and the exact top-k masks of UMAP's scores with their straight-through gradient.
Counts are round(fraction * n) per kernel (Python's round, half to even).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PyTree = Any


def is_kernel(path: tuple, leaf: Any) -> bool:
  """Whether a params leaf is a layer weight: named "kernel", ndim >= 2.

  Args:
    path: the leaf's key path (from `jax.tree_util.tree_flatten_with_path`) or a tuple of
      names (from `flax.traverse_util.flatten_dict`).
    leaf: the array.

  Returns:
    True for conv / dense kernels; False for biases, BatchNorm scales / shifts, etc.
  """
  last = path[-1] if path else None
  name = getattr(last, "key", last)
  return name == "kernel" and np.ndim(leaf) >= 2


def kernel_leaves(params: PyTree) -> PyTree:
  """A pytree of bools like `params`: True at every layer kernel (`is_kernel`)."""
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def kernels_of(params: PyTree) -> dict:
  """The sub-tree of the kernel leaves of a Flax "params" collection (nested dicts).

  Args:
    params: the "params" collection.

  Returns:
    Nested dicts with only the kernel leaves, e.g. {"conv": {"kernel": ...}}.
  """
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if is_kernel(k, v)})


def with_kernels(params: PyTree, kernels: PyTree) -> dict:
  """`params` with its kernel leaves replaced by those of `kernels` (same paths)."""
  flat = traverse_util.flatten_dict(params)
  new = traverse_util.flatten_dict(kernels)
  missing = sorted("/".join(map(str, k)) for k in new if k not in flat)
  if missing:
    raise ValueError(f"kernels {missing} are not in the params")
  return traverse_util.unflatten_dict({**flat, **new})


def _count(fraction: float, n: int) -> int:
  return int(round(fraction * n))


def random_mask(key: jax.Array, params: PyTree, drop: float = 0.035) -> PyTree:
  """A random binary mask dropping exactly round(drop * n) entries of each layer kernel.

  Args:
    key: PRNG key; leaf i (in flattening order) uses `fold_in(key, i)`.
    params: a Flax "params" collection.
    drop: fraction of every kernel's n entries to drop, in [0, 1].

  Returns:
    A pytree of bool arrays like `params` (False = dropped): a uniformly random subset of
    each kernel is dropped; every other leaf is all True.
  """
  if not 0.0 <= drop <= 1.0:
    raise ValueError(f"drop must be in [0, 1], got {drop}")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  masks = []
  for i, (path, leaf) in enumerate(leaves):
    shape = np.shape(leaf)
    if not is_kernel(path, leaf):
      masks.append(jnp.ones(shape, bool))
      continue
    n = math.prod(shape)
    dropped = jax.random.permutation(jax.random.fold_in(key, i), n)[:_count(drop, n)]
    masks.append(jnp.ones((n,), bool).at[dropped].set(False).reshape(shape))
  return jax.tree_util.tree_unflatten(treedef, masks)


def masked_copy(params: PyTree, mask: PyTree) -> PyTree:
  """`params` with every kernel's masked-out entries set to 0; other leaves unchanged.

  Args:
    params: a Flax "params" collection.
    mask: a pytree of bool (or 0/1) arrays like `params` (e.g. `random_mask`'s).

  Returns:
    The masked params (non-kernel leaves are returned as they are).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, p, m: jnp.where(m, p, jnp.zeros((), p.dtype)) if is_kernel(path, p) else p,
      params, mask)


def topk_mask(scores: PyTree, keep: float) -> PyTree:
  """Hard masks keeping exactly the top round(keep * n) entries of each leaf by |score|.

  Args:
    scores: a pytree of score arrays (e.g. the kernel sub-tree, `kernels_of`).
    keep: fraction kept, in (0, 1].

  Returns:
    A pytree like `scores` of 0/1 arrays of the scores' dtype. Ties are broken by a stable
    sort (the later index wins), so the count is exact.
  """

  def one(s):
    n = s.size
    order = jnp.argsort(jnp.abs(s).ravel(), stable=True)   # ascending |score|
    kept = order[n - _count(keep, n):]
    return jnp.zeros((n,), s.dtype).at[kept].set(1).reshape(s.shape)

  return jax.tree.map(one, scores)


def pruned_kernels(weights: PyTree, scores: PyTree, keep: float) -> dict:
  """The effective kernels w * mask of UMAP, with the straight-through gradient.

  Args:
    weights: the frozen "params" collection.
    scores: the kernel sub-tree of scores (`kernels_of`-shaped).
    keep: fraction of each kernel kept.

  Returns:
    The kernel sub-tree of w * mask. The value uses the hard mask (`topk_mask`); the
    gradient with respect to the scores is d loss / d mask * sign(score), i.e. the mask's
    gradient reaches |score| unchanged (edge-popup).
  """
  hard = topk_mask(jax.lax.stop_gradient(scores), keep)
  w = kernels_of(weights)

  def one(wk, h, s):
    a = jnp.abs(s)
    return wk * (h + (a - jax.lax.stop_gradient(a)))   # value: exactly wk * h

  return jax.tree.map(one, w, hard, scores)
