"""Convolution weight gradients on XLA CPU: can another formulation beat XLA's own? (issue 17)

XLA CPU differentiates `lax.conv_general_dilated` into a weight-gradient
convolution with batch and channels swapped: both the layer input and the
cotangent are transposed (to [C, H, W, B] and [H, W, B, C]) and a convolution
with an H x W window runs on them. On a ResNet-20 train step that path is about
three quarters of the step (`RESULTS.md`, speed_classifiers_wgrad). This script
measures the alternatives, each a `jax.custom_vjp` convolution with XLA's
forward and input gradient and another weight gradient:

  xla        `lax.conv_general_dilated`, differentiated by JAX (what the models use);
  taps_x     one `dot_general` per kernel tap, x slice^T @ g (contracting B, H, W);
  taps_g     the same with the operands swapped, g^T @ x slice (XLA transposes g once);
  patches_g  one product g^T @ patches, the 9 tap slices concatenated on channels (im2col);
  flat       per tap, g^T @ a contiguous row range of the flattened padded input
             (the cotangent placed on the padded grid, zeros elsewhere): no strided slices;
  zero       no weight gradient at all (zeros): timing only, the ceiling of any rewrite.

Parts:
  layer  one 3x3 stride-1 conv at the three ResNet-20 stage shapes: forward, input
         gradient and weight gradient (each variant's checked against `xla`'s);
  convs  XLA CPU's own forward, input-gradient and weight-gradient convolutions against
         PyTorch's (oneDNN, NCHW and channels_last) at each stage shape: the floor under the
         forward pass, ODIN and the train step (outputs checked equal first);
  step   the ResNet-20 train step that `loop.fit` runs (`loop.jitted_step`), once per
         variant (the ResNets' `conv` swapped for the variant's while it is traced), and
         PyTorch eager, timed interleaved, compiled with XLA's defaults; `--compile_options`
         adds every variant compiled with those XLA options too (e.g. the library's
         `xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`).

  python -m benchmarks.bench_conv_wgrad                         # ~4 min on 2 idle cores
  python -m benchmarks.bench_conv_wgrad --parts=convs --batch_size=256   # ~30 s
  python -m benchmarks.bench_conv_wgrad --quick --out_dir=/tmp/q  # CI smoke run, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):   # run as a script: make the repo root importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common

VARIANTS = ("xla", "taps_x", "taps_g", "patches_g", "flat", "zero")
STAGES = ((32, 16), (16, 32), (8, 64))          # ResNet-20: (spatial, channels) per stage
STAGES_RESNET18 = ((32, 64), (16, 128), (8, 256), (4, 512))   # ResNet-18 at 32x32
_DIMS = ("NHWC", "HWIO", "NHWC")


# ------------------------------------------------------------------ the variants


def _lax_conv(x, w, stride, padding, groups):
  from jax import lax
  return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DIMS,
                                  feature_group_count=groups)


def _tap_slices(xp, ho, wo, kernel, stride):
  """The kh*kw strided windows of the padded input xp, each [B, Ho, Wo, Cin]."""
  from jax import lax
  b, _, _, cin = xp.shape
  return [lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1,
                                       cin), (1, stride, stride, 1))
          for i in range(kernel[0]) for j in range(kernel[1])]


def weight_grad(variant: str, x, g, kernel: tuple[int, int], stride: int, padding,
                groups: int = 1):
  """dL/dW [kh, kw, Cin / groups, Cout] of conv(x, W) given the cotangent g, by `variant`."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  kh, kw = kernel
  b, ho, wo, cout = g.shape
  cin = x.shape[-1]
  if variant == "zero":
    return jnp.zeros((kh, kw, cin // groups, cout), g.dtype)
  if variant == "xla" or groups != 1:
    w0 = jnp.zeros((kh, kw, cin // groups, cout), g.dtype)
    return jax.vjp(lambda w: _lax_conv(x, w, stride, padding, groups), w0)[1](g)[0]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  lead = (((0, 1, 2), (0, 1, 2)), ((), ()))
  if variant == "taps_x":
    taps = [lax.dot_general(xs, g, lead) for xs in _tap_slices(xp, ho, wo, kernel, stride)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout)
  if variant == "taps_g":
    taps = [lax.dot_general(g, xs, lead) for xs in _tap_slices(xp, ho, wo, kernel, stride)]
    return jnp.transpose(jnp.stack(taps), (0, 2, 1)).reshape(kh, kw, cin, cout)
  if variant == "patches_g":
    patches = jnp.concatenate(_tap_slices(xp, ho, wo, kernel, stride), axis=-1)
    return jnp.transpose(lax.dot_general(g, patches, lead)).reshape(kh, kw, cin, cout)
  if variant == "flat":
    _, hp, wp, _ = xp.shape
    s = stride
    gg = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (0, hp - ((ho - 1) * s + 1), s - 1),
                                            (0, wp - ((wo - 1) * s + 1), s - 1), (0, 0, 0)))
    n = b * hp * wp
    p = n - ((kh - 1) * wp + kw - 1)
    xf, gf = xp.reshape(n, cin), gg.reshape(n, cout)[:p]
    taps = [lax.dot_general(gf, lax.slice_in_dim(xf, i * wp + j, i * wp + j + p),
                            (((0,), (0,)), ((), ())))
            for i in range(kh) for j in range(kw)]
    return jnp.transpose(jnp.stack(taps), (0, 2, 1)).reshape(kh, kw, cin, cout)
  raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


@functools.cache
def conv_fn(variant: str) -> Callable[..., Any]:
  """conv(x, w, stride, padding, groups): XLA's forward and input gradient, `variant`'s dW."""
  import jax
  if variant == "xla":
    return _lax_conv

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
  def conv(x, w, stride, padding, groups):
    return _lax_conv(x, w, stride, padding, groups)

  def fwd(x, w, stride, padding, groups):
    return _lax_conv(x, w, stride, padding, groups), (x, w)

  def bwd(stride, padding, groups, res, g):
    x, w = res
    dx = jax.vjp(lambda x_: _lax_conv(x_, w, stride, padding, groups), x)[1](g)[0]
    return dx, weight_grad(variant, x, g, w.shape[:2], stride, padding, groups).astype(w.dtype)

  conv.defvjp(fwd, bwd)
  return conv


@contextlib.contextmanager
def resnet_conv(variant: str):
  """While active, the ResNets' `conv` layer uses `conv_fn(variant)` (same `kernel` param)."""
  import flax.linen as nn
  import jax.numpy as jnp

  from dlsr_jax.models import layers, resnet_cifar
  fn = conv_fn(variant)

  class WConv(nn.Module):
    features: int
    kernel: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
      k = self.param("kernel", layers.CONV_INIT,
                     (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
      x, k = nn.dtypes.promote_dtype(x, k, dtype=self.dtype)
      p = self.kernel // 2
      return fn(x, k, self.stride, ((p, p), (p, p)), 1)

  def conv(x, features, kernel, stride, name, dtype=jnp.float32):
    return WConv(features, kernel, stride, dtype, name=name)(x)

  saved = resnet_cifar.conv
  resnet_cifar.conv = layers.conv if variant == "xla" else conv
  try:
    yield
  finally:
    resnet_cifar.conv = saved


# ------------------------------------------------------------------ parts


CHECK_CASES = ((1, 3, 1, 8, 8, 9), (2, 3, 1, 8, 16, 9), (2, 3, 1, 8, 16, 8), (2, 1, 1, 8, 16, 8),
               (1, 3, 2, 8, 4, 6))   # (stride, kernel, groups, Cin, Cout, size) as the models use


def check_variants(variants: Sequence[str], batch: int = 2, rtol: float = 1e-4,
                   cases: Sequence[tuple[int, ...]] = CHECK_CASES) -> dict[str, float]:
  """Max relative difference of each variant's (dx, dW) to jax.grad of the plain lax conv.

  All cases (`CHECK_CASES`: strides 1 and 2, 3x3 and 1x1, groups 1 and 2, odd and even
  sizes) and variants in one jit (one compile). Raises if one differs by more than `rtol`.
  """
  import jax
  import jax.numpy as jnp
  variants = [v for v in variants if v != "zero"]
  keys = jax.random.split(jax.random.key(0), 2 * len(cases))
  inputs = [(jax.random.normal(keys[2 * i], (batch, size, size, cin)),
             jax.random.normal(keys[2 * i + 1], (k, k, cin // groups, cout)))
            for i, (_, k, groups, cin, cout, size) in enumerate(cases)]

  def grads(inputs):
    out = {}
    for name, fn in [("reference", _lax_conv)] + [(v, conv_fn(v)) for v in variants]:
      out[name] = []
      for (stride, k, groups, *_), (x, w) in zip(cases, inputs):
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        def loss(x, w, fn=fn, stride=stride, pad=pad, groups=groups):
          return jnp.sum(jnp.sin(fn(x, w, stride, pad, groups)))
        out[name].append(jax.grad(loss, (0, 1))(x, w))
    return out

  out = jax.jit(grads)(inputs)
  worst = {}
  for v in variants:
    err = 0.0
    for want, got in zip(out["reference"], out[v]):
      for a, b in zip(want, got):
        err = max(err, float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))))
    if err > rtol:
      raise AssertionError(f"variant {v}: gradients differ from JAX's by {err:.2e} > {rtol}")
    worst[v] = err
  return worst


def layer_part(variants: Sequence[str], batch: int, warmup: int, reps: int,
               sizes: Sequence[int] = (32, 16, 8)) -> list[dict]:
  """Forward, dx and dW of one 3x3 conv per ResNet-20 stage shape, each variant's dW."""
  import jax
  rows = []
  for size, c in [sc for sc in STAGES if sc[0] in sizes]:
    keys = jax.random.split(jax.random.key(size), 3)
    x = jax.random.normal(keys[0], (batch, size, size, c))
    w = jax.random.normal(keys[1], (3, 3, c, c)) * 0.1
    g = jax.random.normal(keys[2], (batch, size, size, c))
    pad = ((1, 1), (1, 1))
    fns = {"forward": jax.jit(lambda x, w, g, pad=pad: _lax_conv(x, w, 1, pad, 1)),
           "dx": jax.jit(lambda x, w, g, pad=pad:
                         jax.vjp(lambda x_: _lax_conv(x_, w, 1, pad, 1), x)[1](g)[0])}
    for v in variants:
      if v != "zero":
        fns[f"dW {v}"] = jax.jit(functools.partial(
            lambda x, w, g, v, pad: weight_grad(v, x, g, (3, 3), 1, pad), v=v, pad=pad))
    cases = [(functools.partial(f, x, w, g), jax.block_until_ready) for f in fns.values()]
    timings = common.time_interleaved(cases, warmup, reps)
    for name, t in zip(fns, timings):
      rows.append({"part": "layer", "shape": f"{batch}x{size}x{size}x{c}", "what": name,
                   "median_ms": t.median_ms, "min_ms": t.min_ms, "times_ms": t.times_ms})
  print(common.format_table(rows, ["shape", "what", "median_ms", "min_ms"]), flush=True)
  return rows


def convs_part(batch: int, warmup: int, reps: int, sizes: Sequence[int] = (32, 16, 8),
               channels_last: bool = True, stages=STAGES) -> list[dict]:
  """XLA CPU's convolutions against PyTorch's (oneDNN), one stage conv at a time.

  Forward, input gradient and weight gradient of a 3x3 stride-1 conv at each stage's shape
  (`stages`: (spatial, channels) pairs, ResNet-20's or `STAGES_RESNET18`),
  JAX compiled with the library's XLA CPU options (`dlsr_jax.xla_cpu`, what the classifier
  jits use) and with XLA's defaults, PyTorch eager (NCHW, and channels_last), timed
  interleaved; ratio = PyTorch NCHW / row. The floor under the ResNet-20 forward pass, ODIN
  and the train step: what XLA CPU's own kernels cost at these shapes.
  """
  import jax
  import numpy as np
  import torch

  from dlsr_jax import xla_cpu
  rows = []
  pad = ((1, 1), (1, 1))
  ops = {"forward": lambda x, w, g: _lax_conv(x, w, 1, pad, 1),
         "dx": lambda x, w, g: jax.vjp(lambda x_: _lax_conv(x_, w, 1, pad, 1), x)[1](g)[0],
         "dW": lambda x, w, g: jax.vjp(lambda w_: _lax_conv(x, w_, 1, pad, 1), w)[1](g)[0]}
  for size, c in [sc for sc in stages if sc[0] in sizes]:
    rng = np.random.default_rng(size)
    x = rng.standard_normal((batch, size, size, c), np.float32)
    w = (0.1 * rng.standard_normal((3, 3, c, c))).astype(np.float32)
    g = rng.standard_normal((batch, size, size, c), np.float32)
    jx, jw, jg = (jax.device_put(a) for a in (x, w, g))
    names, cases = [], []
    for label, opts in [("jax, library options", dict(xla_cpu.CLASSIFIER_CPU_OPTIONS)),
                        ("jax, XLA defaults", {})]:
      for op, fn in ops.items():
        compiled = jax.jit(fn).lower(jx, jw, jg).compile(opts)
        names.append((op, label))
        cases.append((functools.partial(compiled, jx, jw, jg), jax.block_until_ready))
    fmts = [("torch eager", torch.contiguous_format)]
    if channels_last:
      fmts.append(("torch channels_last", torch.channels_last))
    for label, fmt in fmts:
      tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
      tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=fmt)
      tg = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
      tops = {"forward": lambda tx=tx, tw=tw: torch.nn.functional.conv2d(tx, tw, padding=1),
              "dx": lambda tx=tx, tw=tw, tg=tg: torch.nn.grad.conv2d_input(
                  tx.shape, tw, tg, padding=1),
              "dW": lambda tx=tx, tw=tw, tg=tg: torch.nn.grad.conv2d_weight(
                  tx, tw.shape, tg, padding=1)}
      for op, fn in tops.items():
        names.append((op, label))
        cases.append((torch.no_grad()(fn), lambda out: None))
      for op, fn in tops.items():   # the same numbers as JAX's, whatever the layout
        ref = np.asarray(jax.jit(ops[op])(jx, jw, jg))
        got = fn().numpy()
        got = got.transpose(2, 3, 1, 0) if op == "dW" else got.transpose(0, 2, 3, 1)
        err = float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) + 1e-12))
        if err > 1e-4:
          raise AssertionError(f"{label} {op} at {x.shape} differs from JAX's: {err:.2e}")
    timings = common.time_interleaved(cases, warmup, reps)
    base = {op: t.median_ms for (op, label), t in zip(names, timings) if label == "torch eager"}
    for (op, label), t in zip(names, timings):
      rows.append({"part": "convs", "shape": f"{batch}x{size}x{size}x{c}", "op": op,
                   "impl": label, "median_ms": t.median_ms, "min_ms": t.min_ms,
                   "ratio_torch_over_this": base[op] / t.median_ms, "times_ms": t.times_ms})
  print(common.format_table(rows, ["shape", "op", "impl", "median_ms", "min_ms",
                                   "ratio_torch_over_this"]), flush=True)
  return rows


def _parse_options(s: str) -> dict[str, str]:
  return dict(kv.split("=", 1) for kv in s.split(";") if kv)


def step_part(variants: Sequence[str], compile_options: Sequence[str], batch: int, warmup: int,
              reps: int, with_torch: bool) -> list[dict]:
  """The ResNet-20 CE train step per variant x compile option, and torch eager, interleaved.

  Compiled with XLA's defaults plus each of `compile_options` (not with the options the
  library gives its train step, `dlsr_jax.xla_cpu`: pass those to time them).
  """
  from unittest import mock

  import jax

  from benchmarks import bench_classifier as bc
  from dlsr_jax import parallel, xla_cpu
  from dlsr_jax.objectives import cross_entropy
  from dlsr_jax.training import loop, optim
  net, model = bc.build_models("cifar_resnet20", "cpu")
  batches = bc.image_batches(2, batch, seed=1)
  mesh = parallel.make_mesh(jax.devices()[:1])
  init_key, loop_key, bad_step = loop.step_inputs(0, mesh)
  xs = [{"in": {"x": parallel.host_to_global(x, mesh), "y": parallel.host_to_global(y, mesh)}}
        for x, y in batches]
  names, cases = [], []
  for v, opts in [(v, o) for o in [""] + list(compile_options) for v in variants]:
    # XLA's default compile plus `opts` (not the library's train-step options, dlsr_jax.xla_cpu)
    with resnet_conv(v), mock.patch.dict(os.environ, {xla_cpu.ENV_VAR: "0"}):
      obj = cross_entropy.make(net, optim.sgd(optim.SGDConfig(), bc.TOTAL_STEPS))
      init_fn, step_fn = loop.jitted_step(obj.init, obj.step, mesh)
      state = init_fn(init_key)
      compiled = step_fn.lower(state, xs[0], loop_key, bad_step).compile(_parse_options(opts))
    box = {"state": state, "bad": bad_step, "i": 0}

    def run(compiled=compiled, box=box):
      box["i"] += 1
      box["state"], metrics, box["bad"] = compiled(box["state"], xs[box["i"] % 2], loop_key,
                                                  box["bad"])
      return metrics

    names.append(v + (f" [{opts}]" if opts else ""))
    cases.append((run, jax.block_until_ready))
  if with_torch:
    tc = bc.torch_train(net, model, batches, "cpu")
    names.append("torch eager")
    cases.append((tc.run, tc.sync))
  load = common.load_average()
  timings = common.time_interleaved(cases, warmup, reps)
  base = timings[-1].median_ms if with_torch else timings[0].median_ms
  rows = [{"part": "step", "variant": n, "batch": batch, "median_ms": t.median_ms,
           "min_ms": t.min_ms, "ratio_torch_over_this" if with_torch else "ratio_xla_over_this":
           base / t.median_ms, "times_ms": t.times_ms, "load_start": load,
           "load_end": common.load_average()} for n, t in zip(names, timings)]
  print(common.format_table(rows, ["variant", "median_ms", "min_ms",
                                   "ratio_torch_over_this" if with_torch
                                   else "ratio_xla_over_this"]), flush=True)
  return rows


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--parts", default="layer,step", help="comma list of: layer,step,convs")
  p.add_argument("--variants", default=",".join(VARIANTS), help="layer part's variants")
  p.add_argument("--step_variants", default="xla,taps_g,patches_g,flat,zero",
                 help="step part's variants")
  p.add_argument("--compile_options", action="append", default=[],
                 help="also time each step variant compiled with these XLA options, "
                      "'k=v;k2=v2' (repeatable)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--stages", default="32,16,8",
                 help="layer and convs parts: spatial sizes of the stages")
  p.add_argument("--convs_net", default="resnet20", choices=("resnet20", "resnet18"),
                 help="convs part: whose stage shapes (ResNet-18: 32,16,8,4 x 64..512 ch)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--no_torch", action="store_true", help="step part without PyTorch")
  p.add_argument("--out_dir", default=None, help="JSON here instead of benchmarks/logs")
  p.add_argument("--quick", action="store_true",
                 help="smoke run in seconds: no gradient check, batch 2, 1 rep, the layer and "
                      "convs parts at 8x8 (layer: xla and taps_g), the step part for zero "
                      "only; needs --out_dir")
  args = p.parse_args(argv)
  if args.quick:
    if args.out_dir is None:
      p.error("--quick needs --out_dir: it never writes benchmarks/logs")
    args.batch_size, args.warmup, args.reps, args.stages = 2, 1, 1, "8"
    args.variants, args.step_variants, args.compile_options = "xla,taps_g", "zero", []
    args.parts = "layer,step,convs"
  bad = [v for v in (args.variants + "," + args.step_variants).split(",")
         if v and v not in VARIANTS]
  if bad:
    p.error(f"unknown variants {bad}; valid: {', '.join(VARIANTS)}")
  return args


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  t0 = time.time()
  info = {"machine": common.machine_info(), "args": vars(args)}
  import torch
  torch.set_num_threads(common.num_cores())
  print(f"load average {info['machine']['load_average']}", flush=True)
  variants = [v for v in args.variants.split(",") if v]
  if not args.quick:   # (tests/conv_wgrad_test.py checks them in CI)
    info["check_max_rel_diff"] = check_variants(variants)
    print("gradients equal to JAX's (max relative difference):", info["check_max_rel_diff"])
  rows: list[dict] = []
  parts = args.parts.split(",")
  if "layer" in parts:
    rows += layer_part(variants, args.batch_size, args.warmup, args.reps,
                       [int(s) for s in args.stages.split(",")])
  if "convs" in parts:
    rows += convs_part(args.batch_size, args.warmup, args.reps,
                       [int(s) for s in args.stages.split(",")],
                       stages=STAGES_RESNET18 if args.convs_net == "resnet18" else STAGES)
  if "step" in parts:
    rows += step_part([v for v in args.step_variants.split(",") if v], args.compile_options,
                      args.batch_size, args.warmup, args.reps, not args.no_torch)
  info.update(load_average_end=common.load_average(), wall_s=time.time() - t0)
  out = (os.path.join(args.out_dir, "bench_conv_wgrad.json") if args.out_dir else
         os.path.join(os.path.dirname(os.path.abspath(__file__)), "logs",
                      "bench_conv_wgrad_cpu.json"))
  common.save_json(out, {**info, "results": rows})
  print(f"load average at end {info['load_average_end']}, wall {info['wall_s']:.0f} s; "
        f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
