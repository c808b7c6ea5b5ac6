r"""Converts PyTorch backbone weights once into the native `.safetensors` format.

  python -m experiments.convert_weights --backbone=efficientnet_b4 \
      --input=efficientnet-b4-6ed6700e.pth --output=b4.safetensors

`dlsr_jax.weights.backbone_file` reads the input without torch and without executing pickled
code, maps it onto the Flax module, validates it key by key and writes it with flattened Flax
paths plus metadata. `backbones.load(name, "b4.safetensors")` then reports the
same `weights_id` as the source `.pth`, so feature caches stay valid.
"""

from __future__ import annotations

from absl import app, flags

from dlsr_jax.weights import backbone_file

_BACKBONE = flags.DEFINE_string("backbone", None, "Registry name, e.g. efficientnet_b4.")
_INPUT = flags.DEFINE_string("input", None, "PyTorch .pth/.pt/.bin or torch-layout .safetensors.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .safetensors path.")
_ALLOW_MISSING_HEAD = flags.DEFINE_bool(
    "allow_missing_head", False, "Accept a checkpoint without a (matching) classifier head.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  summary = backbone_file.convert_backbone_file(
      _BACKBONE.value, _INPUT.value, _OUTPUT.value, allow_missing_head=_ALLOW_MISSING_HEAD.value)
  print(f"{summary['backbone']}: wrote {summary['num_tensors']} tensors, "
        f"{summary['num_parameters']:,} parameters ({summary['num_values']:,} values incl. "
        f"BatchNorm statistics), weights_id={summary['weights_id']}, "
        f"has_head={summary['has_head']} -> {summary['output']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["backbone", "input", "output"])
  app.run(main)
