"""Micro-batching inside the jit: the ResNet-20 forward pass and ODIN at batch 256 run as one
call, or as lax.map over chunks of 128/64/32/16 (each sample is independent in inference, so the
outputs agree to float32 rounding; printed first), timed interleaved with PyTorch eager.
usage (repo root): python benchmarks/logs/odin_forward_microbatch.py cifar_resnet20 REPS
Result (2026-12-07, idle): no gain for the forward pass (229-284 ms vs 255), ODIN 6x slower
when chunked (lax.map of the input gradient). benchmarks/RESULTS.md, speed_issue17_ceilings."""
import os, sys, time, functools
sys.path.insert(0, os.getcwd())
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np, jax, jax.numpy as jnp
import torch
torch.set_num_threads(2)
from benchmarks import bench_classifier as bc
from dlsr_jax import xla_cpu
from dlsr_jax.detectors import odin
name = sys.argv[1] if len(sys.argv) > 1 else "cifar_resnet20"
net, model = bc.build_models(name, "cpu")
opts = xla_cpu.classifier_compiler_options(params=net.params)
B = 256
batches = bc.image_batches(3, B, 0)
params = jax.device_put(net.params)
xs = [jax.device_put(x) for x, _ in batches]

def fwd(params, xb):
  return net.apply(params, net.preprocess(xb))[0]

def chunked(f, chunk):
  def g(params, xb, *a):
    xr = xb.reshape((B // chunk, chunk) + xb.shape[1:])
    out = jax.lax.map(lambda x: f(params, x, *a), xr)
    return out.reshape((B,) + out.shape[2:])
  return g

def odinf(params, xb):
  return odin.odin_score(net, params, xb, 1000.0, 0.0014)

cases = {}
for c in [256, 128, 64, 32, 16]:
  cases[f"fwd{c}"] = jax.jit(fwd if c == B else chunked(fwd, c), compiler_options=opts)
for c in [256, 64, 32, 16]:
  cases[f"odin{c}"] = jax.jit(odinf if c == B else chunked(odinf, c), compiler_options=opts)
ref_f = np.asarray(cases["fwd256"](params, xs[0])); ref_o = np.asarray(cases["odin256"](params, xs[0]))
for k, f in cases.items():
  o = np.asarray(f(params, xs[0]))
  r = ref_f if k.startswith("fwd") else ref_o
  print(k, "maxdiff", float(np.max(np.abs(o - r))), flush=True)
tm = {k: [] for k in cases}
tm["torch_fwd"] = []; tm["torch_odin"] = []
fc = bc.torch_forward(net, model, batches, "cpu"); oc = bc.torch_odin(net, model, batches, "cpu")
for rep in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
  for k, f in cases.items():
    t = time.perf_counter(); jax.block_until_ready(f(params, xs[rep % 3])); tm[k].append(time.perf_counter() - t)
  for k, c in (("torch_fwd", fc), ("torch_odin", oc)):
    t = time.perf_counter(); c.sync(c.run()); tm[k].append(time.perf_counter() - t)
for k, v in tm.items():
  print(f"{k:12s} {1000*np.median(v[1:]):8.1f} ms")
print("load", os.getloadavg())
