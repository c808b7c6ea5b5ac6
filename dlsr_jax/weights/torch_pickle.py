"""Restricted unpickling of PyTorch pickles: allow-listed, emulated globals only.

`RestrictedUnpickler.find_class` resolves only the globals a tensor state dict
needs (`torch._utils._rebuild_tensor_v2`, storage classes, `OrderedDict`, ...),
each replaced by a local emulation that builds numpy arrays; any other global
raises `UnsafeCheckpointError` naming it, before anything runs. torch is never
imported. The emulated objects are sealed so pickle BUILD opcodes cannot
modify them. One non-torch global is allowed: `argparse.Namespace` (the `args`
of training checkpoints) is read as a plain dict of its attributes; argparse is
never imported. Used by `torch_reader.py`, which handles the file containers.
"""

from __future__ import annotations

import collections
import math
import pickle
from typing import Any, Callable, Mapping, Optional

import numpy as np


class CheckpointError(ValueError):
  """Base class for checkpoint reading errors."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
  """The checkpoint's pickle references a global outside the allow-list."""


class CheckpointFormatError(CheckpointError):
  """The file is not a readable PyTorch checkpoint (garbage, truncated, ...)."""


# ----------------------------------------------------------------------------
# Emulated torch objects. All are sealed: a pickle BUILD opcode cannot change
# their attributes (no __dict__, __setattr__ refuses), so a crafted file cannot
# tamper with the reader's state or with validated tensor metadata.

MAX_TENSOR_ELEMENTS = 1 << 33  # refuse absurd (e.g. stride-0) views before allocating


class _Sealed:
  """Base of immutable stand-ins; attributes are set once via `_init`."""
  __slots__ = ()

  def _init(self, **attrs: Any) -> None:
    for k, v in attrs.items():
      object.__setattr__(self, k, v)

  def __setattr__(self, name: str, value: Any) -> None:
    raise UnsafeCheckpointError(
        f"checkpoint tried to set attribute {name!r} on {type(self).__name__}")


class DType(_Sealed):
  """Stand-in for a torch storage class or `torch.<dtype>`; wraps a numpy dtype.

  `bfloat16` is carried as uint16 bits and widened to float32 on materialisation.
  """
  __slots__ = ("name", "np_dtype", "bfloat16")

  def __init__(self, name: str, np_dtype: str, bfloat16: bool = False):
    self._init(name=name, np_dtype=np.dtype(np_dtype), bfloat16=bfloat16)

  def __repr__(self) -> str:
    return f"<torch {self.name}>"


_STORAGE_DTYPES = {
    "FloatStorage": ("f4", False), "DoubleStorage": ("f8", False),
    "HalfStorage": ("f2", False), "BFloat16Storage": ("u2", True),
    "LongStorage": ("i8", False), "IntStorage": ("i4", False),
    "ShortStorage": ("i2", False), "CharStorage": ("i1", False),
    "ByteStorage": ("u1", False), "BoolStorage": ("?", False),
    "ComplexFloatStorage": ("c8", False), "ComplexDoubleStorage": ("c16", False),
    "UntypedStorage": ("u1", False),
}
_TORCH_DTYPES = {
    "float32": ("f4", False), "float": ("f4", False), "float64": ("f8", False),
    "double": ("f8", False), "float16": ("f2", False), "half": ("f2", False),
    "bfloat16": ("u2", True), "int64": ("i8", False), "long": ("i8", False),
    "int32": ("i4", False), "int": ("i4", False), "int16": ("i2", False),
    "short": ("i2", False), "int8": ("i1", False), "uint8": ("u1", False),
    "bool": ("?", False), "complex64": ("c8", False), "complex128": ("c16", False),
}


class Storage(_Sealed):
  """A storage referenced by the pickle; its bytes are attached by the reader."""
  __slots__ = ("key", "dtype", "numel", "data")

  def __init__(self, key: str, dtype: DType, numel: int):
    self._init(key=key, dtype=dtype, numel=numel, data=None)

  def attach(self, data: bytes) -> None:
    object.__setattr__(self, "data", np.frombuffer(data, np.uint8))


class LazyTensor(_Sealed):
  """`_rebuild_tensor_v*` result: a validated strided view into a `Storage`."""
  __slots__ = ("storage", "offset", "size", "stride", "dtype")

  def __init__(self, storage: Any, offset: Any, size: Any, stride: Any,
               dtype: Optional[DType] = None):
    if not isinstance(storage, Storage):
      raise CheckpointFormatError(f"tensor rebuilt from a non-storage {type(storage).__name__}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple):
      raise CheckpointFormatError(f"malformed tensor size/stride {size!r}/{stride!r}")
    if not all(type(v) is int for v in (offset, *size, *stride)):  # noqa: E721 (no bools)
      raise CheckpointFormatError(f"non-integer tensor metadata {offset!r}, {size!r}, {stride!r}")
    if len(size) != len(stride):
      raise CheckpointFormatError(f"tensor size {size} and stride {stride} differ in rank")
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
      raise CheckpointFormatError(f"negative tensor size/stride/offset {size}/{stride}/{offset}")
    if math.prod(size) > MAX_TENSOR_ELEMENTS:
      raise CheckpointFormatError(f"tensor of size {size} is implausibly large")
    self._init(storage=storage, offset=offset, size=size, stride=stride,
               dtype=dtype or storage.dtype)

  def materialize(self, big_endian: bool = False) -> np.ndarray:
    """Copies the strided view out of the storage, bounds-checked."""
    buf = self.storage.data
    if buf is None:
      raise CheckpointFormatError(f"storage {self.storage.key!r} has no data in the file")
    dt = self.dtype.np_dtype.newbyteorder(">" if big_endian else "<")
    n_items = buf.size // dt.itemsize
    if 0 in self.size:
      arr = np.zeros(self.size, dt)
    else:
      last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
      if last >= n_items:
        raise CheckpointFormatError(
            f"tensor of size {self.size}, stride {self.stride}, offset {self.offset} reads "
            f"element {last} of storage {self.storage.key!r} with only {n_items} elements")
      flat = buf[: n_items * dt.itemsize].view(dt)
      arr = np.lib.stride_tricks.as_strided(
          flat[self.offset:], shape=self.size,
          strides=tuple(s * dt.itemsize for s in self.stride), writeable=False)
      arr = np.array(arr, copy=True)
    arr = arr.astype(dt.newbyteorder("="), copy=False)
    if self.dtype.bfloat16:
      arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif arr.dtype == np.float16:
      arr = arr.astype(np.float32)
    return arr


def _rebuild_tensor(storage, storage_offset, size, stride):
  return LazyTensor(storage, storage_offset, size, stride)


def _check_metadata(metadata):
  if metadata:
    raise CheckpointFormatError(f"tensors with conj/neg bits are not supported: {metadata!r}")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks
  _check_metadata(metadata)
  return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks
  _check_metadata(metadata)
  if not isinstance(dtype, DType):
    raise CheckpointFormatError(f"unsupported tensor dtype {dtype!r}")
  return LazyTensor(storage, storage_offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


class _TensorType(_Sealed):
  """Stand-in for `torch.Tensor` / `torch.nn.Parameter` (only used as a marker)."""
  __slots__ = ("name",)

  def __init__(self, name: str):
    self._init(name=name)


class _Global(_Sealed):
  """A sealed callable wrapping one allow-listed emulation function."""
  __slots__ = ("fn", "name")

  def __init__(self, fn: Callable[..., Any], name: str):
    self._init(fn=fn, name=name)

  def __call__(self, *args: Any) -> Any:
    return self.fn(*args)

  def __repr__(self) -> str:
    return f"<emulated {self.name}>"


_REBUILD_FUNCS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                  _rebuild_parameter, _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
  del state
  if (not isinstance(func, _Global) or func.fn not in _REBUILD_FUNCS
      or not isinstance(new_type, _TensorType) or not isinstance(args, tuple)):
    raise CheckpointFormatError(f"unsupported tensor subclass rebuild {func!r}, {new_type!r}")
  return func(*args)


def _codecs_encode(obj, encoding="utf-8"):
  """`_codecs.encode` as used by protocol-2 pickles of `bytes`."""
  if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
    raise CheckpointFormatError(f"unsupported _codecs.encode({type(obj).__name__}, {encoding!r})")
  return obj.encode(encoding)


def _torch_size(dims=()):
  return tuple(int(d) for d in dims)


class NamespaceData(dict):
  """Stand-in for `argparse.Namespace`: its attributes as a plain dict.

  A pickled Namespace is NEWOBJ (`dict.__new__`: an empty dict) followed by
  BUILD with the attribute dict, handed to `__setstate__`. Calling the class
  with arguments is refused; nothing from argparse is imported or run, and the
  attribute values are unpickled under the same allow-list. `materialize`
  turns the result into a plain `dict`.
  """

  def __init__(self, *args: Any, **kwargs: Any):
    if args or kwargs:
      raise UnsafeCheckpointError("checkpoint called argparse.Namespace with arguments")
    super().__init__()

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
      raise CheckpointFormatError(
          f"argparse.Namespace state must be a dict of attributes, got {type(state).__name__}")
    self.update(state)


def _allowed_globals() -> dict[tuple[str, str], Any]:
  """The complete allow-list: (module, name) -> local emulation (fresh objects)."""
  funcs = {
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
      ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
      ("torch", "Size"): _torch_size,
      ("_codecs", "encode"): _codecs_encode,
  }
  allowed: dict[tuple[str, str], Any] = {
      key: _Global(fn, ".".join(key)) for key, fn in funcs.items()}
  # Immutable built-in types: BUILD cannot modify them.
  allowed[("collections", "OrderedDict")] = collections.OrderedDict
  allowed[("builtins", "set")] = set
  allowed[("builtins", "frozenset")] = frozenset
  allowed[("argparse", "Namespace")] = NamespaceData
  allowed[("torch", "Tensor")] = _TensorType("Tensor")
  allowed[("torch.nn.parameter", "Parameter")] = _TensorType("Parameter")
  for name, (dt, bf16) in _STORAGE_DTYPES.items():
    for mod in ("torch", "torch.cuda"):
      allowed[(mod, name)] = DType(name, dt, bf16)
  for name, (dt, bf16) in _TORCH_DTYPES.items():
    allowed[("torch", name)] = DType(name, dt, bf16)
  return allowed


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler resolving only allow-listed globals; storages via a callback."""

  def __init__(self, file, source: str,
               persistent_load: Optional[Callable[[Any], Any]] = None,
               allowed: Optional[Mapping[tuple[str, str], Any]] = None):
    super().__init__(file, encoding="latin1")
    self._source = source
    self._persistent_fn = persistent_load
    self._allowed = allowed if allowed is not None else _allowed_globals()

  def find_class(self, module: str, name: str) -> Any:
    if module == "__builtin__":  # protocol-2 pickles name Python 3's builtins this way
      module = "builtins"
    try:
      return self._allowed[(module, name)]
    except (KeyError, TypeError):
      raise UnsafeCheckpointError(
          f"refusing to load global '{module}.{name}' from {self._source}: only tensor state "
          "dicts are allowed (no code is executed when reading checkpoints)") from None

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent_fn is None:
      raise CheckpointFormatError(f"unexpected persistent id {pid!r} in {self._source}")
    return self._persistent_fn(pid)


def as_str(x: Any) -> str:
  """bytes (protocol-2 pickles of py2 str) or str -> str."""
  return x.decode("ascii") if isinstance(x, bytes) else str(x)


def parse_storage_pid(pid: Any, source: str) -> tuple[DType, str, int, Any]:
  """A storage persistent id -> (dtype, key, numel, view metadata or None)."""
  if not isinstance(pid, tuple) or len(pid) < 5 or as_str(pid[0]) != "storage":
    raise CheckpointFormatError(f"unsupported persistent id {pid!r} in {source}")
  storage_type, key, _location, numel = pid[1:5]
  view = pid[5] if len(pid) > 5 else None
  if not isinstance(storage_type, DType):
    raise CheckpointFormatError(f"unsupported storage type {storage_type!r} in {source}")
  if not isinstance(numel, int) or numel < 0:
    raise CheckpointFormatError(f"bad storage size {numel!r} in {source}")
  return storage_type, as_str(key), numel, view


def materialize(obj: Any, big_endian: bool = False) -> Any:
  """Replaces every `LazyTensor` in a container tree by a numpy array."""
  if isinstance(obj, LazyTensor):
    return obj.materialize(big_endian)
  if isinstance(obj, dict):
    out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = materialize(v, big_endian)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(materialize(v, big_endian) for v in obj)
  return obj
