"""Classifier training step and ODIN scoring: dlsr_jax versus equivalent PyTorch code.

One run, one machine, the same weights on both sides (a torch-initialised model,
saved and read by `dlsr_jax.models.load`):

  a. train step at --batch_size (random uint8 images and labels): the step the
     training loop runs (`training.loop`'s jit of `objectives.cross_entropy`'s
     step: `fold_in(loop_key, state.step)`, random crop + flip, BN train mode,
     SGD Nesterov 0.9 + weight decay 5e-4 + cosine LR, state donated) vs
     `reference.torch_classifier.TorchClassifierTrainer` (the same recipe, crop
     and flip done in torch on the batch tensor), eager;
  b. ODIN scoring (T=1000, eps=0.0014) at --odin_batch: `detectors.odin.odin_kernel`
     (what `odin.make` scores with) vs
     `reference.torch_odin.odin_score` (`tests/torch_odin_test.py` checks they
     agree);
  c. Outlier Exposure step (SPEC 4.4's recipe: --batch_size ID images + labels and
     --oe_outliers outlier images, 128 + 256, lambda 0.5, SGD Nesterov 0.9 + wd 5e-4,
     lr 0.001 cosine over 10 epochs): `objectives.outlier_exposure`'s step run
     through the same `loop.jitted_step` as (a) (crop + flip of both batches, ONE
     train-mode forward pass on their concatenation) vs
     `reference.torch_outlier_exposure.TorchOETrainer`, eager
     (`tests/torch_outlier_exposure_test.py` checks the two losses agree). Its
     "batch" and images/s count ID + outlier images (what goes through the net).
  d. forward pass (inference) at --odin_batch: `evaluation.forward`'s compiled batch
     function (`evaluation.evaluate.forward_kernel`: logits and pre_logits) vs the torch
     model in eval mode under no_grad: what every post-hoc detector on a classifier
     reads, and the floor under ODIN (two forward passes and one input gradient).

Each case: a first call (compile), warm-up, then timed calls of all cases of one
model and part interleaved (A B A B ...), so load from other processes hits every
case alike. Inputs are already on the device. Reported: median ms per call,
images/s, and ratio = torch median / JAX median (> 1: dlsr_jax is faster).

  python -m benchmarks.bench_classifier                          # CPU, ~20 min on 2 cores
  python -m benchmarks.bench_classifier --models=cifar_resnet20 --reps=3 --warmup=1   # smoke
  python -m benchmarks.bench_classifier --device=cuda --reps=50 --warmup=5  # GPU box
  python -m benchmarks.bench_classifier --quick --out_dir=/tmp/bq   # CI smoke test, seconds
  python -m benchmarks.bench_classifier --models=cifar_resnet20 --xla_defaults_too  # options' gain
  python -m benchmarks.bench_classifier --models=cifar_resnet20 --parts=oe --torch_channels_last \
      --xla_defaults_too --json_out=benchmarks/logs/bench_classifier_oe_cpu.json    # OE only

Torch runs with as many intra-op threads as there are cores (--threads) and,
by default, OMP_WAIT_POLICY=PASSIVE: on a CPU shared with other work, spinning
OpenMP threads lose their core and torch slows down many-fold (see
`bench_lfdn.py`). JAX uses XLA's own CPU thread pool (all cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

if __package__ in (None, ""):   # run as a script: make the repo root importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

MODELS = ("cifar_resnet20", "resnet18_32x32")
ODIN_T, ODIN_EPS = 1000.0, 0.0014
TOTAL_STEPS = 150 * 390          # the cosine's length (the paper recipe); irrelevant to speed
PARTS = ("train", "odin", "oe", "forward")
OE_LR, OE_WEIGHT = 1e-3, 0.5     # SPEC 4.4: fine-tune at lr 0.001 cosine, lambda 0.5
OE_TOTAL_STEPS = 10 * 390        # 10 epochs of 128 ID images (CIFAR-10's 50,000)


@dataclasses.dataclass
class Case:
  """A benchmarked callable: `run()`, `sync(out)`, and `check(out)` on the last result."""
  impl: str
  variant: str
  run: Callable[[], Any]
  sync: Callable[[Any], Any]
  check: Callable[[Any], None]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ",".join(MODELS))
  p.add_argument("--parts", default=",".join(PARTS), help="comma list of: " + ",".join(PARTS))
  p.add_argument("--odin_models", default=None,
                 help="models for the ODIN part (default: --models)")
  p.add_argument("--batch_size", type=int, default=128, help="train batch (OE: its ID batch)")
  p.add_argument("--oe_outliers", type=int, default=256, help="OE outlier batch")
  p.add_argument("--odin_batch", type=int, default=256, help="ODIN scoring batch")
  p.add_argument("--warmup", type=int, default=3, help="untimed calls, the compiling one included")
  p.add_argument("--reps", type=int, default=10, help="timed calls per case")
  p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                 help="torch device (JAX uses its default backend)")
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores)")
  p.add_argument("--omp_wait_policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "unset"],
                 help="OMP_WAIT_POLICY for torch's OpenMP threads, set before torch loads")
  p.add_argument("--torch_channels_last", action="store_true",
                 help="also time torch in channels_last memory format (oneDNN's NHWC path)")
  p.add_argument("--jax_precision", default=None,
                 help="also time JAX under jax.default_matmul_precision(this), e.g. bfloat16")
  p.add_argument("--xla_flags", default=None, help="appended to XLA_FLAGS before jax starts")
  p.add_argument("--xla_defaults_too", action="store_true",
                 help="also time the train and OE steps and ODIN compiled without the "
                      "library's XLA CPU options (dlsr_jax.xla_cpu), forward too: both "
                      "choices in one interleaved run")
  p.add_argument("--json_out", default=None,
                 help="default: benchmarks/logs/bench_classifier_<device>.json ('' = none); "
                      "with --quick or --out_dir: <out_dir>/bench_classifier.json")
  p.add_argument("--out_dir", default=None, help="write the JSON here instead of "
                 "benchmarks/logs (never touches the committed logs)")
  p.add_argument("--quick", action="store_true",
                 help="smoke run in seconds: ResNet-20 only, batch 8 (OE: 8 + 8), 1 warm-up, "
                      "1 rep; needs --out_dir or --json_out (never writes benchmarks/logs)")
  args = p.parse_args(argv)
  if args.quick:
    if args.json_out is None and args.out_dir is None:
      p.error("--quick needs --out_dir (or --json_out): it never writes benchmarks/logs")
    args.models, args.odin_models = "cifar_resnet20", None
    args.batch_size, args.odin_batch = min(args.batch_size, 8), min(args.odin_batch, 8)
    args.oe_outliers = min(args.oe_outliers, 8)
    args.warmup, args.reps = 1, 1
  bad = [m for m in args.models.split(",") + (args.odin_models or "").split(",")
         if m and m not in MODELS]
  if bad:
    p.error(f"unknown models {bad}; valid: {', '.join(MODELS)}")
  bad = [q for q in args.parts.split(",") if q not in PARTS]
  if bad:
    p.error(f"unknown parts {bad}; valid: {', '.join(PARTS)}")
  return args


# ------------------------------------------------------------------ setup


def _precision_ctx(precision: Optional[str]):
  import contextlib

  import jax
  return jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()


def _torch_sync(device: str) -> Callable[[Any], None]:
  import torch
  return (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)


def _check_finite(what: str, value) -> None:
  if not np.all(np.isfinite(np.asarray(value, np.float32))):
    raise FloatingPointError(f"{what} is not finite")


def build_models(name: str, device: str):
  """(dlsr_jax Net, torch model on `device`) with the same torch-initialised weights."""
  import torch
  from dlsr_jax import models
  from reference import torch_resnet_cifar
  torch.manual_seed(0)
  ref = (torch_resnet_cifar.CifarResNet(20) if name == "cifar_resnet20"
         else torch_resnet_cifar.ResNet18(10))
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, f"{name}.pth")
    torch.save(ref.state_dict(), path)
    net = models.load(name, path)
  return net, ref.to(device)


def image_batches(n: int, batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """`n` random (uint8 NHWC images [batch, 32, 32, 3], int32 labels [batch]) pairs."""
  rng = np.random.default_rng(seed)
  return [(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
           rng.integers(0, 10, (batch,), dtype=np.int32)) for _ in range(n)]


# ------------------------------------------------------------------ train step


def _xla_defaults(on: bool):
  """While `on`, the library's classifier jits are built without `xla_cpu`'s compile options."""
  import contextlib
  from unittest import mock

  from dlsr_jax import xla_cpu
  return (mock.patch.dict(os.environ, {xla_cpu.ENV_VAR: "0"}) if on
          else contextlib.nullcontext())


def _loop_step_case(obj, streams, what: str, precision: Optional[str] = None,
                    xla_defaults: bool = False) -> Case:
  """A Case running objective `obj`'s step as `loop.fit` runs it (`loop.jitted_step`, state
  donated, the divergence guard's `bad_step` threaded), cycling over `streams` (host batches
  `{stream: {name: array}}`, put on a one-device mesh). `what` names it in errors.

  `xla_defaults`: built without the library's XLA CPU compile options (`dlsr_jax.xla_cpu`).
  """
  import jax

  from dlsr_jax import parallel
  from dlsr_jax.training import loop
  mesh = parallel.make_mesh(jax.devices()[:1])
  with _xla_defaults(xla_defaults):
    init_fn, step_fn = loop.jitted_step(obj.init, obj.step, mesh)   # what `loop.fit` runs
  init_key, loop_key, bad_step = loop.step_inputs(0, mesh)
  xs = [jax.tree.map(functools.partial(parallel.host_to_global, mesh=mesh), b) for b in streams]
  box = {"state": init_fn(init_key), "bad_step": bad_step, "i": 0}

  def run():
    with _precision_ctx(precision):
      box["state"], metrics, box["bad_step"] = step_fn(
          box["state"], xs[box["i"] % len(xs)], loop_key, box["bad_step"])
    box["i"] += 1
    return metrics

  def check(metrics):
    _check_finite(f"JAX {what} loss", metrics["loss"])
    if int(jax.device_get(box["bad_step"])):
      raise FloatingPointError(f"JAX {what} state not finite at step {int(box['bad_step'])}")

  name = ("jit, donated" + (f", precision={precision}" if precision else "")
          + (", XLA CPU defaults" if xla_defaults else ""))
  return Case("jax", name, run, jax.block_until_ready, check)


def jax_train(net, batches, precision: Optional[str] = None, xla_defaults: bool = False) -> Case:
  """The jitted, donated step `loop.fit` runs of cross-entropy training (`_loop_step_case`)."""
  from dlsr_jax.objectives import cross_entropy
  from dlsr_jax.training import optim
  obj = cross_entropy.make(net, optim.sgd(optim.SGDConfig(), TOTAL_STEPS))
  return _loop_step_case(obj, [{"in": {"x": x, "y": y}} for x, y in batches], "train",
                         precision, xla_defaults)


def torch_train(net, model, batches, device: str, channels_last: bool = False) -> Case:
  import copy

  import torch
  from reference import torch_classifier
  tr = torch_classifier.TorchClassifierTrainer(copy.deepcopy(model), net.mean, net.std,
                                               TOTAL_STEPS, channels_last=channels_last)
  xs = [(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device),
         torch.from_numpy(y).long().to(device)) for x, y in batches]
  box = {"i": 0}

  def run():
    out = tr.step(*xs[box["i"] % len(xs)])
    box["i"] += 1
    return out

  return Case("torch", "eager" + (", channels_last" if channels_last else ""), run,
              _torch_sync(device), lambda out: _check_finite("torch loss", out[0].item()))


# ------------------------------------------------------------------ Outlier Exposure


def oe_objective(net, lr: float = OE_LR, total_steps: int = OE_TOTAL_STEPS,
                 augment: bool = True):
  """The library's OE objective as the recipe configures it (SGD Nesterov 0.9, wd 5e-4, cosine).

  The same settings as `reference.torch_outlier_exposure.TorchOETrainer`'s defaults, so
  the benchmark and `tests/torch_outlier_exposure_test.py` build both sides alike.
  """
  from dlsr_jax.objectives import outlier_exposure
  from dlsr_jax.training import optim
  tx = optim.sgd(optim.SGDConfig(learning_rate=lr), total_steps)
  return outlier_exposure.make(net, tx, augment=augment, weight=OE_WEIGHT)


def oe_batches(n: int, batch: int, outliers: int, seed: int) -> list[dict[str, np.ndarray]]:
  """`n` host batches {"x", "y", "x_out"}: random uint8 ID images + labels, outlier images."""
  rng = np.random.default_rng(seed)
  return [{"x": x, "y": y, "x_out": rng.integers(0, 256, (outliers, 32, 32, 3), dtype=np.uint8)}
          for x, y in image_batches(n, batch, seed)]


def torch_oe_trainer(net, model, lr: float = OE_LR, total_steps: int = OE_TOTAL_STEPS,
                     augment: bool = True, channels_last: bool = False):
  """`TorchOETrainer` on (a copy of) `model` with `oe_objective`'s settings."""
  import copy

  from reference import torch_outlier_exposure
  return torch_outlier_exposure.TorchOETrainer(
      copy.deepcopy(model), net.mean, net.std, total_steps, lr=lr, weight=OE_WEIGHT,
      augment=augment, channels_last=channels_last)


def jax_oe(net, batches, xla_defaults: bool = False) -> Case:
  """The OE step as `loop.fit` runs it (`_loop_step_case`): the streams "in" ({"x", "y"})
  and "outliers" ({"x"}), as `fit` feeds them."""
  return _loop_step_case(oe_objective(net), [
      {"in": {"x": b["x"], "y": b["y"]}, "outliers": {"x": b["x_out"]}} for b in batches],
      "OE", xla_defaults=xla_defaults)


def torch_oe(net, model, batches, device: str, channels_last: bool = False) -> Case:
  """`TorchOETrainer.step`, eager: one forward pass on the ID + outlier batch."""
  import torch
  tr = torch_oe_trainer(net, model, channels_last=channels_last)

  def nchw(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().to(device)

  xs = [(nchw(b["x"]), torch.from_numpy(b["y"]).long().to(device), nchw(b["x_out"]))
        for b in batches]
  box = {"i": 0}

  def run():
    out = tr.step(*xs[box["i"] % len(xs)])
    box["i"] += 1
    return out

  return Case("torch", "eager" + (", channels_last" if channels_last else ""), run,
              _torch_sync(device), lambda out: _check_finite("torch OE loss", out[0].item()))


# ------------------------------------------------------------------ ODIN


def jax_odin(net, batches, precision: Optional[str] = None, xla_defaults: bool = False) -> Case:
  """The kernel `detectors.odin.make` scores with (`odin.odin_kernel`: net bound, params an
  argument, the library's XLA CPU options for a conv net on CPU).

  `xla_defaults`: compiled without those options (`dlsr_jax.xla_cpu`).
  """
  import jax
  from dlsr_jax.detectors import odin
  with _xla_defaults(xla_defaults):
    kernel = odin.odin_kernel(net, clip=False)
  params = jax.device_put(net.params)
  xs = [jax.device_put(x) for x, _ in batches]
  box = {"i": 0}

  def run():
    with _precision_ctx(precision):
      out = kernel(params, xs[box["i"] % len(xs)], ODIN_T, ODIN_EPS)
    box["i"] += 1
    return out

  name = ("jit" + (f", precision={precision}" if precision else "")
          + (", XLA CPU defaults" if xla_defaults else ""))
  return Case("jax", name, run, jax.block_until_ready, lambda s: _check_finite("JAX ODIN", s))


# ------------------------------------------------------------------ forward (inference)


def jax_forward(net, batches, xla_defaults: bool = False) -> Case:
  """`evaluation.forward`'s compiled batch function (`evaluation.evaluate.forward_kernel`,
  with the library's XLA CPU options for a conv net): logits and pre_logits of a uint8
  batch. `xla_defaults`: built without those options (`dlsr_jax.xla_cpu`)."""
  import jax

  from dlsr_jax.evaluation.evaluate import forward_kernel
  with _xla_defaults(xla_defaults):
    kernel = forward_kernel(net)
  params = jax.device_put(net.params)
  xs = [jax.device_put(x) for x, _ in batches]
  box = {"i": 0}

  def run():
    out = kernel(params, xs[box["i"] % len(xs)])
    box["i"] += 1
    return out

  return Case("jax", "jit" + (", XLA CPU defaults" if xla_defaults else ""), run,
              jax.block_until_ready, lambda o: _check_finite("JAX logits", o["logits"]))


def torch_forward(net, model, batches, device: str, channels_last: bool = False) -> Case:
  import copy

  import torch
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = copy.deepcopy(model).eval().to(memory_format=fmt)
  m = torch.tensor(net.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
  s = torch.tensor(net.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
  xs = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt).to(device)
        for x, _ in batches]
  box = {"i": 0}

  def run():
    with torch.no_grad():
      out = model((xs[box["i"] % len(xs)].float() / 255.0 - m) / s)
    box["i"] += 1
    return out

  return Case("torch", "eager" + (", channels_last" if channels_last else ""), run,
              _torch_sync(device), lambda o: _check_finite("torch logits", o[0].cpu().numpy()))


def torch_odin(net, model, batches, device: str, channels_last: bool = False) -> Case:
  import copy

  import torch
  from reference import torch_odin as ref_odin
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = copy.deepcopy(model).eval().to(memory_format=fmt)
  xs = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt).to(device)
        for x, _ in batches]
  box = {"i": 0}

  def run():
    out = ref_odin.odin_score(model, xs[box["i"] % len(xs)], net.mean, net.std, ODIN_T, ODIN_EPS)
    box["i"] += 1
    return out

  return Case("torch", "eager" + (", channels_last" if channels_last else ""), run,
              _torch_sync(device), lambda s: _check_finite("torch ODIN", s.cpu().numpy()))


# ------------------------------------------------------------------ driver


def measure(part: str, model: str, batch: int, cases: Sequence[Case], warmup: int,
            reps: int) -> list[dict[str, Any]]:
  """Times `cases` interleaved; ratio = first torch case / row (> 1: faster than torch)."""
  timings = common.time_interleaved([(c.run, c.sync) for c in cases], warmup, reps)
  rows = []
  for c, t in zip(cases, timings):
    c.check(t.last)
    t.last = None
    rows.append({"part": part, "model": model, "impl": c.impl, "variant": c.variant,
                 "batch": batch, "first_call_s": t.first_ms / 1e3, "median_ms": t.median_ms,
                 "min_ms": t.min_ms, "images_per_s": batch / t.median_ms * 1e3,
                 "times_ms": t.times_ms})
  base = next(r for r in rows if r["impl"] == "torch")
  for r in rows:
    r["ratio"] = base["median_ms"] / r["median_ms"]
  print(common.format_table(rows, ["part", "model", "impl", "variant", "median_ms",
                                   "images_per_s", "ratio"]), flush=True)
  return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per part and model: the default JAX case vs the default torch case."""
  out = []
  for part, model in dict.fromkeys((r["part"], r["model"]) for r in rows):
    sel = [r for r in rows if r["part"] == part and r["model"] == model]
    j = next(r for r in sel if r["impl"] == "jax")
    t = next(r for r in sel if r["impl"] == "torch")
    out.append({"part": part, "model": model, "batch": j["batch"], "jax_ms": j["median_ms"],
                "torch_ms": t["median_ms"], "jax_images_per_s": j["images_per_s"],
                "torch_images_per_s": t["images_per_s"],
                "ratio_torch_over_jax": t["median_ms"] / j["median_ms"]})
  return out


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  t_start = time.time()
  machine = common.machine_info()
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch
  if args.omp_wait_policy != "unset":
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
  import jax
  import torch
  tdev = args.device
  if tdev == "auto":
    tdev = "cuda" if torch.cuda.is_available() else "cpu"
  if tdev == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device=cuda but torch.cuda.is_available() is False")
  threads = args.threads or common.num_cores()
  torch.set_num_threads(threads)
  machine.update(xla_flags=os.environ.get("XLA_FLAGS", ""),
                 omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "unset"))
  versions = common.package_versions(["jax", "jaxlib", "flax", "optax", "torch", "numpy"])
  versions.update(jax_backend=jax.default_backend(), jax_devices=[str(d) for d in jax.devices()],
                  torch_device=tdev, torch_threads=torch.get_num_threads())
  print(f"jax {versions['jax']} on {jax.default_backend()}; torch {versions['torch']} on {tdev}, "
        f"{threads} threads, OMP_WAIT_POLICY={machine['omp_wait_policy']}; "
        f"load average {machine['load_average']}", flush=True)
  parts = args.parts.split(",")
  train_models = args.models.split(",") if "train" in parts else []
  odin_models = (args.odin_models or args.models).split(",") if "odin" in parts else []
  oe_models = args.models.split(",") if "oe" in parts else []
  forward_models = args.models.split(",") if "forward" in parts else []
  rows: list[dict[str, Any]] = []
  for name in dict.fromkeys(train_models + odin_models + oe_models + forward_models):
    net, model = build_models(name, tdev)
    if name in train_models:
      b = image_batches(2, args.batch_size, seed=1)
      cases = [jax_train(net, b), torch_train(net, model, b, tdev)]
      if args.jax_precision:
        cases.append(jax_train(net, b, args.jax_precision))
      if args.xla_defaults_too:
        cases.append(jax_train(net, b, xla_defaults=True))
      if args.torch_channels_last:
        cases.append(torch_train(net, model, b, tdev, channels_last=True))
      rows += measure("train", name, args.batch_size, cases, args.warmup, args.reps)
      del cases
    if name in odin_models:
      b = image_batches(2, args.odin_batch, seed=2)
      cases = [jax_odin(net, b), torch_odin(net, model, b, tdev)]
      if args.jax_precision:
        cases.append(jax_odin(net, b, args.jax_precision))
      if args.xla_defaults_too:
        cases.append(jax_odin(net, b, xla_defaults=True))
      if args.torch_channels_last:
        cases.append(torch_odin(net, model, b, tdev, channels_last=True))
      rows += measure("odin", name, args.odin_batch, cases, args.warmup, args.reps)
      del cases
    if name in oe_models:
      b = oe_batches(2, args.batch_size, args.oe_outliers, seed=3)
      cases = [jax_oe(net, b), torch_oe(net, model, b, tdev)]
      if args.xla_defaults_too:
        cases.append(jax_oe(net, b, xla_defaults=True))
      if args.torch_channels_last:
        cases.append(torch_oe(net, model, b, tdev, channels_last=True))
      rows += measure("oe", name, args.batch_size + args.oe_outliers, cases, args.warmup,
                      args.reps)
      del cases
    if name in forward_models:
      b = image_batches(2, args.odin_batch, seed=4)
      cases = [jax_forward(net, b), torch_forward(net, model, b, tdev)]
      if args.xla_defaults_too:
        cases.append(jax_forward(net, b, xla_defaults=True))
      if args.torch_channels_last:
        cases.append(torch_forward(net, model, b, tdev, channels_last=True))
      rows += measure("forward", name, args.odin_batch, cases, args.warmup, args.reps)
      del cases
  summ = summary(rows)
  info = {"machine": machine, "versions": versions, "args": vars(args),
          "load_average_end": common.load_average(), "wall_s": time.time() - t_start}
  print(f"\n== summary (ratio > 1: dlsr_jax is faster); load average at end "
        f"{info['load_average_end']}, wall {info['wall_s']:.0f} s ==")
  print(common.format_table(summ, ["part", "model", "batch", "jax_ms", "torch_ms",
                                   "jax_images_per_s", "torch_images_per_s",
                                   "ratio_torch_over_jax"]))
  json_out = args.json_out
  if json_out is None and args.out_dir:
    json_out = os.path.join(args.out_dir, "bench_classifier.json")
  if json_out is None:
    json_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logs",
                            f"bench_classifier_{tdev}.json")
  if json_out:
    common.save_json(json_out, {**info, "results": rows, "summary": summ})
    print(f"wrote {json_out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
