r"""Converts PyTorch backbone weights once into the native `.safetensors` format.

  python -m experiments.convert_weights --backbone=efficientnet_b4 \
      --input=efficientnet-b4-6ed6700e.pth --output=b4.safetensors

The input is read without torch and without executing pickled code, mapped
onto the Flax module, validated key by key and written with flattened Flax
paths plus metadata. `backbones.load(name, "b4.safetensors")` then reports the
same `weights_id` as the source `.pth`, so feature caches stay valid.
"""

from __future__ import annotations

import os
from typing import Any

from absl import app, flags

_BACKBONE = flags.DEFINE_string("backbone", None, "Registry name, e.g. efficientnet_b4.")
_INPUT = flags.DEFINE_string("input", None, "PyTorch .pth/.pt/.bin or torch-layout .safetensors.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .safetensors path.")
_ALLOW_MISSING_HEAD = flags.DEFINE_bool(
    "allow_missing_head", False, "Accept a checkpoint without a (matching) classifier head.")


def convert_file(backbone: str, input_path: str, output_path: str, *,
                 allow_missing_head: bool = False) -> dict[str, Any]:
  """Reads, converts, validates and writes one weights file.

  Returns:
    Summary dict: backbone, num_tensors, num_parameters (params collection),
    num_values (all tensors), weights_id (of the source file), has_head, output.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dlsr_jax import backbones  # pylint: disable=g-import-not-at-top
  from dlsr_jax.weights import convert  # pylint: disable=g-import-not-at-top

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  summary = convert_file(_BACKBONE.value, _INPUT.value, _OUTPUT.value,
                         allow_missing_head=_ALLOW_MISSING_HEAD.value)
  print(f"{summary['backbone']}: wrote {summary['num_tensors']} tensors, "
        f"{summary['num_parameters']:,} parameters ({summary['num_values']:,} values incl. "
        f"BatchNorm statistics), weights_id={summary['weights_id']}, "
        f"has_head={summary['has_head']} -> {summary['output']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["backbone", "input", "output"])
  app.run(main)
