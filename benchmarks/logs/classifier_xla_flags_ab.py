"""XLA CPU options for the ResNet-20 forward pass / ODIN at batch 256, one compile each, timed
interleaved with PyTorch eager: the library option (ynn types = REDUCE), XLA defaults, the oneDNN
custom-call flag (with and without the option), YNNPACK individual convolutions, use_onednn.
usage (repo root): python benchmarks/logs/classifier_xla_flags_ab.py fwd|odin REPS
Result (2026-12-07, idle): the oneDNN flags compile to the same kernels (outputs bitwise equal
to the option / defaults) and time the same; INDIVIDUAL_CONVOLUTION = the defaults.
benchmarks/RESULTS.md, speed_issue17_ceilings."""
import os, sys, time
sys.path.insert(0, os.getcwd())
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np, jax
from benchmarks import bench_classifier as bc
from dlsr_jax import xla_cpu
from dlsr_jax.detectors import odin
net, model = bc.build_models("cifar_resnet20", "cpu")
base = xla_cpu.classifier_compiler_options(params=net.params) or {}
print("library option", base)
B = 256
batches = bc.image_batches(3, B, 0)
params = jax.device_put(net.params)
xs = [jax.device_put(x) for x, _ in batches]
def fwd(params, xb): return net.apply(params, net.preprocess(xb))[0]
def odinf(params, xb): return odin.odin_score(net, params, xb, 1000.0, 0.0014)
variants = {
 "lib": dict(base),
 "default": {},
 "onednn_cc": {**base, "xla_cpu_experimental_onednn_custom_call": True},
 "onednn_cc_def": {"xla_cpu_experimental_onednn_custom_call": True},
 "indiv_conv": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
 "use_onednn": {**base, "xla_cpu_use_onednn": True},
}
part = sys.argv[1]
f0 = fwd if part == "fwd" else odinf
cases = {}
for k, o in variants.items():
  try:
    c = jax.jit(f0).lower(params, xs[0]).compile(o)
    out = np.asarray(c(params, xs[0]))
    cases[k] = c
    print(k, "ok", out.ravel()[:2], flush=True)
  except Exception as e:
    print(k, "FAILED", str(e)[:200], flush=True)
fc = bc.torch_forward(net, model, batches, "cpu") if part == "fwd" else bc.torch_odin(net, model, batches, "cpu")
tm = {k: [] for k in cases}; tm["torch"] = []
for rep in range(int(sys.argv[2])):
  for k, f in cases.items():
    t = time.perf_counter(); jax.block_until_ready(f(params, xs[rep % 3])); tm[k].append(time.perf_counter() - t)
  t = time.perf_counter(); fc.sync(fc.run()); tm["torch"].append(time.perf_counter() - t)
for k, v in tm.items():
  print(f"{k:14s} {1000*np.median(v[1:]):8.1f} ms  ratio {np.median(tm['torch'][1:])/np.median(v[1:]):.2f}")
print("load", os.getloadavg())
