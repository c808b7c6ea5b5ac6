"""LFDN train-step and scoring throughput: dlsr_jax versus an equivalent PyTorch baseline.

One run, one machine, the same model sizes (paper: C=720, W=1440, E=720, N=16;
cpu: C=512, W=512, E=256, N=4):

  a. train step (x0 loss, AdamW, EMA): the jitted, donated step `trainer.fit`
     runs (`loop.jitted_step` of `trainer.lfdn_init_and_step`) vs
     `reference.torch_lfdn.TorchTrainer`
     (eager, and `torch.compile` where asked and working), in ms/step;
  b. scoring from cached features (DDIM from level k, MSE + MFsim): our jitted
     `dlsr_jax.scoring.make_score_fn` vs `reference.torch_lfdn.score` under
     `torch.inference_mode()`, in images/s; on the smallest size also several
     ks at once (our vmap over ks vs one jitted call per k).

Each case: a first call (compile), warm-up, then the median of timed calls with
state and batches already on the device. The head-to-head pair (our strict-fp32
run and torch fp32 eager) is timed interleaved (A B A B ...) so that load from
other processes hits both; the other variants run one after the other.
`ratio` = torch fp32 eager time per item / this row's (> 1: faster than the
PyTorch baseline). JAX variants try what XLA offers (bf16 compute, matmul
precision, PRNG implementation, batch size, donation, one jit per k); PyTorch
variants try 1 thread, fused AdamW, torch.compile, bf16 autocast (and TF32 on
CUDA, where JAX's default precision is TF32: our strict-fp32 row asks for
precision "highest" there).

  python -m benchmarks.bench_lfdn --quick --out_dir=/tmp/bq   # smoke run, tiny size, seconds
  python -m benchmarks.bench_lfdn --omp_wait_policy=PASSIVE --json_out=/tmp/b.json
                                                          # full run, < 10 min on 2 cores
  python -m benchmarks.bench_lfdn --device=cuda --score_batch=4096 --reps=20 \
      --paper_reps=20 --torch_compile=all                 # on a GPU machine
  python -m benchmarks.bench_lfdn --xla_flags="--xla_cpu_enable_fast_math=true"

On a CPU shared with other work, pass --omp_wait_policy=PASSIVE: torch's
spinning OpenMP threads otherwise lose their core to the other processes and a
2-thread step can get 10-100x slower (seen here), which flatters dlsr_jax.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

if __package__ in (None, ""):   # run as a script: make the repo root importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Size:
  """A model size and its benchmark batch sizes."""
  name: str
  features: int
  width: int
  embed_dim: int
  num_blocks: int
  train_batch: int
  boundaries: tuple[int, ...]   # MFsim layers


SIZES = {
    # EfficientNet-B4 levels 24 + 32 + 56 + 160 + 448 = 720 channels.
    "paper": Size("paper", 720, 1440, 720, 16, 256, (0, 24, 56, 112, 272, 720)),
    "cpu": Size("cpu", 512, 512, 256, 4, 128, (0, 32, 96, 224, 512)),
    "tiny": Size("tiny", 64, 64, 32, 2, 32, (0, 16, 32, 64)),
}


@dataclasses.dataclass(frozen=True)
class JaxVariant:
  """A way to run our code: compute dtype, matmul precision, PRNG, donation, batch."""
  name: str
  dtype: str = "float32"
  precision: Optional[str] = None     # jax.default_matmul_precision (None: XLA's default)
  prng: str = "threefry2x32"          # scoring key implementation
  donate: bool = True
  score_batch_scale: float = 1.0      # x --score_batch
  loop_k: bool = False                # one jitted call per k instead of vmap over ks
  fp32: bool = True                   # full-fp32 matmuls (False: bf16 / TF32)
  minor: bool = False                 # skipped at paper size on CPU (little to learn, slow)


@dataclasses.dataclass(frozen=True)
class TorchVariant:
  name: str
  compile: bool = False
  fused_adamw: Optional[bool] = None
  bf16: bool = False                  # torch.autocast(bfloat16)
  tf32: bool = False                  # CUDA matmuls in TF32
  threads: int = 0                    # CPU threads (0: --threads)
  minor: bool = False                 # skipped at paper size on CPU

  @property
  def fp32(self) -> bool:
    return not (self.bf16 or self.tf32)


def jax_variants(part: str, gpu: bool) -> list[JaxVariant]:
  """Our variants; the first is the head-to-head one (strict fp32).

  On GPUs XLA's default precision lets fp32 matmuls run in TF32, so the
  strict-fp32 baseline there asks for precision "highest".
  """
  if gpu:
    base = [JaxVariant("fp32 prec=highest", precision="highest"),
            JaxVariant("tf32 (XLA default)", fp32=False)]
  else:
    base = [JaxVariant("fp32")]
  bf16 = [JaxVariant("fp32 prec=bf16", precision="bfloat16", fp32=False, minor=not gpu),
          JaxVariant("bf16 compute", dtype="bfloat16", fp32=False),
          JaxVariant("bf16 matmul", dtype="bf16_matmul", fp32=False)]
  if part == "train":
    return base + [JaxVariant("fp32 no-donate", precision=base[0].precision,
                              donate=False, minor=True)] + bf16
  if part == "score_multi_k":
    return [dataclasses.replace(base[0], name=base[0].name + " vmap(ks)"),
            dataclasses.replace(base[0], name=base[0].name + " loop(k)", loop_k=True)]
  batches = [dataclasses.replace(base[0], name=f"{base[0].name} batch{tag}", score_batch_scale=x,
                                 minor=minor)
             for tag, x, minor in (("/4", 0.25, True), ("/2", 0.5, False), ("*2", 2.0, True))]
  rbg = dataclasses.replace(base[0], name=base[0].name + " prng=unsafe_rbg", prng="unsafe_rbg",
                            minor=True)
  return base + [rbg] + bf16 + batches


def torch_variants(part: str, gpu: bool) -> list[TorchVariant]:
  """PyTorch variants; the first (fp32 eager) is the baseline of every ratio."""
  out = [TorchVariant("fp32 eager")]
  if part == "score_multi_k":
    return out
  out += [TorchVariant("tf32 eager", tf32=True)] if gpu else [
      TorchVariant("fp32 eager 1-thread", threads=1)]
  if part == "train":
    out.append(TorchVariant("fp32 eager fused-adamw", fused_adamw=True, minor=True))
  return out + [TorchVariant("fp32 compile", compile=True),
                TorchVariant("bf16 autocast", bf16=True)]


TORCH_THREADS = [1]   # set by main: --threads or all cores


# ------------------------------------------------------------------ setup


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="smoke run in seconds: tiny size, fp32 pair only (no torch.compile, no "
                      "multi-k case), 1 warm-up, 1 rep; needs --out_dir or --json_out")
  p.add_argument("--sizes", default="paper,cpu", help="comma list of: " + ",".join(SIZES))
  p.add_argument("--parts", default="train,score", help="comma list of: train,score")
  p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                 help="torch device (JAX uses its default backend)")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  p.add_argument("--omp_wait_policy", default=None, choices=["PASSIVE", "ACTIVE"],
                 help="OMP_WAIT_POLICY for torch's OpenMP threads, set before torch loads. "
                      "PASSIVE keeps torch usable when other processes share the cores "
                      "(ACTIVE spinning made a 2-thread step up to 100x slower here)")
  p.add_argument("--ks", default="3", help="noise levels for scoring, e.g. 3 or 3,5,10")
  p.add_argument("--multi_k", default="3,5,10",
                 help="extra scoring case on the smallest size: vmap over these ks vs a "
                      "loop over k ('' to skip)")
  p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (1.0: paper)")
  p.add_argument("--score_batch", type=int, default=512)
  p.add_argument("--score_batches", type=int, default=2, help="distinct batches cycled")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--reps", type=int, default=5, help="timed reps (paper size: --paper_reps)")
  p.add_argument("--paper_reps", type=int, default=3)
  p.add_argument("--paper_warmup", type=int, default=1, help="warm-up calls at paper size, "
                 "the compiling first call included")
  p.add_argument("--impls", default="jax,torch", help="comma list of: jax,torch")
  p.add_argument("--all_variants_at_paper_size", action="store_true",
                 help="on CPU the paper size skips minor variants (donation, matmul precision, "
                      "PRNG, odd batch sizes, fused AdamW) unless this is set")
  p.add_argument("--time_budget_s", type=float, default=540.0,
                 help="after this many seconds only head-to-head pairs are still measured")
  p.add_argument("--variants", default="all", choices=["all", "base", "matmul"],
                 help="'base': only fp32 (ours) vs fp32 eager (torch); 'matmul': those two "
                      "and the bf16-matmul ones (ours: bf16 matmul, torch: bf16 autocast)")
  p.add_argument("--interleave_all", action="store_true",
                 help="time every selected variant of a part interleaved (A B C A B C ...), "
                      "not only the fp32 pair: comparable under changing load")
  p.add_argument("--torch_compile", default="small", choices=["none", "small", "all"],
                 help="torch.compile variants: none, on sizes other than paper, or all "
                      "(compiling the paper size takes minutes on 2 CPU cores)")
  p.add_argument("--xla_flags", default=None, help="appended to XLA_FLAGS before jax starts")
  p.add_argument("--json_out", default=None, help="write all results here")
  p.add_argument("--out_dir", default=None,
                 help="write <out_dir>/bench_lfdn.json (unless --json_out is given)")
  args = p.parse_args(argv)
  if args.quick:
    if args.json_out is None and args.out_dir is None:
      p.error("--quick needs --out_dir (or --json_out)")
    args.sizes, args.warmup, args.reps, args.paper_reps = "tiny", 1, 1, 1
    args.paper_warmup = 1
    args.score_batch, args.score_batches = min(args.score_batch, 64), 1
    args.variants, args.torch_compile, args.multi_k = "base", "none", ""
  if args.json_out is None and args.out_dir:
    args.json_out = os.path.join(args.out_dir, "bench_lfdn.json")
  return args


def import_jax(xla_flags: Optional[str]):
  """Imports jax after adding `xla_flags` to XLA_FLAGS (they are read once, at start).

  On a GPU, JAX would otherwise take 75% of its memory up front and leave
  too little for PyTorch in the same process.
  """
  if xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags).strip()
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax
  return jax


def torch_device(name: str) -> str:
  import torch
  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  if name == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device=cuda but torch.cuda.is_available() is False")
  return name


def torch_sync(device: str) -> Callable[[Any], None]:
  import torch
  if device == "cuda":
    return lambda _: torch.cuda.synchronize()
  return lambda _: None


def set_tf32(on: bool) -> None:
  """CUDA fp32 matmuls in TF32 or not (PyTorch's default: not)."""
  import torch
  torch.backends.cuda.matmul.allow_tf32 = on
  torch.backends.cudnn.allow_tf32 = on


def with_threads(run: Callable[[], Any], threads: int) -> Callable[[], Any]:
  """`run` with torch's intra-op thread count set first (variants differ in it)."""
  import torch

  def wrapped():
    if torch.get_num_threads() != threads:
      torch.set_num_threads(threads)
    return run()

  return wrapped


def versions_and_devices(tdev: str) -> dict[str, Any]:
  import jax
  import torch
  info = common.package_versions(["jax", "jaxlib", "flax", "optax", "torch", "numpy"])
  info["jax_devices"] = [str(d) for d in jax.devices()]
  info["jax_backend"] = jax.default_backend()
  info["torch_device"] = tdev
  info["torch_threads"] = torch.get_num_threads()
  if tdev == "cuda":
    info["torch_cuda_device"] = torch.cuda.get_device_name(0)
  return info


def lfdn_config(size: Size, dtype: str = "float32"):
  from dlsr_jax import lfdn
  return lfdn.LFDNConfig(features=size.features, width=size.width, embed_dim=size.embed_dim,
                         num_blocks=size.num_blocks, dtype=dtype)


def init_params(size: Size):
  """Jitted LFDN init (eager init compiles op by op)."""
  import jax
  from dlsr_jax import lfdn
  return jax.jit(lambda k: lfdn.init_params(lfdn_config(size), k))(jax.random.key(0))


def feature_batches(n: int, batch: int, c: int, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(batch, c)).astype(np.float32) for _ in range(n)]


def free_memory() -> None:
  gc.collect()
  try:
    import torch
    if torch.cuda.is_available():
      torch.cuda.empty_cache()
  except ImportError:
    pass


def is_gpu() -> bool:
  import jax
  return jax.default_backend() in ("gpu", "cuda", "rocm")


def precision_ctx(precision: Optional[str]):
  import contextlib

  import jax
  return jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()


def row(part: str, size: Size, impl: str, variant: str, timing: Optional[common.Timing],
        batch: int, error: Optional[str] = None) -> dict[str, Any]:
  r = {"part": part, "size": size.name, "impl": impl, "variant": variant, "batch": batch}
  if timing is not None:
    r.update(first_call_s=timing.first_ms / 1e3, median_ms=timing.median_ms,
             min_ms=timing.min_ms, times_ms=timing.times_ms)
    if part.startswith("score"):
      r["images_per_s"] = batch / (timing.median_ms / 1e3)
  if error:
    r["error"] = error
  return r


def report_progress(r: dict[str, Any]) -> None:
  msg = r.get("error") or f"{r['median_ms']:.1f} ms (first call {r['first_call_s']:.1f} s)"
  print(f"  [{r['part']}/{r['size']}] {r['impl']:5s} {r['variant']:24s} {msg}", flush=True)


@dataclasses.dataclass
class Case:
  """A prepared benchmark case: `sync(run())` is one timed call; `check(result)` validates."""
  run: Callable[[], Any]
  sync: Callable[[Any], Any]
  check: Callable[[Any], None]


def _check_finite(what: str, value) -> None:
  if not np.all(np.isfinite(np.asarray(value, np.float32))):
    raise FloatingPointError(f"{what} is not finite")


# ------------------------------------------------------------------ train step


def jax_train(size: Size, v: JaxVariant, params, batches) -> Case:
  """The LFDN step `trainer.fit` runs: `loop.jitted_step` of `trainer.lfdn_init_and_step`.

  The state starts from `params` (the torch side's weights); the step is the
  loop's keyed, donated step with its divergence guard. The no-donate variant
  jits the same keyed step without donation.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from dlsr_jax import parallel, schedule, train, trainer
  from dlsr_jax.training import loop
  cfg = lfdn_config(size, v.dtype)
  ocfg = train.OptimConfig()
  tx = train.make_optimizer(ocfg)
  abar = np.asarray(schedule.make_schedule().alphas_cumprod, np.float32).tobytes()
  init, pure_step = trainer.lfdn_init_and_step(cfg, ocfg, abar)
  mesh = parallel.make_mesh(jax.devices()[:1])
  init_fn, step_fn = loop.jitted_step(init, pure_step, mesh)
  init_key, key, bad_step = loop.step_inputs(1, mesh)
  # The loop's own step-0 state (its structure whatever TrainState holds), with `params`.
  state = jax.jit(lambda s, p: s.replace(params=p, opt_state=tx.init(p),
                                         ema_params=jax.tree.map(jnp.copy, p)),
                  out_shardings=parallel.replicated(mesh))(init_fn(init_key), params)
  if not v.donate:   # the same keyed step (jax.jit keeps it as __wrapped__), not donated
    step_fn = jax.jit(step_fn.__wrapped__)
  xs = [{"in": {"z": parallel.host_to_global(b, mesh)}} for b in batches]
  box = {"state": state, "bad": bad_step, "i": 0}
  del state

  def run():
    with precision_ctx(v.precision):
      box["state"], metrics, box["bad"] = step_fn(box["state"], xs[box["i"] % len(xs)], key,
                                                  box["bad"])
    box["i"] += 1
    return metrics

  def check(metrics):
    _check_finite("JAX loss", metrics["loss"])
    if int(jax.device_get(box["bad"])):
      raise FloatingPointError("JAX train state not finite")

  return Case(run, jax.block_until_ready, check)


def torch_model(size: Size, params, device: str):
  from reference import torch_lfdn
  model = torch_lfdn.TorchLFDN.from_config(lfdn_config(size))
  return torch_lfdn.load_flax_params(model, params).to(device)


def torch_train(size: Size, v: TorchVariant, params, batches, device: str) -> Case:
  """The PyTorch train step (same init params, schedule, AdamW, EMA)."""
  import torch
  from reference import torch_lfdn
  from dlsr_jax import schedule, train
  ocfg = train.OptimConfig()
  tr = torch_lfdn.TorchTrainer(torch_model(size, params, device),
                               schedule.make_schedule().alphas_cumprod, ocfg.learning_rate,
                               ocfg.weight_decay, ocfg.b1, ocfg.b2, ocfg.eps, ocfg.ema_decay,
                               compile_model=v.compile, fused=v.fused_adamw)
  xs = [torch.from_numpy(b).to(device) for b in batches]
  box = {"i": 0}

  def run():
    set_tf32(v.tf32)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=v.bf16):
      out = tr.step(xs[box["i"] % len(xs)])
    box["i"] += 1
    return out

  return Case(with_threads(run, v.threads or TORCH_THREADS[0]), torch_sync(device),
              lambda out: _check_finite("torch loss", out[0].item()))


# ------------------------------------------------------------------ scoring


def score_batch_size(v: JaxVariant, base: int) -> int:
  return max(int(round(base * v.score_batch_scale)), 1)


def jax_score(size: Size, v: JaxVariant, params, z: list[np.ndarray], ks: Sequence[int],
              eta: float) -> Case:
  """Our jitted multi-k scorer on batches already on the device."""
  import jax
  import jax.numpy as jnp
  from dlsr_jax import diffusion, schedule, scoring, train
  cfg = lfdn_config(size, v.dtype)
  score_cfg = scoring.ScoreConfig(boundaries=size.boundaries,
                                  ddim=diffusion.DDIMConfig(stride=1, eta=eta))
  fn = jax.jit(scoring.make_score_fn(train.lfdn_apply_fn(cfg),
                                     schedule.make_schedule().alphas_cumprod, score_cfg))
  params = jax.device_put(params)
  xs = [jax.device_put(b) for b in z]
  ids = [jnp.arange(i * len(b), (i + 1) * len(b), dtype=jnp.int32) for i, b in enumerate(z)]
  k_sets = [[k] for k in ks] if v.loop_k else [list(ks)]
  k_sets = [jnp.asarray(k, jnp.int32) for k in k_sets]
  key = jax.random.key(2, impl=v.prng)
  box = {"i": 0}

  def run():
    i = box["i"] % len(xs)
    box["i"] += 1
    with precision_ctx(v.precision):
      return [fn(params, xs[i], ids[i], k, key) for k in k_sets]

  return Case(run, jax.block_until_ready,
              lambda out: [_check_finite("JAX scores", o["mse"]) for o in out])


def torch_score(size: Size, v: TorchVariant, params, z: list[np.ndarray], ks: Sequence[int],
                eta: float, device: str) -> Case:
  """The PyTorch multi-k scorer under inference_mode."""
  import torch
  from reference import torch_lfdn
  from dlsr_jax import schedule
  model = torch_model(size, params, device).eval()
  fwd = torch.compile(model) if v.compile else model
  abar = schedule.make_schedule().alphas_cumprod
  cfg = torch_lfdn.TorchScoreConfig(boundaries=size.boundaries, stride=1, eta=eta)
  xs = [torch.from_numpy(b).to(device) for b in z]
  gen = torch.Generator(device=device).manual_seed(2)
  box = {"i": 0}

  def run():
    i = box["i"] % len(xs)
    box["i"] += 1
    set_tf32(v.tf32)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=v.bf16):
      return torch_lfdn.score(fwd, xs[i], ks, abar, cfg, gen=gen)

  return Case(with_threads(run, v.threads or TORCH_THREADS[0]), torch_sync(device),
              lambda out: _check_finite("torch scores", out["mse"].float().cpu().numpy()))


# ------------------------------------------------------------------ driver


def select(variants, args, size: Size, torch_side: bool = False):
  if ("torch" if torch_side else "jax") not in args.impls.split(","):
    return []
  if args.variants == "base":
    variants = variants[:1]
  elif args.variants == "matmul":
    variants = variants[:1] + [v for v in variants if v.name in ("bf16 matmul", "bf16 autocast")]
  if size.name == "paper" and not is_gpu() and not args.all_variants_at_paper_size:
    variants = [v for v in variants if not v.minor]
  if torch_side:
    allow = args.torch_compile == "all" or (args.torch_compile == "small" and size.name != "paper")
    variants = [v for v in variants if allow or not v.compile]
  return variants


@dataclasses.dataclass
class Spec:
  """One row to measure: who, which variant, batch size, and how to build its Case."""
  impl: str
  variant: str
  fp32: bool
  batch: int
  build: Callable[[], Case]


def _error(e: Exception) -> str:
  first_line = str(e).splitlines()[0][:160] if str(e) else ""
  return f"{type(e).__name__}: {first_line}"


def measure(part: str, size: Size, specs: Sequence[Spec], warmup: int,
            reps: int) -> list[dict[str, Any]]:
  """Times `specs` together, timed calls interleaved; a failure becomes error rows."""
  timings, err = [None] * len(specs), None
  try:
    cases = [s.build() for s in specs]
    timings = common.time_interleaved([(c.run, c.sync) for c in cases], warmup, reps)
    for c, t in zip(cases, timings):
      c.check(t.last)
  except Exception as e:  # noqa: BLE001 -- e.g. torch.compile without a compiler: report, go on
    err = _error(e)
    timings = [None] * len(specs)
  finally:
    cases = None
    free_memory()
  rows = []
  for s, t in zip(specs, timings):
    rows.append(row(part, size, s.impl, s.variant, t, s.batch, err))
    rows[-1].update(fp32=s.fp32, interleaved=len(specs) > 1)
    if t is not None:
      t.last = None
    report_progress(rows[-1])
  return rows


def measure_all(part: str, size: Size, specs: Sequence[Spec], warmup: int, reps: int,
                deadline: float, interleave_all: bool = False) -> list[dict[str, Any]]:
  """The first JAX and the first torch spec head to head (interleaved), then the others.

  Past `deadline` (time.time()), the other specs are skipped. `interleave_all`: every
  spec in one interleaved measurement.
  """
  if interleave_all:
    return measure(part, size, specs, warmup, reps)
  first_jax = next((s for s in specs if s.impl == "jax"), None)
  first_torch = next((s for s in specs if s.impl == "torch"), None)
  pair = [s for s in (first_jax, first_torch) if s is not None]
  rows = measure(part, size, pair, warmup, reps) if pair else []
  for s in specs:
    if s in pair:
      continue
    if time.time() > deadline:
      rows.append(row(part, size, s.impl, s.variant, None, s.batch, "skipped: time budget"))
      rows[-1].update(fp32=s.fp32, interleaved=False)
      continue
    rows += measure(part, size, [s], warmup, reps)
  return rows


def train_specs(size: Size, args, tdev: str, params) -> list[Spec]:
  gpu = is_gpu()
  batches = feature_batches(2, size.train_batch, size.features)
  specs = [Spec("jax", v.name, v.fp32, size.train_batch,
                functools.partial(jax_train, size, v, params, batches))
           for v in select(jax_variants("train", gpu), args, size)]
  specs += [Spec("torch", v.name, v.fp32, size.train_batch,
                 functools.partial(torch_train, size, v, params, batches, tdev))
            for v in select(torch_variants("train", tdev == "cuda"), args, size,
                            torch_side=True)]
  return specs


def score_specs(size: Size, args, tdev: str, params, ks: Sequence[int],
                part: str = "score") -> list[Spec]:
  """Scoring specs; part "score_multi_k" compares vmap over ks with a loop over k."""
  specs = []
  for v in select(jax_variants(part, is_gpu()), args, size):
    b = score_batch_size(v, args.score_batch)
    z = feature_batches(args.score_batches, b, size.features, seed=1)
    specs.append(Spec("jax", v.name, v.fp32, b,
                      functools.partial(jax_score, size, v, params, z, ks, args.eta)))
  z = feature_batches(args.score_batches, args.score_batch, size.features, seed=1)
  specs += [Spec("torch", v.name, v.fp32, args.score_batch,
                 functools.partial(torch_score, size, v, params, z, ks, args.eta, tdev))
            for v in select(torch_variants(part, tdev == "cuda"), args, size, torch_side=True)]
  return specs


def _per_item(r: dict[str, Any]) -> float:
  return r["median_ms"] / r["batch"]


def add_ratios(rows: list[dict[str, Any]]) -> None:
  """ratio = (torch fp32 eager time per item) / (this row's time per item), per part and size."""
  for r in rows:
    base = [b for b in rows if b["part"] == r["part"] and b["size"] == r["size"]
            and b["impl"] == "torch" and b["variant"] == "fp32 eager" and "median_ms" in b]
    if base and "median_ms" in r:
      r["ratio"] = _per_item(base[0]) / _per_item(r)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per part and size: the interleaved fp32 pair, then best vs best (fp32; any precision)."""
  out = []
  keys = list(dict.fromkeys((r["part"], r["size"]) for r in rows))
  for part, size in keys:
    ok = [r for r in rows if r["part"] == part and r["size"] == size and "median_ms" in r]
    for label, pick in (("head-to-head fp32", lambda r: r["interleaved"] and r["fp32"]),
                        ("best fp32", lambda r: r["fp32"]), ("best any", lambda r: True)):
      j = [r for r in ok if r["impl"] == "jax" and pick(r)]
      t = [r for r in ok if r["impl"] == "torch" and pick(r)]
      if not j or not t:
        continue
      bj, bt = min(j, key=_per_item), min(t, key=_per_item)
      s = {"part": part, "size": size, "compare": label, "jax_variant": bj["variant"],
           "torch_variant": bt["variant"], "ratio_torch_over_jax": _per_item(bt) / _per_item(bj)}
      if part == "train":
        s.update(jax_ms_per_step=bj["median_ms"], torch_ms_per_step=bt["median_ms"])
      else:
        s.update(jax_images_per_s=bj["images_per_s"], torch_images_per_s=bt["images_per_s"])
      out.append(s)
  return out


def print_report(info: dict[str, Any], rows: list[dict[str, Any]], summ: list[dict[str, Any]]):
  m = info["machine"]
  print("\n== machine ==")
  print(f"cpu: {m['cpu']}  cores: {m['cores']}  memory: {m['memory_gb']} GB  "
        f"simd: {' '.join(m['simd'])}")
  print(f"load average at start: {m['load_average']}  at end: {info['load_average_end']}")
  print("versions: " + ", ".join(f"{k} {info['versions'][k]}" for k in
                                 ("jax", "jaxlib", "flax", "optax", "torch", "numpy")))
  print(f"jax backend: {info['versions']['jax_backend']} {info['versions']['jax_devices']}; "
        f"torch device: {info['versions']['torch_device']} "
        f"({info['versions']['torch_threads']} threads, OMP_WAIT_POLICY="
        f"{m['omp_wait_policy'] or 'unset'}); XLA_FLAGS={m['xla_flags']!r}")
  print(f"scoring: ks={info['args']['ks']} eta={info['args']['eta']}; "
        f"total wall time {info['wall_s']:.0f} s")
  print("\n== all cases (ratio = torch fp32 eager / row, per item; > 1: faster than torch) ==")
  cols = ["part", "size", "impl", "variant", "batch", "first_call_s", "median_ms", "min_ms",
          "images_per_s", "ratio", "error"]
  print(common.format_table(rows, cols))
  print("\n== summary (ratio_torch_over_jax > 1: dlsr_jax is faster) ==")
  print(common.format_table(summ, ["part", "size", "compare", "jax_variant", "torch_variant",
                                   "jax_ms_per_step", "torch_ms_per_step", "jax_images_per_s",
                                   "torch_images_per_s", "ratio_torch_over_jax"]))


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  t_start = time.time()
  machine = common.machine_info()
  jax = import_jax(args.xla_flags)
  machine["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  if args.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
  machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
  import torch
  tdev = torch_device(args.device)
  TORCH_THREADS[0] = args.threads or common.num_cores()
  torch.set_num_threads(TORCH_THREADS[0])
  versions = versions_and_devices(tdev)
  print(f"jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__} on {tdev}",
        flush=True)
  ks = [int(k) for k in args.ks.split(",")]
  multi_k = [int(k) for k in args.multi_k.split(",")] if args.multi_k else []
  sizes = [SIZES[s] for s in args.sizes.split(",")]
  parts = args.parts.split(",")
  rows: list[dict[str, Any]] = []
  deadline = t_start + args.time_budget_s
  for size in sizes:
    paper = size.name == "paper"
    reps = args.paper_reps if paper else args.reps
    warmup = args.paper_warmup if paper else args.warmup
    params = jax.device_get(init_params(size))
    if "train" in parts:
      rows += measure_all("train", size, train_specs(size, args, tdev, params),
                          warmup, reps, deadline, args.interleave_all)
    if "score" in parts:
      specs = score_specs(size, args, tdev, params, ks)
      rows += measure_all("score", size, specs, warmup, reps, deadline, args.interleave_all)
      if multi_k and size == min(sizes, key=lambda s: s.width * s.num_blocks):
        specs = score_specs(size, args, tdev, params, multi_k, part="score_multi_k")
        rows += measure_all("score_k" + "_".join(map(str, multi_k)), size, specs,
                            warmup, reps, deadline, args.interleave_all)
    del params
    free_memory()
  add_ratios(rows)
  summ = summary(rows)
  info = {"machine": machine, "versions": versions, "args": vars(args),
          "load_average_end": common.load_average(), "wall_s": time.time() - t_start}
  print_report(info, rows, summ)
  if args.json_out:
    common.save_json(args.json_out, {**info, "results": rows, "summary": summ})
    print(f"\nwrote {args.json_out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
