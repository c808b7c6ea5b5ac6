"""Torch-layout state dicts -> Flax variables, and the native `.safetensors` format.

Key mapping (pure, no torch): a torch key `a.3.b.weight` names the Flax module
path `a_3/b` (list indices folded into the preceding name) and

  * `weight` -> `params/<path>/kernel` (conv OIHW -> HWIO, depthwise
    [C, 1, kh, kw] -> [kh, kw, 1, C], Linear [out, in] -> [in, out]) or
    `params/<path>/scale` (BatchNorm), whichever the module has;
  * `bias` -> `params/<path>/bias`;
  * `running_mean` / `running_var` -> `batch_stats/<path>/mean` / `var`;
  * `num_batches_tracked` is skipped.

The native format stores converted variables with flattened Flax paths
(`params/_blocks_0/_bn0/scale`) and metadata (`format`, `backbone`,
`weights_id`), readable with no torch code and no pickle.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NATIVE_FORMAT = "dlsr_jax.flax_variables"
NATIVE_FORMAT_VERSION = "1"
_SKIP_SUFFIXES = ("num_batches_tracked",)
_MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the module: lists missing/unexpected/mis-shaped keys.

  Attributes:
    missing: keys the module needs that the checkpoint lacks.
    unexpected: checkpoint keys the module has no place for.
    mismatched: (key, checkpoint shape, expected shape) triples.
  """

  def __init__(self, source: str, target: str, missing: Sequence[str] = (),
               unexpected: Sequence[str] = (),
               mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
               reason: str = ""):
    self.missing = tuple(missing)
    self.unexpected = tuple(unexpected)
    self.mismatched = tuple(mismatched)
    parts = [reason] if reason else []
    if self.missing:
      parts.append(f"{len(self.missing)} missing keys: {_listing(self.missing)}")
    if self.unexpected:
      parts.append(f"{len(self.unexpected)} unexpected keys: {_listing(self.unexpected)}")
    if self.mismatched:
      shown = [f"{k} (checkpoint {tuple(a)} vs expected {tuple(b)})"
               for k, a, b in self.mismatched]
      parts.append(f"{len(self.mismatched)} mis-shaped keys: {_listing(shown)}")
    if max(len(self.missing), len(self.unexpected), len(self.mismatched)) > _MAX_LISTED:
      parts.append("(full lists in the exception's .missing/.unexpected/.mismatched)")
    super().__init__(f"checkpoint {source} does not match {target}: " + "; ".join(parts))


def _listing(items: Sequence[str]) -> str:
  shown = ", ".join(items[:_MAX_LISTED])
  if len(items) > _MAX_LISTED:
    shown += f", ... and {len(items) - _MAX_LISTED} more"
  return "[" + shown + "]"


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What a conversion did besides the 1:1 mapping.

  Attributes:
    has_head: False if the classification head was missing or mis-shaped and
      was replaced by zeros (only with `allow_missing_head=True`).
    dropped_head_keys: head keys absent or mis-shaped in the checkpoint.
    skipped_keys: ignored bookkeeping keys (`num_batches_tracked`).
  """
  has_head: bool = True
  dropped_head_keys: tuple[str, ...] = ()
  skipped_keys: tuple[str, ...] = ()


def flatten_variables(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested Flax variables -> `{"params/a/b/kernel": leaf}`."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten_variables(v, key + "/"))
    else:
      out[key] = v
  return out


def unflatten_variables(flat: Mapping[str, Any]) -> dict[str, Any]:
  """`{"params/a/b/kernel": leaf}` -> nested dicts."""
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def expected_variables(module: nn.Module, resolution: int = 64) -> dict[str, Any]:
  """Shapes of `module`'s variables (with head), via `jax.eval_shape`; nothing is run.

  Returns:
    Nested `{"params": ..., "batch_stats": ...}` of `jax.ShapeDtypeStruct`.
  """
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  return jax.eval_shape(lambda inp: module.init(jax.random.PRNGKey(0), inp, with_head=True), x)


def torch_module_path(torch_key: str) -> tuple[str, str]:
  """`"layer1.0.downsample.0.weight"` -> (`"layer1_0/downsample_0"`, `"weight"`)."""
  *mods, param = torch_key.split(".")
  parts: list[str] = []
  for m in mods:
    if m.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{m}"
    else:
      parts.append(m)
  return "/".join(parts), param


def flax_to_torch_key(flax_path: str) -> str:
  """`"params/layer1_0/downsample_0/kernel"` -> `"layer1.0.downsample.0.weight"`."""
  collection, *mods, leaf = flax_path.split("/")
  if collection == "batch_stats":
    name = {"mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
  else:
    name = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  mods = [re.sub(r"_(\d+)$", r".\1", m) for m in mods]
  return ".".join(mods + [name])


def _to_flax_layout(arr: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel":
    if arr.ndim == 4:
      return np.transpose(arr, (2, 3, 1, 0))  # OIHW -> HWIO (depthwise: [C,1,k,k] -> [k,k,1,C])
    if arr.ndim == 2:
      return np.transpose(arr, (1, 0))  # Linear [out, in] -> [in, out]
  return arr


def _to_torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _natural_key(key: str) -> list[Any]:
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _is_head(flax_path: str, head_prefixes: Sequence[str]) -> bool:
  mods = flax_path.split("/")[1:-1]
  return bool(mods) and mods[0] in head_prefixes


def torch_to_flax(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, Any], *,
                  head_prefixes: Sequence[str] = (), allow_missing_head: bool = False,
                  source: str = "state dict", target: str = "model"
                  ) -> tuple[dict[str, Any], ConversionReport]:
  """Maps a torch-layout state dict onto Flax variables, validating every key.

  Args:
    state_dict: `{torch key: array}` (e.g. from `read_torch_checkpoint`).
    expected: the module's variable shapes (see `expected_variables`).
    head_prefixes: top-level module names of the classification head, e.g.
      ("_fc",) or ("fc",).
    allow_missing_head: if the head is missing or mis-shaped, fill it with zeros
      (and report `has_head=False`) instead of failing.
    source, target: names used in error messages.

  Returns:
    (variables, report): nested `{"params": ..., "batch_stats": ...}` float32
    numpy arrays, and a `ConversionReport`.

  Raises:
    CheckpointMismatchError: missing, unexpected or mis-shaped keys (all listed,
      in torch naming).
  """
  exp = {k: tuple(v.shape) for k, v in flatten_variables(expected).items()}
  flat: dict[str, np.ndarray] = {}
  unexpected, skipped = [], []
  mismatched: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}  # by flax path
  for key, arr in state_dict.items():
    path, param = torch_module_path(key)
    if param in _SKIP_SUFFIXES:
      skipped.append(key)
      continue
    cands = {"weight": [f"params/{path}/kernel", f"params/{path}/scale"],
             "bias": [f"params/{path}/bias"],
             "running_mean": [f"batch_stats/{path}/mean"],
             "running_var": [f"batch_stats/{path}/var"]}.get(param, [])
    target_path = next((c for c in cands if c in exp), None)
    if target_path is None:
      unexpected.append(key)
      continue
    leaf = target_path.rsplit("/", 1)[1]
    arr = np.asarray(arr)
    converted = _to_flax_layout(arr, leaf)
    if converted.shape != exp[target_path]:
      mismatched[target_path] = (key, tuple(arr.shape), _to_torch_shape(exp[target_path], leaf))
      continue
    flat[target_path] = converted.astype(np.float32)
  missing = [p for p in exp if p not in flat and p not in mismatched]
  dropped: list[str] = []
  if allow_missing_head:
    head_missing = [p for p in missing if _is_head(p, head_prefixes)]
    head_bad = [p for p in mismatched if _is_head(p, head_prefixes)]
    if head_missing or head_bad:
      for p in exp:
        if _is_head(p, head_prefixes):
          flat[p] = np.zeros(exp[p], np.float32)
      dropped = [flax_to_torch_key(p) for p in head_missing + head_bad]
      missing = [p for p in missing if p not in head_missing]
      for p in head_bad:
        del mismatched[p]
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(
        source, target, sorted((flax_to_torch_key(p) for p in missing), key=_natural_key),
        unexpected, list(mismatched.values()))
  report = ConversionReport(has_head=not dropped, dropped_head_keys=tuple(dropped),
                            skipped_keys=tuple(skipped))
  return unflatten_variables(flat), report


def check_flax_variables(flat: Mapping[str, np.ndarray], expected: Mapping[str, Any], *,
                         source: str = "variables", target: str = "model") -> dict[str, Any]:
  """Validates flattened Flax variables against the module and un-flattens them.

  Raises:
    CheckpointMismatchError: missing, unexpected or mis-shaped keys.
  """
  exp = {k: tuple(v.shape) for k, v in flatten_variables(expected).items()}
  missing = [k for k in exp if k not in flat]
  unexpected = [k for k in flat if k not in exp]
  mismatched = [(k, tuple(np.shape(v)), exp[k]) for k, v in flat.items()
                if k in exp and tuple(np.shape(v)) != exp[k]]
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(source, target, missing, unexpected, mismatched)
  return unflatten_variables({k: np.asarray(v, np.float32) for k, v in flat.items()})


def random_variables(expected: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
  """Deterministic random variables with the shapes of `expected`, made in numpy.

  Avoids compiling `module.init` (tens of seconds on CPU for EfficientNets).
  Kernels: LeCun-normal truncated at 2 sigma (std 1/sqrt(fan_in), fan_in =
  prod(shape[:-1]), as Flax's default); biases and BN shifts/means 0; BN scales
  and variances 1. Leaves are drawn in sorted-path order from PCG64(seed).

  Args:
    expected: the module's variable shapes (see `expected_variables`).
    seed: numpy seed.

  Returns:
    Nested float32 numpy variables.
  """
  rng = np.random.Generator(np.random.PCG64(seed))
  flat = {}
  for key, leaf in sorted(flatten_variables(expected).items()):
    shape = tuple(leaf.shape)
    name = key.rsplit("/", 1)[1]
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1])) or 1
      w = rng.standard_normal(shape)
      w = np.where(np.abs(w) > 2, rng.uniform(-2, 2, shape), w)
      flat[key] = (w / np.sqrt(fan_in)).astype(np.float32)
    elif name in ("scale", "var"):
      flat[key] = np.ones(shape, np.float32)
    else:
      flat[key] = np.zeros(shape, np.float32)
  return unflatten_variables(flat)


def is_native(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
  """Whether safetensors content is our native format (vs torch-layout keys)."""
  if metadata.get("format") == NATIVE_FORMAT:
    return True
  return bool(tensors) and all(k.startswith(("params/", "batch_stats/")) for k in tensors)


def save_native(path: str | os.PathLike, variables: Mapping[str, Any], *, backbone: str,
                weights_id: Optional[str] = None, has_head: bool = True,
                metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes Flax variables as `.safetensors` with flattened paths and metadata.

  Args:
    path: output file.
    variables: `{"params": ..., "batch_stats": ...}`.
    backbone: registry name stored as metadata and checked on load.
    weights_id: id to report when loading this file (e.g. the source .pth's
      hash), so that converting weights keeps feature-cache keys stable.
    has_head: False if the classification head is a zero placeholder.
    metadata: extra string metadata.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  flat = {k: np.ascontiguousarray(np.asarray(v, np.float32))
          for k, v in flatten_variables(variables).items()}
  meta = {"format": NATIVE_FORMAT, "format_version": NATIVE_FORMAT_VERSION,
          "backbone": backbone, "has_head": "true" if has_head else "false"}
  if weights_id:
    meta["weights_id"] = weights_id
  meta.update(dict(metadata or {}))
  save_file(flat, os.fspath(path), metadata=meta)
