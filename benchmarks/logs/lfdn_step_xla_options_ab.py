"""The paper-size LFDN train step (bench_lfdn.jax_train, dtype from argv) compiled with other
XLA CPU options (YNNPACK fusion types, multi-output fusion), timed interleaved in one process.
usage (repo root): python benchmarks/logs/lfdn_step_xla_options_ab.py REPS bf16_matmul|float32
Result (2026-12-07, idle, bf16_matmul): 784-808 ms for every setting against 795 ms default.
benchmarks/RESULTS.md, speed_issue17_ceilings."""
import os, sys, time
sys.path.insert(0, os.getcwd())
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
import numpy as np, jax
from unittest import mock
from benchmarks import bench_lfdn as bl
from dlsr_jax import xla_cpu
size = bl.SIZES["paper"]
params = bl.init_params(size)
batches = bl.feature_batches(2, size.train_batch, size.features)
Y = "xla_cpu_experimental_ynn_fusion_type"
P = "LIBRARY_FUSION_TYPE_"
variants = {"default": None,
            "ynn DOT,REDUCE,ELTWISE": {Y: f"{P}DOT,{P}REDUCE,{P}ELTWISE"},
            "ynn DOT,ELTWISE": {Y: f"{P}DOT,{P}ELTWISE"},
            "ynn INDIVIDUAL_DOT": {Y: f"{P}INDIVIDUAL_DOT"},
            "ynn DOT": {Y: f"{P}DOT"},
            "multi_output": {"xla_cpu_use_multi_output_fusion": True}}
dt = sys.argv[2]
cases = {}
for nm, o in variants.items():
  v = bl.JaxVariant("x", dtype=dt, fp32=(dt == "float32"))
  try:
    with mock.patch.object(xla_cpu, "classifier_compiler_options", lambda *a, **k: o):
      c = bl.jax_train(size, v, params, batches)
      c.sync(c.run()); c.sync(c.run())
    cases[nm] = c
  except Exception as e:
    print(nm, "FAILED", str(e)[:300])
tm = {k: [] for k in cases}
for r in range(int(sys.argv[1])):
  for k, c in cases.items():
    t = time.perf_counter(); c.sync(c.run()); tm[k].append(time.perf_counter() - t)
for k, v in tm.items(): print(f"{k:26s} {1000*np.median(v):8.1f} ms  min {1000*min(v):8.1f}")
print("load", os.getloadavg())
