r"""DLSR AUROC against LFDN training length (fp32), on the offline CIFAR-10 data.

  python -m benchmarks.epoch_sweep --data_dir=../shared/data --epochs 40 150 600
  python -m benchmarks.epoch_sweep --quick --out_dir=/tmp/bq   # smoke run, seconds

Reuses `benchmarks.bf16_effect` (same data and flags, features extracted once);
--quick as there (epochs 1 and 2), writing <out_dir>/epoch_sweep.json.
"""

import argparse
import json
import sys
from typing import Optional, Sequence

import jax.numpy as jnp

from benchmarks import bf16_effect, common


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  bf16_effect.add_args(p, epochs=[40, 150, 600], ks=[1, 3])
  args = p.parse_args(argv)
  bf16_effect.quick_setup(p, args, "epoch_sweep")
  images = {"train": bf16_effect.load(args.data_dir, bf16_effect.ID_TRAIN),
            "id": bf16_effect.load(args.data_dir, bf16_effect.ID_TEST)}
  images.update({n: bf16_effect.load(args.data_dir, f) for n, f in bf16_effect.OOD.items()})
  z, bounds, t_feat = bf16_effect.extract_all(images, args.weights, jnp.float32, args)
  results = {}
  for e in args.epochs:
    run_args = argparse.Namespace(**{**vars(args), "epochs": e})
    results[e] = bf16_effect.train_and_score(z, bounds, t_feat, "float32", run_args)
    print(e, json.dumps(results[e]), flush=True)
  if args.json_out:
    common.save_json(args.json_out, {str(k): v for k, v in results.items()})
    print(f"wrote {args.json_out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
