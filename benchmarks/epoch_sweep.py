r"""DLSR AUROC against LFDN training length (fp32), on the offline CIFAR-10 data.

  python -m benchmarks.epoch_sweep --data_dir=../shared/data --epochs 40 150 600

Reuses `benchmarks.bf16_effect` (same data, features extracted once).
"""

import argparse
import json

import jax.numpy as jnp

from benchmarks import bf16_effect


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", required=True)
  p.add_argument("--weights", default="imagenet")
  p.add_argument("--epochs", type=int, nargs="+", default=[40, 150, 600])
  p.add_argument("--width", type=int, default=1024)
  p.add_argument("--blocks", type=int, default=8)
  p.add_argument("--ks", type=int, nargs="+", default=[1, 3])
  p.add_argument("--feature_batch", type=int, default=256)
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  images = {"train": bf16_effect.load(args.data_dir, bf16_effect.ID_TRAIN),
            "id": bf16_effect.load(args.data_dir, bf16_effect.ID_TEST)}
  images.update({n: bf16_effect.load(args.data_dir, f) for n, f in bf16_effect.OOD.items()})
  z, bounds, t_feat = bf16_effect.extract_all(images, args.weights, jnp.float32, args)
  results = {}
  for e in args.epochs:
    args.epochs_now = e
    run_args = argparse.Namespace(**{**vars(args), "epochs": e})
    results[e] = bf16_effect.train_and_score(z, bounds, t_feat, "float32", run_args)
    print(e, json.dumps(results[e]), flush=True)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump({str(k): v for k, v in results.items()}, f, indent=2)


if __name__ == "__main__":
  main()
