"""PyTorch backbone weights -> the native `.safetensors` format, once per file.

The input is read without torch and without executing pickled code, mapped onto the Flax
module, validated key by key and written with flattened Flax paths plus metadata.
`backbones.load(name, "b4.safetensors")` then reports the same `weights_id` as the source
`.pth`, so feature caches stay valid. `python -m experiments.convert_weights` is its command.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dlsr_jax import backbones
from dlsr_jax.weights import convert


def convert_backbone_file(backbone: str, input_path: str, output_path: str, *,
                          allow_missing_head: bool = False) -> dict[str, Any]:
  """Reads, converts, validates and writes one weights file.

  Returns:
    Summary dict: backbone, num_tensors, num_parameters (params collection),
    num_values (all tensors), weights_id (of the source file), has_head, output.
  """
  if not output_path.endswith(".safetensors"):
    raise ValueError(f"--output must end in .safetensors, got {output_path!r}")
  variables, report, weights_id = backbones.load_variables(
      backbone, input_path, allow_missing_head=allow_missing_head)
  convert.save_native(output_path, variables, backbone=backbone, weights_id=weights_id,
                      has_head=report.has_head,
                      metadata={"source_file": os.path.basename(input_path)})
  flat = convert.flatten_variables(variables)
  return {
      "backbone": backbone,
      "num_tensors": len(flat),
      "num_parameters": int(sum(np.size(v) for k, v in flat.items() if k.startswith("params/"))),
      "num_values": int(sum(np.size(v) for v in flat.values())),
      "weights_id": weights_id,
      "has_head": report.has_head,
      "output": output_path,
  }
