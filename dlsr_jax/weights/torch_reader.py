"""Read PyTorch checkpoints into numpy without importing torch or running pickled code.

Supported containers:
  * the zip format of `torch.save` (PyTorch >= 1.6): `<prefix>/data.pkl` plus one
    raw little/big-endian file per storage under `<prefix>/data/<key>`;
  * the legacy format (`_use_new_zipfile_serialization=False`, and every
    checkpoint written by PyTorch < 1.6): three small pickles (magic number,
    protocol version, sys_info), the object pickle, a pickled list of storage
    keys, then for each key an int64 element count followed by the raw bytes;
  * `.safetensors` files (via `safetensors.numpy`).

Pickles are read with `torch_pickle.RestrictedUnpickler`, whose `find_class`
only resolves the handful of globals a tensor state dict needs, each replaced
by a local numpy-building emulation. Any other global (`posix.system`,
`builtins.eval`, ...) raises `UnsafeCheckpointError` before anything runs.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping, Union

import numpy as np

from dlsr_jax.weights.torch_pickle import (CheckpointError, CheckpointFormatError,
                                           RestrictedUnpickler, Storage,
                                           UnsafeCheckpointError, as_str, materialize,
                                           parse_storage_pid)

__all__ = ["CheckpointError", "CheckpointFormatError", "UnsafeCheckpointError",
           "extract_state_dict", "load_torch_object", "read_safetensors",
           "read_torch_checkpoint"]

PathLike = Union[str, os.PathLike]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Keys of common checkpoint wrappers, tried in order, e.g. {"state_dict": {...}}.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")


def _load_zip(path: str) -> Any:
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise CheckpointFormatError(f"{path}: not a readable zip checkpoint ({e})") from None
  with zf:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise CheckpointFormatError(
          f"{path}: zip file is not a torch checkpoint (expected one '<prefix>/data.pkl', "
          f"found {pkls or 'none'})")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise CheckpointFormatError(f"{path}: unknown byteorder {byteorder!r}")
    storages: dict[str, Storage] = {}

    def persistent_load(pid):
      dtype, key, numel, _ = parse_storage_pid(pid, path)
      if key not in storages:
        record = f"{prefix}data/{key}"
        try:
          raw = zf.read(record)
        except KeyError:
          raise CheckpointFormatError(f"{path}: missing storage record {record!r}") from None
        if len(raw) < numel * dtype.np_dtype.itemsize:
          raise CheckpointFormatError(
              f"{path}: storage {key!r} has {len(raw)} bytes, expected "
              f"{numel * dtype.np_dtype.itemsize}")
        storage = Storage(key, dtype, numel)
        storage.attach(raw)
        storages[key] = storage
      return storages[key]

    unpickler = RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), path, persistent_load)
    obj = unpickler.load()
  return materialize(obj, big_endian=byteorder == "big")


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    head = RestrictedUnpickler(f, path)
    magic = head.load()
    if magic != LEGACY_MAGIC_NUMBER:
      raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic number {magic!r})")
    version = RestrictedUnpickler(f, path).load()
    if version != LEGACY_PROTOCOL_VERSION:
      raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {version!r}")
    sys_info = RestrictedUnpickler(f, path).load()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    file_size = os.fstat(f.fileno()).st_size
    storages: dict[str, Storage] = {}

    def persistent_load(pid):
      dtype, key, numel, view = parse_storage_pid(pid, path)
      if view is not None:
        raise CheckpointFormatError(f"{path}: storage views are not supported ({view!r})")
      if key not in storages:
        storages[key] = Storage(key, dtype, numel)
      return storages[key]

    obj = RestrictedUnpickler(f, path, persistent_load).load()
    keys = RestrictedUnpickler(f, path).load()
    if not isinstance(keys, list):
      raise CheckpointFormatError(f"{path}: malformed storage key list")
    for key in keys:
      key = as_str(key)
      if key not in storages:
        raise CheckpointFormatError(f"{path}: data for unknown storage {key!r}")
      storage = storages[key]
      header = f.read(8)
      if len(header) != 8:
        raise CheckpointFormatError(f"{path}: truncated before storage {key!r}")
      numel = struct.unpack("<q" if little else ">q", header)[0]
      nbytes = numel * storage.dtype.np_dtype.itemsize
      if numel < 0 or numel < storage.numel:
        raise CheckpointFormatError(
            f"{path}: storage {key!r} has {numel} elements, expected {storage.numel}")
      if nbytes > file_size - f.tell():
        raise CheckpointFormatError(f"{path}: truncated in storage {key!r} "
                                    f"({file_size - f.tell()} of {nbytes} bytes left)")
      raw = f.read(nbytes)
      if len(raw) != nbytes:
        raise CheckpointFormatError(f"{path}: truncated in storage {key!r} "
                                    f"({len(raw)} of {nbytes} bytes)")
      storage.attach(raw)
  return materialize(obj, big_endian=not little)


def load_torch_object(path: PathLike) -> Any:
  """Loads a `torch.save`d object tree with tensors as numpy arrays.

  Args:
    path: a zip-format or legacy-format PyTorch checkpoint.

  Returns:
    The unpickled containers (dicts, OrderedDicts, lists, tuples, scalars,
    strings) with every tensor replaced by an `np.ndarray` (float16/bfloat16 are
    widened to float32).

  Raises:
    FileNotFoundError: `path` does not exist.
    UnsafeCheckpointError: the pickle references a global outside the allow-list.
    CheckpointFormatError: the file is not a readable checkpoint.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint file not found: {path}")
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    with open(path, "rb") as f:
      start = f.read(512)
    if len(start) >= 262 and start[257:262] == b"ustar":
      raise CheckpointFormatError(
          f"{path}: tar-based torch checkpoints (PyTorch < 0.4) are not supported")
    if start.startswith(b"PK\x03\x04"):
      raise CheckpointFormatError(
          f"{path}: a zip (PyTorch >= 1.6) checkpoint that is truncated or damaged (its "
          f"central directory is missing; {os.path.getsize(path)} bytes): copy or download it "
          "again")
    if not start.startswith(b"\x80"):
      raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (neither zip nor pickle)")
    return _load_legacy(path)
  except CheckpointError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
          AttributeError, struct.error, zipfile.BadZipFile, UnicodeDecodeError,
          MemoryError, OverflowError, RecursionError) as e:
    raise CheckpointFormatError(
        f"{path}: corrupt or truncated PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _flatten(tree: Mapping[Any, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
  """Collects array leaves under dotted keys; non-tensor leaves are ignored."""
  for k, v in tree.items():
    key = f"{prefix}{as_str(k)}"
    if isinstance(v, np.ndarray):
      out[key] = v
    elif isinstance(v, Mapping):
      _flatten(v, key + ".", out)


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, np.ndarray]:
  """Unwraps `{"state_dict": ...}` / `{"model": ...}` wrappers and `module.` prefixes.

  Args:
    obj: a loaded checkpoint tree (see `load_torch_object`).
    source: name used in error messages.

  Returns:
    A flat `{dotted key: array}` dict; nested dicts of tensors are joined with
    '.', non-tensor entries (e.g. `_metadata`, counters) are dropped.

  Raises:
    CheckpointFormatError: no tensors at all.
  """
  for _ in range(4):
    if not isinstance(obj, Mapping):
      break
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
      break
    inner = next((obj[k] for k in WRAPPER_KEYS
                  if k in obj and isinstance(obj[k], Mapping) and obj[k]), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, Mapping):
    raise CheckpointFormatError(
        f"{source}: expected a state dict (mapping of name -> tensor), got {type(obj).__name__}")
  out: dict[str, np.ndarray] = {}
  _flatten(obj, "", out)
  if not out:
    raise CheckpointFormatError(
        f"{source}: no tensors found; top-level keys: {sorted(map(str, obj))[:20]}")
  if all(k.startswith("module.") for k in out):
    out = {k[len("module."):]: v for k, v in out.items()}
  return out


def read_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Reads a `.safetensors` file.

  Returns:
    (tensors, metadata): `{key: np.ndarray}` (bfloat16 widened to float32) and the
    header's `__metadata__` string dict (empty if none).
  """
  from safetensors import SafetensorError, safe_open  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"safetensors file not found: {path}")
  try:
    tensors: dict[str, np.ndarray] = {}
    with safe_open(path, framework="numpy") as f:
      metadata = dict(f.metadata() or {})
      for k in f.keys():
        tensors[k] = f.get_tensor(k)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from None
  for k, v in tensors.items():
    if v.dtype.name == "bfloat16":
      tensors[k] = v.astype(np.float32)
  return tensors, metadata


def read_torch_checkpoint(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (`.pth`/`.pt`/`.bin`/`.safetensors`) as numpy arrays.

  Never imports torch and never executes code from the file.

  Args:
    path: checkpoint path. `.safetensors` files are read with safetensors;
      anything else as a `torch.save` file (zip or legacy format).

  Returns:
    `{torch key: np.ndarray}`, e.g. `{"_conv_stem.weight": [32, 3, 3, 3] float32}`,
    with wrappers (`state_dict`, `model`, ...) and `module.` prefixes removed.

  Raises:
    FileNotFoundError, UnsafeCheckpointError, CheckpointFormatError.
  """
  path = os.fspath(path)
  if path.endswith(".safetensors"):
    tensors, _ = read_safetensors(path)
    return extract_state_dict(tensors, path)
  return extract_state_dict(load_torch_object(path), path)
