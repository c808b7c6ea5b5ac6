"""A/B of LFDN train-step variants (paper size), timed interleaved in one process, + torch eager.

usage (repo root): python benchmarks/logs/lfdn_update_ab.py REPS VARIANT[,VARIANT...]
VARIANT = UPDATE:GUARD[:OPTS] or 'torch' (reference.torch_lfdn fp32 eager, 2 threads).
  UPDATE: optax   = objectives.base.apply_gradients as on main 35dfb48 (optax.adamw, then EMA)
          fused   = the same AdamW + EMA written as one jax.tree.map per leaf
          barrier = the library's apply_gradients behind an optimization_barrier on (grads, params)
          lib     = the library's apply_gradients (this checkout)
  GUARD:  oldstate  = checkpoint.all_finite as on main over (new state, loss) (main's guard)
          state     = this checkout's all_finite over (new state, loss)
          params    = loss, grad norm and this checkout's all_finite(new params) (the LFDN verdict)
          oldparams = the same with main's all_finite
          scalars   = loss and grad norm only;  none = no guard
  OPTS:   ynnDR = compiler option xla_cpu_experimental_ynn_fusion_type=DOT,REDUCE
Each variant: its own jit of the loop's keyed, donated step (`fold_in(loop_key, step)`), its own
state from the same params; first two calls untimed, then REPS rounds A B C ... Prints median
wall and CPU (process time: both threads) ms a step, and torch's / ours. AB_SIZE=cpu|tiny for
smaller models. Results: benchmarks/RESULTS.md, speed_lfdn_train_update.
"""
import os
import statistics
import sys
import time

os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
sys.path.insert(0, os.getcwd())

import jax
import jax.numpy as jnp
import optax

from benchmarks import bench_lfdn as bl
from dlsr_jax import diffusion, lfdn, schedule
from dlsr_jax.objectives import base as obase
from dlsr_jax.training import optim
from dlsr_jax.training import state as state_lib
from dlsr_jax.training.checkpoint import all_finite

SIZE = bl.SIZES[os.environ.get("AB_SIZE", "paper")]
OCFG = optim.AdamWConfig()
OPTS = {"ynnDR": {"xla_cpu_experimental_ynn_fusion_type":
                  "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}}


def old_all_finite(tree):
  """checkpoint.all_finite as on main 35dfb48."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def old_apply(state, grads, tx, ema_decay):
  """objectives.base.apply_gradients as on main 35dfb48 (optax chain, then the EMA)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  d = obase.ema_decay_at(state.step, ema_decay)
  ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)


def fused_apply(state, grads, ema_decay):
  """AdamW (constant lr, optax.adamw's arithmetic and state) + EMA in one tree.map per leaf."""
  b1, b2, eps, wd, lr = OCFG.b1, OCFG.b2, OCFG.eps, OCFG.weight_decay, OCFG.learning_rate
  adam = state.opt_state[0]
  count = optax.safe_increment(adam.count) if hasattr(optax, "safe_increment") else adam.count + 1
  bc1 = (1 - b1 ** count).astype(jnp.float32)
  bc2 = (1 - b2 ** count).astype(jnp.float32)
  d = obase.ema_decay_at(state.step, ema_decay)

  def leaf(g, m, v, p, e):
    m = (1 - b1) * g + b1 * m
    v = (1 - b2) * (g ** 2) + b2 * v
    u = (m / bc1) / (jnp.sqrt(v / bc2 + 0.0) + eps)
    u = u + wd * p
    p = p + (-lr) * u
    return m, v, p, d * e + (1.0 - d) * p

  out = jax.tree.map(leaf, grads, adam.mu, adam.nu, state.params, state.ema_params)
  pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=lambda t: isinstance(t, tuple))
  new_adam = adam._replace(count=count, mu=pick(0), nu=pick(1))
  return state.replace(step=state.step + 1, params=pick(2), ema_params=pick(3),
                       opt_state=(new_adam,) + tuple(state.opt_state[1:]))


def build(variant, params, batches):
  update, guard, *rest = variant.split(":")
  opts = OPTS[rest[0]] if rest else None
  cfg = bl.lfdn_config(SIZE)
  apply = lfdn.apply_fn(cfg, train=True)
  abar = jnp.asarray(schedule.make_schedule().alphas_cumprod, jnp.float32)
  if update == "optax":
    tx = optax.adamw(OCFG.learning_rate, b1=OCFG.b1, b2=OCFG.b2, eps=OCFG.eps,
                     weight_decay=OCFG.weight_decay)
    upd = lambda s, g: old_apply(s, g, tx, OCFG.ema_decay)
  elif update == "barrier":
    tx = optim.adamw(OCFG)

    def upd(s, g):   # every read of the params (forward, backward) before any write
      g, p = jax.lax.optimization_barrier((g, s.params))
      return obase.apply_gradients(s.replace(params=p), g, tx, ema_decay=OCFG.ema_decay,
                                   batch_stats=None)
  elif update == "fused":
    tx = optax.adamw(OCFG.learning_rate, b1=OCFG.b1, b2=OCFG.b2, eps=OCFG.eps,
                     weight_decay=OCFG.weight_decay)
    upd = lambda s, g: fused_apply(s, g, OCFG.ema_decay)
  else:   # the library's adamw + apply_gradients (whatever this checkout has)
    tx = optim.adamw(OCFG)
    upd = lambda s, g: obase.apply_gradients(s, g, tx, ema_decay=OCFG.ema_decay,
                                             batch_stats=None)

  def keyed(state, z0, loop_key, bad):
    key = jax.random.fold_in(loop_key, state.step)
    loss, grads = jax.value_and_grad(
        lambda p: diffusion.x0_loss(apply, p, z0, key, abar))(state.params)
    new = upd(state, grads)
    gn = optax.tree.norm(grads)
    if guard == "oldstate":
      finite = old_all_finite((new, loss))
    elif guard == "oldparams":
      finite = jnp.isfinite(loss) & jnp.isfinite(gn) & old_all_finite(new.params)
    elif guard == "state":
      finite = all_finite((new, loss))
    elif guard == "params":
      finite = jnp.isfinite(loss) & jnp.isfinite(gn) & all_finite(new.params)
    elif guard == "scalars":
      finite = jnp.isfinite(loss) & jnp.isfinite(gn)
    else:
      finite = jnp.asarray(True)
    bad = jnp.where((bad == 0) & ~finite, state.step + 1, bad)
    return new, {"loss": loss, "grad_norm": gn}, bad

  fn = jax.jit(keyed, donate_argnums=(0,), compiler_options=opts)
  state = jax.jit(lambda p: state_lib.create({"params": p}, tx.init, ema=True))(params)
  xs = [jnp.asarray(b) for b in batches]
  box = {"s": state, "bad": jnp.zeros((), jnp.int32), "i": 0, "key": jax.random.key(1)}

  def run():
    box["s"], m, box["bad"] = fn(box["s"], xs[box["i"] % 2], box["key"], box["bad"])
    box["i"] += 1
    return m

  return run, jax.block_until_ready, box


def build_torch(params, batches):
  import torch
  torch.set_num_threads(2)
  case = bl.torch_train(SIZE, bl.TorchVariant("fp32 eager"), params, batches, "cpu")
  return case.run, case.sync, None


def main():
  reps = int(sys.argv[1])
  variants = sys.argv[2].split(",")
  print("load at start", open("/proc/loadavg").read().strip(), flush=True)
  params = jax.device_get(bl.init_params(SIZE))
  batches = bl.feature_batches(2, SIZE.train_batch, SIZE.features)
  bl.TORCH_THREADS[0] = 2
  cases = [build_torch(params, batches) if v == "torch" else build(v, params, batches)
           for v in variants]
  for v, (run, sync, _) in zip(variants, cases):   # compile + 1 warm-up
    t0 = time.perf_counter()
    sync(run())
    sync(run())
    print(f"{v}: first two calls {time.perf_counter() - t0:.1f} s", flush=True)
  wall = {v: [] for v in variants}
  cpu = {v: [] for v in variants}
  for r in range(reps):
    for v, (run, sync, _) in zip(variants, cases):
      c0, t0 = time.process_time(), time.perf_counter()
      sync(run())
      wall[v].append((time.perf_counter() - t0) * 1e3)
      cpu[v].append((time.process_time() - c0) * 1e3)
  for v, (run, sync, box) in zip(variants, cases):
    if box is not None:
      print(f"{v}: bad_step {int(box['bad'])}, step {int(box['s'].step)}")
  print("load at end", open("/proc/loadavg").read().strip())
  tw, tc = (statistics.median(wall["torch"]), statistics.median(cpu["torch"])) \
      if "torch" in wall else (None, None)
  for v in variants:
    mw, mc = statistics.median(wall[v]), statistics.median(cpu[v])
    extra = f"  ratio wall {tw / mw:.3f} cpu {tc / mc:.3f}" if tw else ""
    print(f"{v:16s} wall {mw:8.0f} ms  cpu {mc:8.0f} ms{extra}   "
          f"walls {[round(x) for x in wall[v]]}")


if __name__ == "__main__":
  main()
