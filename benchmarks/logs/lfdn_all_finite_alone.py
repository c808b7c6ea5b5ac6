"""all_finite alone on the paper-size LFDN state (1.4 GB), three ways, interleaved; each first
checked on a finite tree, an inf, a NaN and 3e38 everywhere. Run from the repo root:
python benchmarks/logs/lfdn_all_finite_alone.py (speed_lfdn_train_update in RESULTS.md)."""
import os, sys, time, statistics
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax, jax.numpy as jnp, optax
import lfdn_update_ab as ab
from dlsr_jax.training import state as state_lib
from dlsr_jax.training.checkpoint import all_finite
print("load", open("/proc/loadavg").read().strip())
params = ab.bl.init_params(ab.SIZE)
tx = optax.adamw(1e-4, weight_decay=1e-4)
state = jax.jit(lambda p: state_lib.create({"params": p}, tx.init, ema=True))(params)
fl = lambda t: [x for x in jax.tree.leaves(t) if jnp.issubdtype(x.dtype, jnp.inexact)]
def f_sum0(t):
  return jnp.isfinite(sum(jnp.sum(x * 0.0) for x in fl(t)))
def f_max(t):
  return jnp.isfinite(jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in fl(t)])))
cases = {"main's all_finite (isfinite, all)": jax.jit(ab.old_all_finite),
         "isfinite(sum(x*0))": jax.jit(f_sum0),
         "isfinite(max|x|) (a test's)": jax.jit(f_max),
         "this checkout's all_finite": jax.jit(all_finite)}
# correctness: each flags an inf and a nan in one leaf, and passes a finite tree
for k, f in cases.items():
  bad_inf = jax.tree.map(lambda x: x, params); bad_inf["out_proj"]["kernel"] = params["out_proj"]["kernel"].at[3, 4].set(jnp.inf)
  bad_nan = dict(params); bad_nan["in_proj"] = {**params["in_proj"], "bias": params["in_proj"]["bias"].at[0].set(jnp.nan)}
  big = jax.tree.map(lambda x: x * 0 + 3e38, params)
  print(k, bool(f(params)), bool(f(bad_inf)), bool(f(bad_nan)), bool(f(big)))
t = {k: [] for k in cases}; c = {k: [] for k in cases}
for r in range(8):
  for k, f in cases.items():
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(f(state))
    if r >= 2:
      t[k].append((time.perf_counter() - t0) * 1e3); c[k].append((time.process_time() - c0) * 1e3)
for k in cases:
  print(f"{k:30s} whole state: wall {statistics.median(t[k]):7.1f} ms  cpu {statistics.median(c[k]):7.1f} ms")
print("load", open("/proc/loadavg").read().strip())
