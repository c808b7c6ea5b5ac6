r"""Effect of bf16 compute (backbone and LFDN) on DLSR's AUROC, fp32 vs bf16, same data.

  python -m benchmarks.bf16_effect --data_dir=../shared/data --weights=PATH_OR_imagenet
  python -m benchmarks.bf16_effect --quick --out_dir=/tmp/bq   # smoke run, seconds

ID CIFAR-10 (train -> test) against the OOD sets in --data_dir; for each of the
four combinations of backbone dtype and LFDN dtype: features are extracted with
that backbone dtype, the LFDN is trained with that compute dtype (params and
optimizer state stay float32), then MSE and MFsim are scored at the given ks.
Prints a table and writes JSON. Uses library calls only (no TF, clu or configs),
so it runs on a bare accelerator machine.

--quick: random Lite0 weights at 32x32, fp32 backbone only, tiny random sets
written to <out_dir>/data (unless --data_dir is given), a 1-block LFDN, 1 epoch,
k = 1; writes <out_dir>/bf16_effect.json. Its AUROCs mean nothing: it checks that the
script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax import backbones, data, features, lfdn, schedule, scoring, train, trainer
from dlsr_jax.evaluation import metrics

from benchmarks import common

ID_TRAIN, ID_TEST = "cifar10_train_exact", "cifar10_test_exact"
OOD = {"isun": "isun", "mnist": "mnist_test", "fashionmnist": "fashionmnist_test", "dtd": "dtd",
       "cifar100": "cifar100_test_exact"}
FAR = ("isun", "mnist", "fashionmnist", "dtd")


def load(data_dir: str, name: str) -> np.ndarray:
  return data.load_images(f"npz:{os.path.join(data_dir, name + '.npz')}").images


def extract_all(images: dict, weights, bb_dtype, args) -> tuple[dict, tuple, float]:
  t0 = time.time()
  bb = backbones.load("efficientnet_lite0", weights=None if weights == "none" else weights,
                      dtype=bb_dtype)
  spec = features.FeatureSpec(resolution=args.resolution or None)
  z = {n: features.extract(bb, x, batch_size=args.feature_batch, spec=spec, progress=False)[0]
       for n, x in images.items()}
  return z, features.boundaries_for(bb.level_channels), time.time() - t0


def train_and_score(z: dict, bounds, t_feat: float, lfdn_dtype: str, args) -> dict:
  c = bounds[-1]
  cfg = lfdn.LFDNConfig(features=c, width=args.width, embed_dim=args.width // 2,
                        num_blocks=args.blocks, dtype=lfdn_dtype)
  sched = schedule.make_schedule()
  t0 = time.time()
  state = trainer.fit(z["train"], cfg, train.OptimConfig(), sched,
                      trainer.FitConfig(batch_size=args.batch_size, num_epochs=args.epochs,
                                        seed=0,
                                        log_every_steps=10 ** 9), None, progress=False)
  t_train = time.time() - t0
  fn = jax.jit(scoring.make_score_fn(train.lfdn_apply_fn(cfg), sched.alphas_cumprod,
                                     scoring.ScoreConfig(boundaries=bounds)))
  key = jax.random.key(0)
  scores = {n: scoring.score_dataset(fn, state.ema_params, z[n], args.ks, key,
                                     args.score_batch)
            for n in ["id", *OOD]}
  out = {"features_s": round(t_feat, 2), "train_s": round(t_train, 2)}
  for t in ("mse", "mfsim"):
    for j, k in enumerate(args.ks):
      per = {n: metrics.auroc(scores["id"][t][j], scores[n][t][j]) for n in OOD}
      out[f"{t}_k{k}"] = {**{n: round(100 * v, 2) for n, v in per.items()},
                          "far_avg": round(100 * float(np.mean([per[n] for n in FAR])), 2)}
  return out


def add_args(p: argparse.ArgumentParser, epochs: Sequence[int], ks: Sequence[int]) -> None:
  """The flags bf16_effect and epoch_sweep share."""
  p.add_argument("--data_dir", default=None, help="folder of the .npz sets (required unless "
                 "--quick, which writes tiny random ones to <out_dir>/data)")
  p.add_argument("--weights", default="imagenet", help="Lite0 weights: imagenet, a file, none")
  p.add_argument("--epochs", type=int, nargs="+" if len(epochs) > 1 else None,
                 default=list(epochs) if len(epochs) > 1 else epochs[0])
  p.add_argument("--width", type=int, default=1024)
  p.add_argument("--blocks", type=int, default=8)
  p.add_argument("--ks", type=int, nargs="+", default=list(ks))
  p.add_argument("--feature_batch", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=128, help="LFDN training batch")
  p.add_argument("--score_batch", type=int, default=512)
  p.add_argument("--resolution", type=int, default=0, help="backbone input (0: 224)")
  p.add_argument("--backbone_dtypes", default="fp32,bf16",
                 help="bf16_effect: backbone compute dtypes to try (comma list of fp32,bf16)")
  p.add_argument("--json_out", default=None)
  p.add_argument("--out_dir", default=None, help="write <out_dir>/<script>.json "
                 "(unless --json_out is given)")
  p.add_argument("--quick", action="store_true", help="smoke run in seconds (see the "
                 "module docstring); needs --out_dir")


def quick_setup(p: argparse.ArgumentParser, args: argparse.Namespace, script: str) -> None:
  """Applies --quick's tiny settings and its data; sets json_out from out_dir."""
  if args.quick:
    if not args.out_dir:
      p.error("--quick needs --out_dir")
    args.weights, args.resolution, args.width, args.blocks = "none", 32, 32, 1
    args.ks, args.feature_batch, args.batch_size, args.score_batch = [1], 16, 16, 64
    args.epochs = [1, 2] if isinstance(args.epochs, list) else 1
    args.backbone_dtypes = "fp32"   # bf16 convolutions on a CPU: 20 s more of compute
    if args.data_dir is None:
      args.data_dir = common.synthetic_npz_dir(
          os.path.join(args.out_dir, "data"), [ID_TRAIN, ID_TEST, *OOD.values()], n=32)
  if args.data_dir is None:
    p.error("--data_dir is required (or --quick)")
  if args.json_out is None and args.out_dir:
    args.json_out = os.path.join(args.out_dir, f"{script}.json")


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_args(p, epochs=[40], ks=[3, 5])
  args = p.parse_args(argv)
  quick_setup(p, args, "bf16_effect")
  bad = sorted(set(args.backbone_dtypes.split(",")) - {"fp32", "bf16"})
  if bad:
    p.error(f"--backbone_dtypes: unknown {bad}; valid: fp32, bf16")
  images = {"train": load(args.data_dir, ID_TRAIN), "id": load(args.data_dir, ID_TEST)}
  images.update({n: load(args.data_dir, f) for n, f in OOD.items()})
  print({n: x.shape[0] for n, x in images.items()}, jax.devices()[0].device_kind, flush=True)
  results = {}
  for bb_name in args.backbone_dtypes.split(","):
    bb_dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[bb_name]
    z, bounds, t_feat = extract_all(images, args.weights, bb_dtype, args)
    for lf_name in ("float32", "bfloat16"):
      name = f"backbone {bb_name} / LFDN {'fp32' if lf_name == 'float32' else 'bf16'}"
      results[name] = train_and_score(z, bounds, t_feat, lf_name, args)
      print(name, json.dumps(results[name]), flush=True)
  print("\n| backbone / LFDN | " + " | ".join(f"{t} k={k} far avg" for t in ("mse", "mfsim")
                                             for k in args.ks) + " | CIFAR-100 (MFsim k=3) |")
  print("|---|" + "---:|" * (2 * len(args.ks) + 1))
  for name, r in results.items():
    cells = [f"{r[f'{t}_k{k}']['far_avg']:.2f}" for t in ("mse", "mfsim") for k in args.ks]
    cells.append(f"{r[f'mfsim_k{args.ks[0]}']['cifar100']:.2f}")
    print(f"| {name} | " + " | ".join(cells) + " |")
  if args.json_out:
    common.save_json(args.json_out, {"device": jax.devices()[0].device_kind, "args": vars(args),
                                     "results": results})
    print(f"wrote {args.json_out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
