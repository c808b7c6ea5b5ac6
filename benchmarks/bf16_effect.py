r"""Effect of bf16 compute (backbone and LFDN) on DLSR's AUROC, fp32 vs bf16, same data.

  python -m benchmarks.bf16_effect --data_dir=../shared/data --weights=PATH_OR_imagenet

ID CIFAR-10 (train -> test) against the OOD sets in --data_dir; for each of the
four combinations of backbone dtype and LFDN dtype: features are extracted with
that backbone dtype, the LFDN is trained with that compute dtype (params and
optimizer state stay float32), then MSE and MFsim are scored at the given ks.
Prints a table and writes JSON. Uses library calls only (no TF, clu or configs),
so it runs on a bare accelerator machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax import backbones, data, features, lfdn, schedule, scoring, train, trainer
from dlsr_jax.evaluation import metrics

ID_TRAIN, ID_TEST = "cifar10_train_exact", "cifar10_test_exact"
OOD = {"isun": "isun", "mnist": "mnist_test", "fashionmnist": "fashionmnist_test", "dtd": "dtd",
       "cifar100": "cifar100_test_exact"}
FAR = ("isun", "mnist", "fashionmnist", "dtd")


def load(data_dir: str, name: str) -> np.ndarray:
  return data.load_images(f"npz:{os.path.join(data_dir, name + '.npz')}").images


def extract_all(images: dict, weights, bb_dtype, args) -> tuple[dict, tuple, float]:
  t0 = time.time()
  bb = backbones.load("efficientnet_lite0", weights=weights, dtype=bb_dtype)
  z = {n: features.extract(bb, x, batch_size=args.feature_batch, progress=False)[0]
       for n, x in images.items()}
  return z, features.boundaries_for(bb.level_channels), time.time() - t0


def train_and_score(z: dict, bounds, t_feat: float, lfdn_dtype: str, args) -> dict:
  c = bounds[-1]
  cfg = lfdn.LFDNConfig(features=c, width=args.width, embed_dim=args.width // 2,
                        num_blocks=args.blocks, dtype=lfdn_dtype)
  sched = schedule.make_schedule()
  t0 = time.time()
  state = trainer.fit(z["train"], cfg, train.OptimConfig(), sched,
                      trainer.FitConfig(batch_size=128, num_epochs=args.epochs, seed=0,
                                        log_every_steps=10 ** 9), None, progress=False)
  t_train = time.time() - t0
  fn = jax.jit(scoring.make_score_fn(train.lfdn_apply_fn(cfg), sched.alphas_cumprod,
                                     scoring.ScoreConfig(boundaries=bounds)))
  key = jax.random.key(0)
  scores = {n: scoring.score_dataset(fn, state.ema_params, z[n], args.ks, key, 512)
            for n in ["id", *OOD]}
  out = {"features_s": round(t_feat, 2), "train_s": round(t_train, 2)}
  for t in ("mse", "mfsim"):
    for j, k in enumerate(args.ks):
      per = {n: metrics.auroc(scores["id"][t][j], scores[n][t][j]) for n in OOD}
      out[f"{t}_k{k}"] = {**{n: round(100 * v, 2) for n, v in per.items()},
                          "far_avg": round(100 * float(np.mean([per[n] for n in FAR])), 2)}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", required=True)
  p.add_argument("--weights", default="imagenet")
  p.add_argument("--epochs", type=int, default=40)
  p.add_argument("--width", type=int, default=1024)
  p.add_argument("--blocks", type=int, default=8)
  p.add_argument("--ks", type=int, nargs="+", default=[3, 5])
  p.add_argument("--feature_batch", type=int, default=256)
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  images = {"train": load(args.data_dir, ID_TRAIN), "id": load(args.data_dir, ID_TEST)}
  images.update({n: load(args.data_dir, f) for n, f in OOD.items()})
  print({n: x.shape[0] for n, x in images.items()}, jax.devices()[0].device_kind, flush=True)
  results = {}
  for bb_name, bb_dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
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
    with open(args.json_out, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "args": vars(args), "results": results},
                f, indent=2)


if __name__ == "__main__":
  main()
