r"""Backbone feature extraction: our jitted Flax EfficientNets vs the PyTorch references.

  python -m benchmarks.bench_backbone [--models=efficientnet_lite0,efficientnet_b4]
      [--batch_sizes=16,64] [--torch_device=cpu|cuda] [--json_out=PATH]

For each model and batch size, in one run on one machine: images/s of
`features.make_feature_fn` (preprocess + backbone + pooling + z-score, jitted,
float32 and bfloat16 compute) and of the reference package's forward to the
last block (`efficientnet_lite_pytorch` / `efficientnet_pytorch`, eval mode,
`torch.inference_mode`, float32), inputs 224x224 from 32x32 uint8 images.
Also: end-to-end DLSR scoring throughput (backbone + LFDN reconstruction at
k = 3, MSE + MFsim) and the training cost of the paper's recipe (150 epochs of
CIFAR-10) with our feature cache vs re-running the backbone every batch.
Weights are random (B4's file is not bundled): speed does not depend on them.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dlsr_jax import backbones, features, lfdn, schedule, scoring, train

_MODELS = flags.DEFINE_list("models", ["efficientnet_lite0", "efficientnet_b4"], "Backbones.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["16", "64"], "Batch sizes to try.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported).")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "cpu or cuda.")
_BF16 = flags.DEFINE_bool("bf16", True, "Also time bf16 compute for our backbone.")
_E2E = flags.DEFINE_bool("end_to_end", True, "Also time backbone + LFDN scoring.")
_JSON = flags.DEFINE_string("json_out", None, "Write the figures as JSON here.")

REF_NAMES = {"efficientnet_lite0": "efficientnet-lite0", "efficientnet_b4": "efficientnet-b4",
             "efficientnet_b0": "efficientnet-b0"}
CIFAR10_TRAIN, EPOCHS, PAPER_BATCH = 50_000, 150, 128


def median_time(fn, repeats: int) -> float:
  fn()   # warm-up (compile, allocator)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def ours(name: str, batch: int, dtype, images: np.ndarray, repeats: int) -> float:
  bb = backbones.load(name, weights=None, dtype=dtype)
  fn, _ = features.make_feature_fn(bb)
  jfn = jax.jit(fn)
  x = jax.device_put(images[:batch])
  params = jax.device_put(bb.params)
  return batch / median_time(lambda: jfn(params, x).block_until_ready(), repeats)


def reference(name: str, batch: int, images: np.ndarray, repeats: int, device: str) -> float:
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  if "lite" in name:
    from efficientnet_lite_pytorch import EfficientNet
  else:
    from efficientnet_pytorch import EfficientNet
  model = EfficientNet.from_name(REF_NAMES[name]).eval().to(device)
  x = torch.from_numpy(images[:batch]).to(device).permute(0, 3, 1, 2).float() / 255.0
  mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

  def run():
    with torch.inference_mode():
      y = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear",
                                          align_corners=False)
      model.extract_features((y - mean) / std)
      if device == "cuda":
        torch.cuda.synchronize()

  return batch / median_time(run, repeats)


def end_to_end(name: str, batch: int, images: np.ndarray, repeats: int) -> float:
  """images/s of backbone features + LFDN DDIM reconstruction at k=3 with MSE+MFsim."""
  bb = backbones.load(name, weights=None)
  feat_fn, bounds = features.make_feature_fn(bb)
  c = bounds[-1]
  cfg = lfdn.LFDNConfig(features=c, width=2 * c, embed_dim=c, num_blocks=16)
  params = lfdn.init_params(cfg, jax.random.key(0))
  score_fn = scoring.make_score_fn(train.lfdn_apply_fn(cfg),
                                   schedule.make_schedule().alphas_cumprod,
                                   scoring.ScoreConfig(boundaries=bounds))

  @jax.jit
  def pipeline(bb_params, lfdn_params, imgs, ids, key):
    return score_fn(lfdn_params, feat_fn(bb_params, imgs), ids, jnp.array([3]), key)

  x = jax.device_put(images[:batch])
  ids = jnp.arange(batch)
  key = jax.random.key(0)
  bp = jax.device_put(bb.params)
  run = lambda: jax.block_until_ready(pipeline(bp, params, x, ids, key))
  return batch / median_time(run, repeats)


def training_cost(feat_ips: float, step_s: float) -> dict:
  """Paper recipe on CIFAR-10: cache once vs backbone every batch (extrapolated)."""
  steps = EPOCHS * (CIFAR10_TRAIN // PAPER_BATCH)
  backbone_once = CIFAR10_TRAIN / feat_ips
  backbone_every = EPOCHS * CIFAR10_TRAIN / feat_ips
  lfdn_s = steps * step_s
  return {"steps": steps, "backbone_passes_cached": 1, "backbone_passes_release": EPOCHS,
          "cached_total_h": (backbone_once + lfdn_s) / 3600,
          "release_total_h": (backbone_every + lfdn_s) / 3600}


def lfdn_step_seconds(c: int, repeats: int) -> float:
  cfg = lfdn.LFDNConfig(features=c, width=2 * c, embed_dim=c, num_blocks=16)
  tx = train.make_optimizer(train.OptimConfig())
  state = train.create_train_state(cfg, tx, jax.random.key(0))
  step = jax.jit(train.make_train_step(cfg, tx, schedule.make_schedule().alphas_cumprod, 0.9999),
                 donate_argnums=0)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(PAPER_BATCH, c)), jnp.float32)
  key = jax.random.key(1)
  box = [state]

  def run():
    box[0], m = step(box[0], z, key)
    jax.block_until_ready(m)

  return median_time(run, repeats)


def main(argv):
  del argv
  images = np.random.default_rng(0).integers(0, 256, (max(map(int, _BATCHES.value)), 32, 32, 3),
                                             dtype=np.uint8)
  rows, extra = [], {}
  for name in _MODELS.value:
    for b in map(int, _BATCHES.value):
      row = {"model": name, "batch": b,
             "ours_fp32": ours(name, b, jnp.float32, images, _REPEATS.value)}
      if _BF16.value:
        row["ours_bf16"] = ours(name, b, jnp.bfloat16, images, _REPEATS.value)
      row["torch_fp32"] = reference(name, b, images, _REPEATS.value, _TORCH_DEVICE.value)
      row["ratio_fp32"] = row["ours_fp32"] / row["torch_fp32"]
      rows.append(row)
      print(json.dumps(row), flush=True)
    best = max(r["ours_fp32"] for r in rows if r["model"] == name)
    c = sum(backbones.load(name, weights=None).level_channels)
    step_s = lfdn_step_seconds(c, _REPEATS.value)
    extra[name] = {"lfdn_step_s_paper_size": step_s, **training_cost(best, step_s)}
    if _E2E.value:
      extra[name]["end_to_end_images_per_s"] = end_to_end(name, max(map(int, _BATCHES.value)),
                                                          images, _REPEATS.value)
    print(json.dumps({name: extra[name]}), flush=True)
  print_table(rows, extra)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"device": str(jax.devices()[0]), "torch_device": _TORCH_DEVICE.value,
                 "rows": rows, "extra": extra}, f, indent=2)


def print_table(rows, extra) -> None:
  print(f"\nJAX {jax.__version__} on {jax.devices()[0].device_kind}; torch on "
        f"{_TORCH_DEVICE.value}")
  print("| model | batch | ours fp32 img/s | ours bf16 img/s | torch fp32 img/s | ratio fp32 |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['model']} | {r['batch']} | {r['ours_fp32']:.1f} | {r.get('ours_bf16', float('nan')):.1f}"
          f" | {r['torch_fp32']:.1f} | {r['ratio_fp32']:.2f} |")
  for name, e in extra.items():
    print(f"{name}: LFDN step (paper size W=2C, N=16, batch 128) {1e3 * e['lfdn_step_s_paper_size']:.1f} ms; "
          f"150-epoch CIFAR-10 recipe: cached {e['cached_total_h']:.2f} h (1 backbone pass) vs "
          f"release-style {e['release_total_h']:.2f} h (150 passes)"
          + (f"; end-to-end scoring {e['end_to_end_images_per_s']:.1f} img/s"
             if "end_to_end_images_per_s" in e else ""))


if __name__ == "__main__":
  app.run(main)
