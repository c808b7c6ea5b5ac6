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

  python -m benchmarks.bench_backbone --quick --out_dir=/tmp/bq   # smoke run, seconds

--quick: Lite0 only, 32x32 input, batch 2, one timed call, a 2-block LFDN, no bf16;
writes <out_dir>/bench_backbone.json. The end-to-end row of `--e2e_model` (default B4,
`benchmarks/gpu_suite.sh`) is the DLSR scoring throughput whose goal is 10,000 img/s on a GPU.
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
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Write <out_dir>/bench_backbone.json "
                               "(unless --json_out is given).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run in seconds: Lite0 at 32x32, batch 2, "
                           "1 rep, a 2-block LFDN, no bf16; needs --out_dir or --json_out.")
_RES = flags.DEFINE_integer("resolution", 0, "Input resolution (0: the backbone's, 224).")
_E2E_BATCH = flags.DEFINE_integer("e2e_batch", 0, "End-to-end scoring batch "
                                  "(0: the largest --batch_sizes).")
_LFDN_BLOCKS = flags.DEFINE_integer("lfdn_blocks", 16, "LFDN blocks N of the step and "
                                    "end-to-end rows (paper: 16).")

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


def feature_spec() -> features.FeatureSpec:
  return features.FeatureSpec(resolution=_RES.value or None)


def resolution(bb) -> int:
  return _RES.value or bb.resolution


def ours(name: str, batch: int, dtype, images: np.ndarray, repeats: int) -> float:
  bb = backbones.load(name, weights=None, dtype=dtype)
  fn, _ = features.make_feature_fn(bb, feature_spec())
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
  res = _RES.value or 224
  x = torch.from_numpy(images[:batch]).to(device).permute(0, 3, 1, 2).float() / 255.0
  mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

  def run():
    with torch.inference_mode():
      y = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear",
                                          align_corners=False)
      model.extract_features((y - mean) / std)
      if device == "cuda":
        torch.cuda.synchronize()

  return batch / median_time(run, repeats)


def end_to_end(name: str, batch: int, images: np.ndarray, repeats: int) -> float:
  """images/s of backbone features + LFDN DDIM reconstruction at k=3 with MSE+MFsim."""
  bb = backbones.load(name, weights=None)
  feat_fn, bounds = features.make_feature_fn(bb, feature_spec())
  c = bounds[-1]
  cfg = lfdn.LFDNConfig(features=c, width=2 * c, embed_dim=c, num_blocks=_LFDN_BLOCKS.value)
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


def lfdn_step_seconds(c: int, repeats: int, batch: int = PAPER_BATCH) -> float:
  """Seconds per LFDN step as `trainer.fit` runs it (`loop.jitted_step`), W = 2C, E = C."""
  from dlsr_jax import parallel, trainer
  from dlsr_jax.training import loop
  cfg = lfdn.LFDNConfig(features=c, width=2 * c, embed_dim=c, num_blocks=_LFDN_BLOCKS.value)
  abar = np.asarray(schedule.make_schedule().alphas_cumprod, np.float32).tobytes()
  init, step = trainer.lfdn_init_and_step(cfg, train.OptimConfig(), abar)
  mesh = parallel.make_mesh(jax.devices()[:1])
  init_fn, step_fn = loop.jitted_step(init, step, mesh)
  init_key, loop_key, bad = loop.step_inputs(0, mesh)
  z = np.random.default_rng(0).normal(size=(batch, c)).astype(np.float32)
  batch_in = {"in": {"z": parallel.host_to_global(z, mesh)}}
  box = [init_fn(init_key), bad]

  def run():
    box[0], m, box[1] = step_fn(box[0], batch_in, loop_key, box[1])
    jax.block_until_ready(m)

  return median_time(run, repeats)


def main(argv):
  del argv
  if _QUICK.value:
    if not (_OUT_DIR.value or _JSON.value):
      raise app.UsageError("--quick needs --out_dir (or --json_out)")
    for name, value in (("models", ["efficientnet_lite0"]), ("batch_sizes", ["2"]),
                        ("repeats", 1), ("bf16", False), ("resolution", 32),
                        ("lfdn_blocks", 2)):
      setattr(flags.FLAGS, name, value)
  json_out = _JSON.value or (os.path.join(_OUT_DIR.value, "bench_backbone.json")
                             if _OUT_DIR.value else None)
  batches = [int(b) for b in _BATCHES.value]
  e2e_batch = _E2E_BATCH.value or max(batches)
  images = np.random.default_rng(0).integers(0, 256, (max(batches + [e2e_batch]), 32, 32, 3),
                                             dtype=np.uint8)
  rows, extra = [], {}
  for name in _MODELS.value:
    for b in batches:
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
    step_s = lfdn_step_seconds(c, _REPEATS.value, 8 if _QUICK.value else PAPER_BATCH)
    extra[name] = {"lfdn_step_s_paper_size": step_s, "lfdn_blocks": _LFDN_BLOCKS.value,
                   **training_cost(best, step_s)}
    if _E2E.value:
      extra[name]["end_to_end_batch"] = e2e_batch
      extra[name]["end_to_end_images_per_s"] = end_to_end(name, e2e_batch, images,
                                                          _REPEATS.value)
    print(json.dumps({name: extra[name]}), flush=True)
  print_table(rows, extra)
  if json_out:
    os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
    with open(json_out, "w") as f:
      json.dump({"device": str(jax.devices()[0]), "torch_device": _TORCH_DEVICE.value,
                 "resolution": _RES.value or 224, "quick": _QUICK.value,
                 "rows": rows, "extra": extra}, f, indent=2)
    print(f"wrote {json_out}")


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
