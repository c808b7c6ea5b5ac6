"""Weights files -> Flax variables: PyTorch and safetensors readers, conversion, ids.

Usage:
  sd = weights.read_torch_checkpoint("resnet20-12fca82f.th")   # {name: np.ndarray}
  variables, report = weights.convert.torch_to_flax(sd, expected)
  wid = weights.weights_id_of("resnet20-12fca82f.th")          # 12 hex digits

`torch_pickle.py` unpickles with an allow-list (torch is never imported and no pickled code
runs), `torch_reader.py` reads the containers (torch zip, legacy, `.safetensors`),
`convert.py` maps torch keys onto a module's Flax variables and reads / writes the native
`.safetensors` format. Both `models/` and `backbones/` load their weights through here.
"""

from __future__ import annotations

import hashlib
import os
from typing import Union

from dlsr_jax.weights import convert
from dlsr_jax.weights.convert import CheckpointMismatchError
from dlsr_jax.weights.torch_reader import (CheckpointError, CheckpointFormatError,
                                           UnsafeCheckpointError, extract_state_dict,
                                           load_torch_object, read_safetensors,
                                           read_torch_checkpoint)

__all__ = [
    "CheckpointError", "CheckpointFormatError", "CheckpointMismatchError",
    "UnsafeCheckpointError", "convert", "extract_state_dict", "load_torch_object",
    "read_safetensors", "read_torch_checkpoint", "weights_id_of",
]


def weights_id_of(path: Union[str, os.PathLike]) -> str:
  """Short sha256 prefix (12 hex digits) of a weights file."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:12]
