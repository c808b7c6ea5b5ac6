"""AUROC of DLSR scores, LFDN trained in fp32 vs trained with bf16_matmul (bf16 x bf16 -> f32
dots forward and backward), both scored in fp32 (and the bf16 one also with bf16_matmul).

ResNet-20 pre-logits (C=64) of CIFAR-10 train (fit) / test (ID) and far/near OOD sets; the same
data, seed and recipe for both trainings. usage (repo root):
  python benchmarks/logs/bf16_train_auroc.py . EPOCHS <posthoc array cache>/ResNet-20_
"""
import glob
import sys
import time

sys.path.insert(0, sys.argv[1]); epochs = int(sys.argv[2])
import jax
import numpy as np

from dlsr_jax import lfdn, parallel, schedule, scoring, trainer
from dlsr_jax.evaluation import metrics
from dlsr_jax.training import loop, optim

A = sys.argv[3]
load = lambda n: np.load(glob.glob(A + n + "_*.npz")[0])["pre_logits"].astype(np.float32)
tr = load("cifar10_train_exact"); mu, sd = tr.mean(0), tr.std(0) + 1e-6
norm = lambda x: (x - mu) / sd
names = ["cifar10_test_exact", "isun", "mnist_test", "fashionmnist_test", "dtd",
         "cifar100_test_exact"]
sets = {n: norm(load(n)) for n in names}
kw = dict(features=64, width=256, embed_dim=128, num_blocks=4)
sched = schedule.make_schedule()
sc = scoring.ScoreConfig(boundaries=(0, 16, 32, 48, 64))
states = {}
for dt in ["float32", "bf16_matmul"]:
  t0 = time.time()
  states[dt] = trainer.fit(norm(tr), lfdn.LFDNConfig(**kw, dtype=dt), optim.AdamWConfig(), sched,
                           trainer.FitConfig(batch_size=128, num_epochs=epochs, seed=0), None,
                           progress=False)
  print(f"trained {dt}: {epochs} epochs in {time.time() - t0:.0f} s", flush=True)


def score(train_dt, score_dt):
  fn = jax.jit(scoring.make_score_fn(lfdn.apply_fn(lfdn.LFDNConfig(**kw, dtype=score_dt)),
                                     sched.alphas_cumprod, sc))
  return {n: scoring.score_dataset(fn, states[train_dt].ema_params, z, [3, 10],
                                   jax.random.key(1), 512) for n, z in sets.items()}


mesh = parallel.make_mesh(jax.devices()[:1])
init, _ = trainer.lfdn_init_and_step(lfdn.LFDNConfig(**kw), optim.AdamWConfig(),
                                     np.asarray(sched.alphas_cumprod, np.float32).tobytes())
p0 = jax.tree.leaves(init(loop.step_inputs(0, mesh)[0]).params)   # the fits' starting point
e32, e16 = (jax.tree.leaves(states[d].ema_params) for d in ("float32", "bf16_matmul"))
sq = lambda xs: float(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in xs))
moved = np.sqrt(sq([a - b for a, b in zip(e32, p0)]))
print(f"EMA params: fp32 training moved them {moved:.4g} (L2) from the start, |start| "
      f"{np.sqrt(sq(p0)):.4g}; bf16-trained minus fp32-trained: "
      f"{np.sqrt(sq([a - b for a, b in zip(e16, e32)])):.4g} ({np.sqrt(sq([a - b for a, b in zip(e16, e32)])) / moved:.2%} of the move)")
runs = {"fp32-trained, fp32 scored": score("float32", "float32"),
        "bf16-trained, fp32 scored": score("bf16_matmul", "float32"),
        "bf16-trained, bf16 scored": score("bf16_matmul", "bf16_matmul")}
base = runs["fp32-trained, fp32 scored"]
for label, res in runs.items():
  print(f"== {label}")
  worst = 0.0
  for st in ["mse", "mfsim"]:
    for j, k in enumerate([3, 10]):
      row = []
      for n in names[1:]:
        a = 100 * metrics.auroc(res[names[0]][st][j], res[n][st][j])
        b = 100 * metrics.auroc(base[names[0]][st][j], base[n][st][j])
        worst = max(worst, abs(a - b))
        row.append(f"{n[:8]} {a:.2f}")
      print(f"  {st} k={k}: " + "  ".join(row))
  print(f"  largest AUROC change against fp32-trained, fp32 scored: {worst:.2f} points")
